"""Typed recipe schemas: every scalar setting with its default and its validation.

Each recipe's schema is registered in Hydra's ConfigStore as ``<recipe>_schema`` and is the
first entry of the recipe's primary YAML ``defaults:`` list, so precedence is
command line > YAML > the defaults written here. OmegaConf enforces key names and types at
compose time; :func:`schema_problems` checks ranges, choices and cross-field rules afterwards
and reports every problem at once.

Group nodes (``model``, ``checkpointer``, ``optimizer``, ...) are typed ``Any``: their keys are
checked against the signature of the callable they name (see ``tunekit.config.validate``).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = [
    "AC_POLICIES",
    "DEVICES",
    "DTYPES",
    "ExamplesConfig",
    "LORA_TARGETS",
    "SCHEMAS",
    "FullFinetuneSchema",
    "GenerateSchema",
    "LoRAConfig",
    "LoraFinetuneSchema",
    "ModelInfo",
    "PathsConfig",
    "register_schemas",
    "schema_problems",
]

DTYPES = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
AC_POLICIES = ("full", "selective")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output")

Check = Callable[[Any], Optional[str]]


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _positive(v: Any) -> Optional[str]:
    return None if v > 0 else "must be > 0"


def _in_range(low: float, high: float, *, high_inclusive: bool) -> Check:
    def check(v: Any) -> Optional[str]:
        ok = low <= v <= high if high_inclusive else low <= v < high
        return None if ok else f"must be in [{low}, {high}{']' if high_inclusive else ')'}"

    return check


# What a checkpoint records it was trained with (tunekit.run.resume.FINGERPRINT_FIELDS; kept
# torch-free here, and a test checks the two agree).
RESUME_FINGERPRINT_FIELDS = ("recipe", "model", "checkpoint", "tokenizer", "data", "batch_size", "max_seq_len",
                             "packed", "seed", "lora")


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: None if v in choices else f"must be one of: {', '.join(choices)}"


def _each_one_of(choices: tuple[str, ...]) -> Check:
    def check(values: Any) -> Optional[str]:
        bad = [v for v in values if v not in choices]
        if bad:
            return f"unknown name(s) {', '.join(map(str, bad))}; valid: {', '.join(choices)}"
        if len(set(values)) != len(values):
            return "contains duplicates"
        return None

    return check


def _device(v: Any) -> Optional[str]:
    from tunekit.config.devices import device_syntax_problem

    return device_syntax_problem(v)


def _non_empty(v: Any) -> Optional[str]:
    return None if len(v) > 0 else "must not be empty"


def not_a_dir(v: Any, what: str) -> Optional[str]:
    """None for an existing directory, else what the path is and what to give instead."""
    path = str(v)
    if os.path.isdir(path):
        return None
    if os.path.isfile(path):
        return (f"is a file, not a directory: give {what}, e.g. the directory that holds it"
                f" ({os.path.dirname(os.path.abspath(path))})")
    if os.path.islink(path):
        return f"is a symbolic link to nothing (or a link loop): give {what}"
    return f"does not exist: give {what}"


def _dir_or_auto(v: Any) -> Optional[str]:
    if v == "auto":
        return None
    problem = not_a_dir(v, 'a run or checkpoint directory (or "auto")')
    return None if problem is None else f'must be "auto" or an existing run/checkpoint directory; it {problem}'


def setting(default: Any = MISSING, *checks: Check, doc: str = "") -> Any:
    """A schema field with range/choice checks (skipped when the value is None)."""
    meta = {"checks": checks, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PathsConfig:
    """Filesystem roots."""

    models_root: str = setting(
        "${tunekit.models_root:}",
        doc="Where downloaded weights live: $TUNEKIT_MODELS_ROOT, else ~/.cache/tunekit/models.",
    )


@dataclass
class ModelInfo:
    """Set by the chosen ``model`` option; checkpointer paths derive from it."""

    model_type: str = setting(MISSING, doc="Key of tunekit.models.MODEL_TYPES, e.g. LLAMA2.")
    hf_dir: str = setting(MISSING, doc="Directory of the Hugging Face format weights.")
    meta_dir: str = setting(MISSING, doc="Directory of the Meta format weights.")
    hf_repo: Optional[str] = setting(None, doc="Hugging Face Hub repo of the HF weights.")
    meta_repo: Optional[str] = setting(None, doc="Hugging Face Hub repo of the Meta weights.")


@dataclass
class LoRAConfig:
    """LoRA adapter settings; the recipe turns this node into a ``LoRASpec``."""

    rank: int = setting(8, _at_least(1))
    alpha: float = setting(16.0, _positive)
    dropout: float = setting(0.0, _in_range(0.0, 1.0, high_inclusive=False))
    targets: List[str] = setting(["q_proj", "v_proj"], _non_empty, _each_one_of(LORA_TARGETS))
    rank_pattern: Dict[str, int] = setting({}, doc="Per-target rank overrides.")
    alpha_pattern: Dict[str, float] = setting({}, doc="Per-target alpha overrides.")
    use_dora: bool = setting(False, doc="DoRA (PEFT use_dora): also learn a per-row magnitude.")

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """Pattern keys must name targets; pattern values must be positive."""
        problems = []
        for key in ("rank_pattern", "alpha_pattern"):
            for name, value in cfg[key].items():
                if name not in cfg.targets:
                    problems.append(
                        f"`{prefix}{key}.{name}`: `{name}` is not in `{prefix}targets`"
                        f" ({', '.join(cfg.targets)})"
                    )
                if value <= 0:
                    problems.append(f"`{prefix}{key}.{name}`={value}: must be > 0")
        return problems


@dataclass
class ExamplesConfig:
    """Held-out examples answered before and after training (tunekit.run.examples); 0 and 0 = off."""

    show: int = setting(0, _at_least(0), doc="Held-out rows printed: answer before, after, expected.")
    score: int = setting(0, _at_least(0), doc="Held-out rows scored by exact match before and after.")
    max_new_tokens: int = setting(32, _at_least(1), doc="Cap on each greedy answer.")


@dataclass
class _RunSettings:
    """Settings shared by every recipe."""

    seed: int = setting(0, _at_least(0))
    device: str = setting(
        "auto", _device, doc="auto = cuda if available, else cpu; also cpu, cuda, cuda:N, mps."
    )
    dtype: str = setting("fp32", _one_of(DTYPES))
    compile: bool = setting(False, doc="torch.compile each decoder layer.")
    output_dir: str = setting("${tunekit.run_dir:}", doc="Defaults to Hydra's run dir.")


@dataclass
class _TrainSettings(_RunSettings):
    """Settings shared by the fine-tuning recipes."""

    epochs: int = setting(1, _at_least(1))
    max_steps_per_epoch: Optional[int] = setting(None, _at_least(1), doc="Optimizer steps.")
    batch_size: int = setting(4, _at_least(1))
    gradient_accumulation_steps: int = setting(1, _at_least(1))
    clip_grad_norm: Optional[float] = setting(None, _positive)
    activation_checkpointing: bool = setting(False, doc="Recompute decoder layers in backward.")
    ac_policy: str = setting(
        "full", _one_of(AC_POLICIES),
        doc="With activation_checkpointing: full = recompute the whole layer; selective = keep"
            " the matmul outputs, recompute only norms/activations/RoPE (more memory, less time).",
    )
    ac_every_k_layers: int = setting(
        1, _at_least(1), doc="With activation_checkpointing: checkpoint layers 0, k, 2k, ... only."
    )
    save_every_n_steps: Optional[int] = setting(None, _at_least(1), doc="Else once per epoch.")
    eval_every_n_steps: Optional[int] = setting(None, _at_least(1), doc="Else no evaluation.")
    max_eval_batches: Optional[int] = setting(None, _at_least(1), doc="Cap per evaluation; null: all.")
    handle_signals: bool = setting(True, doc="SIGTERM/SIGINT: finish the step, save, exit 0.")
    log_every_n_steps: int = setting(10, _at_least(1))
    max_seq_len: int = setting(512, _at_least(2))
    packed: bool = setting(False, doc="Pack samples into max_seq_len rows.")
    train_on_input: bool = setting(False, doc="Also take the loss on the prompt tokens.")
    resume: Optional[str] = setting(None, _dir_or_auto, doc='A run/epoch dir or "auto".')
    resume_accept: List[str] = setting(
        [], _each_one_of(RESUME_FINGERPRINT_FIELDS),
        doc="Fingerprint fields a resumed checkpoint may differ in (e.g. [data, batch_size]).",
    )
    keep_last_n: Optional[int] = setting(None, _at_least(1), doc="step_N checkpoints kept (epoch_N: all).")
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model_info: ModelInfo = field(default_factory=ModelInfo)
    model: Any = None
    checkpointer: Any = None
    tokenizer: Any = None
    dataset: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    loss: Any = None
    metric_logger: Any = None

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """Rules that involve several training settings."""
        problems = []
        max_steps = cfg.max_steps_per_epoch
        # Both count global optimizer steps, so they can trigger in a later epoch.
        epochs = max(cfg.epochs, 1)
        total = None if max_steps is None else max_steps * epochs
        limit = f"`max_steps_per_epoch`={max_steps}" + (f" x `epochs`={epochs}" if epochs > 1 else "")
        for key in ("save_every_n_steps", "eval_every_n_steps"):
            every = cfg[key]
            if every is not None and total is not None and every > total:
                problems.append(
                    f"`{key}`={every} exceeds {limit} optimizer steps, so it would never"
                    " trigger; lower it or unset it"
                )
        val_fraction = OmegaConf.select(cfg, "dataset.val_fraction", default=None, throw_on_missing=False)
        if cfg.eval_every_n_steps is not None and isinstance(val_fraction, (int, float)) and val_fraction == 0:
            problems.append(
                f"`eval_every_n_steps`={cfg.eval_every_n_steps} would never evaluate: `dataset.val_fraction`=0 holds"
                " out no validation rows; set dataset.val_fraction=0.1 (for example) or unset eval_every_n_steps"
            )
        asked = [f"examples.{k}={cfg.examples[k]}" for k in ("show", "score") if cfg.examples[k]]
        if asked and isinstance(val_fraction, (int, float)) and val_fraction == 0:
            problems.append(
                f"`{' '.join(asked)}` answers held-out rows, but `dataset.val_fraction`=0 holds out none; set"
                " dataset.val_fraction=0.1 (for example) or examples.show=0 examples.score=0"
            )
        if cfg.keep_last_n is not None and cfg.save_every_n_steps is None:
            # Only step_N checkpoints are pruned; epoch_N ones are always kept.
            problems.append(
                f"`keep_last_n`={cfg.keep_last_n} has no effect without `save_every_n_steps`: it prunes"
                " only step_N checkpoints (every epoch_N checkpoint is kept); set save_every_n_steps=<n>"
                " or unset keep_last_n"
            )
        return problems


@dataclass
class LoraFinetuneSchema(_TrainSettings):
    """``lora_finetune`` recipe."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class FullFinetuneSchema(_TrainSettings):
    """``full_finetune`` recipe."""


