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
import importlib.util
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from tunekit.config._lora_patterns import pattern_matches

__all__ = [
    "AC_POLICIES",
    "DEVICES",
    "DTYPES",
    "EvaluateSchema",
    "ExamplesConfig",
    "LORA_TARGETS",
    "SCHEMAS",
    "DPOConfig",
    "FullDpoSchema",
    "FullFinetuneSchema",
    "GenerateSchema",
    "LoRAConfig",
    "LoraDpoSchema",
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
QUANTIZE_BASE_CHOICES = ("nf4",)  # tunekit.modules.peft.QUANTIZE_BASE_CHOICES (torch-free copy)
MERGE_BASE_CHOICES = ("dequantized", "original")  # tunekit.modules.peft.MERGE_BASE_CHOICES

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
                             "packed", "seed", "lora", "objective")


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
    quantize_base: Optional[str] = setting(
        None, _one_of(QUANTIZE_BASE_CHOICES),
        doc="QLoRA: nf4 stores the frozen base linears in 4-bit NormalFloat (needs the qlora extra).")
    merge_base: str = setting(
        "dequantized", _one_of(MERGE_BASE_CHOICES),
        doc="QLoRA: merged weights = adapter + the NF4 base it trained on (dequantized) or the original.")

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """Pattern keys must name targets; pattern values must be positive; QLoRA needs torchao."""
        problems = []
        if cfg.quantize_base is not None and importlib.util.find_spec("torchao") is None:
            problems.append(
                f"`{prefix}quantize_base`={cfg.quantize_base!r} (QLoRA) stores the base weights with torchao's "
                "NF4 tensor, but torchao is not installed: pip install \"tunekit[qlora]\" "
                f"(or set {prefix}quantize_base=null for plain LoRA)")
        for key in ("rank_pattern", "alpha_pattern"):
            for name, value in cfg[key].items():
                if not pattern_matches(name, cfg.targets):  # a target name or a module path, as in PEFT
                    problems.append(f"`{prefix}{key}.{name}`: `{name}` matches no module of `{prefix}targets` ("
                                    + ", ".join(cfg.targets) + "); name a target or a path (layers.3.attn.q_proj)")
                if value <= 0:
                    problems.append(f"`{prefix}{key}.{name}`={value}: must be > 0")
        return problems


def task_file_problems(tasks: Any, key: str) -> list[str]:
    """Task entries that name a YAML file that is not there (harness names are checked at run time)."""
    problems = []
    for i, task in enumerate(tasks or []):
        task = str(task)
        if task.endswith((".yaml", ".yml")) and not os.path.isfile(os.path.expanduser(task)):
            problems.append(f"`{key}[{i}]`={task!r}: no such task file; give the path of a harness task"
                            " YAML (relative to the working directory) or a harness task name")
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
    mfu_peak_tflops: Optional[float] = setting(
        None, _positive, doc="Peak dense TFLOP/s for the logged MFU; null: known GPUs' datasheet bf16 rate."
    )
    max_seq_len: int = setting(512, _at_least(2))
    packed: bool = setting(False, doc="Pack samples into max_seq_len rows.")
    fp8_base: bool = setting(
        False, doc="LoRA on Hopper GPUs: frozen base weights' GEMMs in FP8 (row-wise scales); numerics differ."
    )
    attention: str = setting(
        "auto", _one_of(("auto", "sdpa", "flex", "varlen")),
        doc="How packed rows attend: auto = flash varlen (CUDA bf16) / flex (CUDA) / dense mask (CPU);"
            " sdpa = dense [b, s, s] mask; flex; varlen.",
    )
    train_on_input: bool = setting(False, doc="Also take the loss on the prompt tokens.")
    eval_tasks: List[str] = setting(
        [], doc="lm-evaluation-harness task names or local task YAML files scored after training"
                " (results in <run>/eval/ and logged with the metrics); [] = none.",
    )
    eval_limit: Optional[float] = setting(None, _positive, doc="With eval_tasks: samples per task (<1: a fraction).")
    plots: bool = setting(True, doc="Draw <run>/plots/*.png (loss, lr, grad norm, tokens/s) at the end; needs"
                                    " matplotlib (tunekit[plot]), else a note and no plots.")
    resume: Optional[str] = setting(None, _dir_or_auto, doc='A run/epoch dir or "auto".')
    resume_accept: List[str] = setting(
        [], _each_one_of(RESUME_FINGERPRINT_FIELDS),
        doc="Fingerprint fields a resumed checkpoint may differ in (e.g. [data, batch_size]).",
    )
    keep_last_n: Optional[int] = setting(None, _at_least(1), doc="step_N checkpoints kept (epoch_N: all).")
    optimizer_in_backward: bool = setting(
        False, doc="Step each parameter in backward and free its gradient at once (no accumulation/clipping).")
    activation_offloading: bool = setting(
        False, doc="Keep saved activations in CPU memory (copies overlapped on CUDA streams); with AC.")
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
        if cfg.fp8_base and "lora" not in cfg:
            problems.append("`fp8_base`=true puts the frozen base weights of a LoRA run in FP8; full fine-tuning"
                            " updates every weight: set fp8_base=false (or fine-tune with lora_finetune)")
        elif cfg.fp8_base and cfg.lora.use_dora:
            problems.append("`fp8_base`=true does not support DoRA (`lora.use_dora`=true): set one of them to false")
        if cfg.fp8_base and "lora" in cfg and cfg.lora.get("quantize_base"):
            problems.append("`fp8_base`=true and `lora.quantize_base` both replace the frozen base weights: set"
                            " fp8_base=false or lora.quantize_base=null")
        clash = {k: fix for k, bad, fix in (("gradient_accumulation_steps", cfg.gradient_accumulation_steps != 1,
                 "gradient_accumulation_steps=1 (raise batch_size instead)"), ("clip_grad_norm", cfg.clip_grad_norm
                 is not None, "clip_grad_norm=null")) if bad and cfg.optimizer_in_backward}  # only what clashes
        if clash:
            problems.append(f"`optimizer_in_backward`=true steps each parameter as soon as its gradient is ready, so it"
                            f" cannot run with {' or '.join(f'`{k}`={cfg[k]}' for k in clash)} (it needs every gradient"
                            f" of a step at once); set {' and '.join(clash.values())}, or optimizer_in_backward=false")
        if str(OmegaConf.select(cfg, "optimizer._component_", default="")).endswith("cpu_offload") and (
                cfg.gradient_accumulation_steps != 1 or cfg.clip_grad_norm is not None or cfg.optimizer_in_backward):
            problems.append("`optimizer`=adamw_cpu_offload frees each gradient on the GPU during backward: set"
                            " gradient_accumulation_steps=1 clip_grad_norm=null optimizer_in_backward=false")
        problems += task_file_problems(cfg.eval_tasks, "eval_tasks")
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


DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")
DPO_REFERENCES = ("model", "precomputed")


@dataclass
class DPOConfig:
    """Preference-tuning (DPO) settings; see tunekit/training/preference_losses.py."""

    loss_type: str = setting("sigmoid", _one_of(DPO_LOSS_TYPES),
                             doc="sigmoid = DPO (cDPO with label_smoothing), robust, ipo, hinge.")
    beta: float = setting(0.1, _positive, doc="KL strength: higher stays closer to the reference.")
    label_smoothing: float = setting(0.0, _in_range(0.0, 0.5, high_inclusive=False),
                                     doc="Assumed share of flipped labels (sigmoid: cDPO; robust).")
    reference: str = setting(
        "model", _one_of(DPO_REFERENCES),
        doc="model = reference log-probs each step (LoRA: adapters off; full: a frozen copy);"
            " precomputed = once before training (no reference forward or copy while training).")

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """label_smoothing only means something to the sigmoid and robust losses."""
        if cfg.label_smoothing and cfg.loss_type in ("ipo", "hinge"):
            return [f"`{prefix}label_smoothing`={cfg.label_smoothing} has no effect with `{prefix}loss_type`="
                    f"{cfg.loss_type}; use loss_type=sigmoid (cDPO) or robust, or set label_smoothing=0"]
        if cfg.loss_type == "robust" and not cfg.label_smoothing:
            return [f"`{prefix}loss_type`=robust needs `{prefix}label_smoothing` > 0 (the assumed share of "
                    "flipped labels; with 0 it is plain sigmoid DPO); set e.g. dpo.label_smoothing=0.1"]
        return []