@dataclass
class GenerateSchema(_RunSettings):
    """``generate`` recipe."""

    checkpoint: Optional[str] = setting(
        None, doc="A run dir or epoch_/step_ dir to load; None = the checkpointer's base model."
    )
    adapter: Optional[str] = setting(None, doc="A PEFT/LoRA adapter dir applied on top.")
    prompt: str = setting("Tell me a short story about a llama.")
    chat: bool = setting(False, doc="Format the prompt as a Llama 2 chat turn ([INST] ... [/INST]).")
    template: Optional[str] = setting(
        None, _one_of(("alpaca",)), doc="alpaca = wrap the prompt as an Alpaca instruction."
    )
    system_prompt: Optional[str] = setting(None, doc="Only with chat=true.")
    temperature: float = setting(0.8, _at_least(0.0), doc="0 = greedy.")
    top_k: Optional[int] = setting(50, _at_least(1))
    top_p: Optional[float] = setting(None, _in_range(0.0, 1.0, high_inclusive=True))
    max_new_tokens: int = setting(128, _at_least(1))
    paths: PathsConfig = field(default_factory=PathsConfig)
    model_info: ModelInfo = field(default_factory=ModelInfo)
    model: Any = None
    checkpointer: Any = None
    tokenizer: Any = None

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """Rules that involve several generation settings."""
        problems = []
        if cfg.chat and cfg.template is not None:
            problems.append(f"`chat`=true and `template`={cfg.template!r} both format the prompt; keep one")
        if cfg.system_prompt is not None and not cfg.chat:
            problems.append("`system_prompt` is set but `chat`=false; set chat=true or drop it")
        for key, what in (("checkpoint", "a run or checkpoint directory"), ("adapter", "an adapter directory")):
            problem = None if cfg[key] is None else not_a_dir(cfg[key], what)
            if problem is not None:
                problems.append(f"`{key}`={cfg[key]!r}: not an existing directory; it {problem}")
        if cfg.top_p is not None and cfg.top_p == 0.0:
            problems.append("`top_p`=0 keeps no tokens; use a value in (0, 1] or null")
        return problems