def _dpo_cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
    problems = _TrainSettings.cross_checks(cfg, prefix)
    if cfg.packed:
        problems.append("`packed`=true: preference pairs are padded, not packed, in the DPO recipes; "
                        "set packed=false")
    if cfg.train_on_input:
        problems.append("`train_on_input`=true: DPO compares the responses only (the prompt is shared "
                        "by both sides of a pair); set train_on_input=false")
    if cfg.loss is not None:
        problems.append("`loss` is set, but the DPO recipes take their loss from `dpo.*` "
                        "(dpo.loss_type, dpo.beta); remove the loss override")
    return problems


@dataclass
class LoraDpoSchema(_TrainSettings):
    """``lora_dpo`` recipe."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    cross_checks = staticmethod(_dpo_cross_checks)


@dataclass
class FullDpoSchema(_TrainSettings):
    """``full_dpo`` recipe."""

    dpo: DPOConfig = field(default_factory=DPOConfig)
    cross_checks = staticmethod(_dpo_cross_checks)


@dataclass
class _InferenceSettings(_RunSettings):
    """Which weights the recipes that run a model (generate, evaluate) load: existing directories."""

    checkpoint: Optional[str] = setting(None, doc="A run, epoch_/step_ or model dir to load; null = the base model.")
    adapter: Optional[str] = setting(None, doc="A PEFT/LoRA adapter dir applied on top.")

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        return [f"`{key}`={cfg[key]!r}: not an existing directory; it {problem}"
                for key, what in (("checkpoint", "a run or checkpoint directory"), ("adapter", "an adapter directory"))
                if cfg[key] is not None and (problem := not_a_dir(cfg[key], what)) is not None]


@dataclass
class GenerateSchema(_InferenceSettings):
    """``generate`` recipe."""

    prompt: str = setting("Tell me a short story about a llama.")
    chat: bool = setting(False, doc="Format the prompt as a chat turn with the checkpoint's own chat template "
                                    "(Llama 2 [INST] layout without one).")
    template: Optional[str] = setting(
        None, _one_of(("alpaca",)), doc="alpaca = wrap the prompt as an Alpaca instruction."
    )
    input: Optional[str] = setting(None, doc="With template=alpaca: the instruction's input.")
    messages: Any = setting(None, doc="A multi-turn chat (list of {role, content}, ending with user) or a "
                                      ".json/.yaml file of one; formatted with the chat template.")
    system_prompt: Optional[str] = setting(None, doc="With chat=true or messages.")
    temperature: float = setting(0.8, _at_least(0.0), doc="0 = greedy.")
    top_k: Optional[int] = setting(50, _at_least(1))
    top_p: Optional[float] = setting(None, _in_range(0.0, 1.0, high_inclusive=True))
    max_new_tokens: int = setting(128, _at_least(1))
    quantize: Optional[str] = setting(
        None, _one_of(("int8",)),
        doc="int8 = int8 weight-only linears (per-channel scales): half the bytes per token; null = as loaded.",
    )
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
        if cfg.system_prompt is not None and not cfg.chat and cfg.messages is None:
            problems.append("`system_prompt` is set but `chat`=false; set chat=true or drop it")
        if cfg.input is not None and cfg.template != "alpaca":
            problems.append(f"`input`={cfg.input!r} is the input of an Alpaca instruction; set template=alpaca "
                            "(the instruction is `prompt`) or drop it")
        if cfg.messages is not None and cfg.template is not None:
            problems.append(f"`messages` and `template`={cfg.template!r} both format the prompt; keep one")
        problems += _InferenceSettings.cross_checks(cfg, prefix)
        if cfg.top_p is not None and cfg.top_p == 0.0:
            problems.append("`top_p`=0 keeps no tokens; use a value in (0, 1] or null")
        return problems


@dataclass
class PerplexityConfig:
    """``evaluate``'s built-in perplexity (no harness)."""

    source: Optional[str] = setting(
        None, doc='A .txt file (one document), a .jsonl/.json file of {"text": ...} records, or "dataset"'
                  " (the dataset group's split); null = no perplexity.",
    )
    split: str = setting("validation", _one_of(("train", "validation", "all")), doc="With source=dataset.")
    text_field: str = setting("text", _non_empty, doc="The field holding the text in .jsonl/.json records.")
    stride: Optional[int] = setting(None, _at_least(1), doc="Window advance; null = max_length (disjoint).")