SCHEMAS: dict[str, type] = {
    "lora_finetune": LoraFinetuneSchema,
    "full_finetune": FullFinetuneSchema,
    "generate": GenerateSchema,
}


def register_schemas() -> None:
    """Store every recipe schema in Hydra's ConfigStore as ``<recipe>_schema``."""
    cs = ConfigStore.instance()
    for recipe, schema in SCHEMAS.items():
        cs.store(name=f"{recipe}_schema", node=schema)


def _read(cfg: DictConfig, name: str) -> tuple[bool, Any]:
    try:
        return True, cfg[name]
    except Exception:  # unresolvable or missing: reported by the resolution pass
        return False, None


def schema_problems(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """Check ranges, choices and cross-field rules of ``schema`` on a composed config.

    Args:
        cfg: the composed config (or the sub-node for a nested schema).
        schema: the dataclass describing ``cfg``.
        prefix: key path of ``cfg`` inside the root, e.g. ``"lora."``.

    Returns:
        One message per problem, each naming the key path and the offending value.
    """
    problems: list[str] = []
    hints = typing.get_type_hints(schema)
    all_read = True
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        ok, value = _read(cfg, f.name)
        all_read &= ok
        if not ok or value is None:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            problems += schema_problems(value, hints[f.name], f"{prefix}{f.name}.")
            continue
        for check in f.metadata.get("checks", ()):
            try:
                msg = check(value)
            except TypeError:
                msg = "has the wrong type for this check"
            if msg:
                shown = list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
                problems.append(f"`{prefix}{f.name}`={shown!r}: {msg}")
                break
    cross = getattr(schema, "cross_checks", None)
    if cross is not None and all_read:
        try:
            problems += cross(cfg, prefix)
        except Exception as exc:  # a missing value in a cross rule: reported elsewhere
            problems.append(f"cannot check cross-field rules of `{prefix or 'root'}`: {exc}")
    return problems