@dataclass
class EvaluateSchema(_InferenceSettings):
    """``evaluate`` recipe."""

    examples: ExamplesConfig = field(default_factory=ExamplesConfig)  # dataset=sort_letters sets it; unused
    tasks: List[str] = setting([], doc="lm-evaluation-harness task names or local task YAML files.")
    num_fewshot: Optional[int] = setting(None, _at_least(0), doc="null = each task's own default.")
    limit: Optional[float] = setting(None, _positive, doc="Samples per task (<1: a fraction); null = all.")
    batch_size: int = setting(8, _at_least(1))
    max_length: Optional[int] = setting(None, _at_least(2), doc="Context used; null = the model's max_seq_len.")
    max_gen_toks: int = setting(256, _at_least(1), doc="New tokens per generate_until request by default.")
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    max_seq_len: int = setting(512, _at_least(2), doc="The dataset group's max_seq_len (perplexity.source=dataset).")
    train_on_input: bool = setting(False, doc="The dataset group's: also score the prompt tokens.")
    paths: PathsConfig = field(default_factory=PathsConfig)
    model_info: ModelInfo = field(default_factory=ModelInfo)
    model: Any = None
    checkpointer: Any = None
    tokenizer: Any = None
    dataset: Any = None

    @staticmethod
    def cross_checks(cfg: DictConfig, prefix: str) -> list[str]:
        """Rules that involve several evaluation settings."""
        problems = []
        if not cfg.tasks and cfg.perplexity.source is None:
            problems.append("nothing to evaluate: `tasks` is empty and `perplexity.source` is null; set"
                            " tasks=[<harness task or task.yaml>] and/or perplexity.source=<text file or dataset>")
        problems += _InferenceSettings.cross_checks(cfg, prefix) + task_file_problems(cfg.tasks, "tasks")
        source = cfg.perplexity.source
        if source is not None and source != "dataset" and not os.path.isfile(os.path.expanduser(source)):
            problems.append(f"`perplexity.source`={source!r}: no such file; give a .txt/.jsonl/.json file or"
                            " `dataset` (the dataset group's split)")
        if cfg.perplexity.stride is not None and cfg.max_length is not None and cfg.perplexity.stride > cfg.max_length:
            problems.append(f"`perplexity.stride`={cfg.perplexity.stride} exceeds `max_length`={cfg.max_length}:"
                            " windows would skip tokens; use a stride <= max_length")
        return problems


SCHEMAS: dict[str, type] = {
    "lora_finetune": LoraFinetuneSchema,
    "full_finetune": FullFinetuneSchema,
    "lora_dpo": LoraDpoSchema,
    "full_dpo": FullDpoSchema,
    "generate": GenerateSchema,
    "evaluate": EvaluateSchema,
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
