"""Finding and loading weights for inference: checkpoints (HF or Meta, either checkpoint layout),
adapters (tunekit or PEFT), and the checks that keep an adapter from being applied twice.

Checkpoint layouts read (``tunekit.checkpointing._layout``)::

    RUN/epoch_N/model/ + adapter/ + state/adapter_0.pt + checkpoint.json    (current)
    RUN/epoch_N/{weights, config, adapter_0.pt, adapter/, recipe_state.pt}  (older, flat)

A LoRA run's ``model/`` (older: the flat weights) holds the *merged* weights: the adapter is
already in them. ``checkpoint.json``'s ``merged_adapter`` says so in the current layout; in the
flat layout an ``adapter_0.pt`` beside the weights does.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunekit.checkpointing import (
    ADAPTER_FILE,
    COMPLETE_MARKER,
    INFO_FILE,
    MODEL_SUBDIR,
    PEFT_SUBDIR,
    STATE_SUBDIR,
    CheckpointError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    checkpoint_format,
    list_checkpoints,
    load_state_file,
    model_dir,
    read_checkpoint_info,
    state_dir,
)
from tunekit.models import ConversionError, get_model_type
from tunekit.modules.peft import is_adapter_key, merged_weight

__all__ = [
    "AdapterSource",
    "CheckpointSource",
    "check_adapter_not_merged",
    "find_adapter",
    "find_weights_dir",
    "load_adapter",
    "merge_adapter",
    "resolve_checkpoint",
    "weights_checkpointer",
]

_CKPT_NAME = re.compile(r"^(epoch|step)_\d+$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _format(d: Path) -> str | None:
    """The format of the weights ``d`` itself holds; None for a checkpoint directory (its
    ``model/`` holds them) or a directory without weights."""
    if not d.is_dir():
        return None
    if (d / MODEL_SUBDIR).is_dir() and checkpoint_format(d / MODEL_SUBDIR):
        return None
    return checkpoint_format(d)


def _is_checkpoint_dir(d: Path) -> bool:
    """A tunekit checkpoint directory of either layout (``epoch_N/``, ``step_N/``)."""

    return (d / INFO_FILE).is_file() or (d / COMPLETE_MARKER).is_file() or bool(_CKPT_NAME.match(d.name))


@dataclass(frozen=True)
class CheckpointSource:
    """Where ``checkpoint=`` points.

    Attributes:
        weights_dir: the directory with the model files (HF or Meta).
        checkpoint_dir: the tunekit checkpoint it belongs to (``epoch_N/``), None for a plain
            model directory (a base model, a converted export).
        merged_adapter: when ``weights_dir`` already holds an adapter merged into it:
            ``{"file": ..., "sha256": ...}`` (``sha256`` None when unknown); else None.
    """

    weights_dir: Path
    checkpoint_dir: Path | None = None
    merged_adapter: dict[str, Any] | None = None


def _merged_adapter_of(ckpt: Path) -> dict[str, Any] | None:
    """What ``ckpt``'s weights already contain: ``checkpoint.json``'s ``merged_adapter``, or, without
    that file, the ``adapter_0.pt`` a LoRA run saves beside its merged weights."""

    info = read_checkpoint_info(ckpt)
    if "merged_adapter" in info:
        merged = info["merged_adapter"]
        if not merged:
            return None
        merged = dict(merged) if isinstance(merged, dict) else {"file": str(merged)}
        return {"file": merged.get("file") or f"state/{ADAPTER_FILE}", "sha256": merged.get("sha256")}
    adapter = state_dir(ckpt) / ADAPTER_FILE
    if adapter.is_file():
        return {"file": str(adapter.relative_to(ckpt)), "sha256": None}
    return None


def resolve_checkpoint(path: str | Path) -> CheckpointSource:
    """Where the weights of ``checkpoint=path`` are, and whether an adapter is merged into them.

    ``path`` may be a model directory (HF or Meta files), a checkpoint directory of either layout
    (``RUN/epoch_N``; its ``model/``), a checkpoint's ``model/`` itself, or a run directory (its
    newest complete checkpoint).

    Raises:
        CheckpointError: ``path`` holds no model weights (naming what it holds instead).
    """

    d = Path(path).expanduser()
    if _format(d):
        ckpt = d.parent if d.name == MODEL_SUBDIR and _is_checkpoint_dir(d.parent) else None
        if ckpt is None and _is_checkpoint_dir(d):
            ckpt = d  # the flat layout: weights in the checkpoint directory itself
        return CheckpointSource(d, ckpt, None if ckpt is None else _merged_adapter_of(ckpt))
    if d.is_dir() and _format(model_dir(d)):
        return CheckpointSource(model_dir(d), d, _merged_adapter_of(d))
    found = list_checkpoints(d) if d.is_dir() else []
    if found:
        return resolve_checkpoint(found[-1])
    if (d / "adapter_config.json").is_file() or (d.name == PEFT_SUBDIR and d.is_dir()):
        hint = (f"{d} is a LoRA adapter directory, not a model: pass it as adapter={d} (on top of the base "
                "model, the default, or checkpoint=<the base model it was trained on>).")
    elif d.name == STATE_SUBDIR and _is_checkpoint_dir(d.parent):
        hint = (f"{d} holds training state, not a model: use checkpoint={d.parent} (its "
                f"{MODEL_SUBDIR}/ holds the weights).")
    else:
        listing = sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())[:8] if d.is_dir() else []
        hint = (f"checkpoint={str(d)!r} holds no model weights (it contains: {', '.join(listing) or 'nothing'}). "
                "Give an HF model directory (config.json + model*.safetensors), a Meta one (params.json + "
                "consolidated.00.pth), a checkpoint directory (RUN/epoch_N) or a run directory with a "
                "complete epoch_*/step_* checkpoint.")
    raise CheckpointError(hint)


def find_weights_dir(path: str | Path) -> Path:
    """The directory holding the model weights for ``checkpoint=path`` (see :func:`resolve_checkpoint`)."""
    return resolve_checkpoint(path).weights_dir


def weights_checkpointer(d: Path, *, model_type: str, output_dir: str | Path) -> Any:
    """The checkpointer for the weights in ``d`` (format detected by its files); nothing is read
    yet: ``.load_checkpoint()["model"]`` gives them in tunekit names."""

    cls = FullModelHFCheckpointer if checkpoint_format(d) == "hf" else FullModelMetaCheckpointer
    return cls(checkpoint_dir=d, output_dir=output_dir, model_type=model_type)


# ---- adapters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterSource:
    """The files of ``adapter=``.

    Attributes:
        peft_dir: the directory with ``adapter_config.json`` (+ ``adapter_model.safetensors``).
        tunekit_file: the ``adapter_0.pt`` of the same adapter (tunekit names), when there is one.
        checkpoint_dir: the tunekit checkpoint it came from (None for a bare PEFT directory).
    """

    peft_dir: Path
    tunekit_file: Path | None = None
    checkpoint_dir: Path | None = None


def find_adapter(path: str | Path) -> AdapterSource:
    """The adapter files of ``adapter=path``: a tunekit checkpoint directory of either layout
    (``RUN/epoch_N``), a run directory (its newest complete checkpoint), its ``adapter/``, or any
    PEFT adapter directory.

    Raises:
        CheckpointError: no adapter there (naming what the directory is instead).
    """

    d = Path(path).expanduser()
    if (d / "adapter_config.json").is_file():
        peft_dir, ckpt = d, d.parent if _is_checkpoint_dir(d.parent) else None
    elif (d / PEFT_SUBDIR / "adapter_config.json").is_file():
        peft_dir, ckpt = d / PEFT_SUBDIR, d
    else:
        found = list_checkpoints(d) if d.is_dir() and not _is_checkpoint_dir(d) else []
        if found:
            return find_adapter(found[-1])
        what = ("it holds model weights but no LoRA adapter (a full fine-tuning checkpoint or a base "
                "model: give it as checkpoint= instead)" if _format(d) or _format(d / "model")
                else "it has no adapter_config.json, in it or in adapter/")
        raise CheckpointError(
            f"adapter={str(d)!r} is not a LoRA adapter: {what}. Give a LoRA run's checkpoint directory "
            "(RUN/epoch_N, with adapter/), the run directory itself, or a PEFT adapter directory "
            "(adapter_config.json + adapter_model.safetensors)."
        )
    candidates = [d / ADAPTER_FILE] + ([state_dir(ckpt) / ADAPTER_FILE] if ckpt is not None else [])
    tunekit_file = next((p for p in candidates if p.is_file()), None)
    return AdapterSource(peft_dir, tunekit_file, ckpt)


def check_adapter_not_merged(checkpoint: CheckpointSource, adapter_path: str | Path) -> None:
    """Refuse ``adapter=`` on top of weights that already contain an adapter.

    A LoRA checkpoint's model files are the merged weights ``W + s B A``; applying the adapter
    again would add ``s B A`` twice, and another adapter was trained on the base weights, not on
    these. The one exception is an adapter trained *on* these merged weights (a second LoRA run
    whose checkpointer read this checkpoint): its ``adapter_config.json`` names this checkpoint as
    ``base_model_name_or_path``, and it is allowed.

    Raises:
        CheckpointError: naming the merged adapter (file, sha256 when known) and the two fixes.
    """

    merged = checkpoint.merged_adapter
    if merged is None:
        return
    ckpt = checkpoint.checkpoint_dir
    where = ckpt / merged["file"] if ckpt is not None else Path(merged["file"])
    sha = merged.get("sha256")
    if sha is None and where.is_file():
        sha = _sha256(where)
    named = f"{where}" + (f" (sha256 {sha[:12]}...)" if sha else "")
    try:
        given = find_adapter(adapter_path)
    except CheckpointError:
        given = None
    same = ""
    if given is not None and given.tunekit_file is not None and sha is not None and _sha256(given.tunekit_file) == sha:
        same = " adapter= names that very adapter, so it would be applied twice (2x its update)."
    elif given is not None and _trained_on(given, checkpoint):
        return
    raise CheckpointError(
        f"checkpoint={ckpt or checkpoint.weights_dir} holds merged weights: the LoRA adapter {named} is "
        f"already in {checkpoint.weights_dir}, and adapter={adapter_path} would be applied on top of "
        f"it.{same} Drop adapter= to generate with the fine-tuned weights as saved, or point checkpoint= "
        "at the base model (or omit it, for the configured base model) to apply an adapter."
    )


def _trained_on(adapter: AdapterSource, checkpoint: CheckpointSource) -> bool:
    """Whether the adapter's ``adapter_config.json`` names ``checkpoint`` as its base model."""
    try:
        base = json.loads((adapter.peft_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
    if not isinstance(base, str) or not base:
        return False
    here = {p.resolve() for p in (checkpoint.weights_dir, checkpoint.checkpoint_dir) if p is not None}
    return Path(base).expanduser().resolve() in here


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT semantics: a pattern matches the module path or any dotted suffix of it.
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


# PEFT settings this loader does not implement: refused, never ignored.
_UNSUPPORTED_PEFT = (
    ("bias", lambda v: v not in (None, "none"), "trained LoRA biases"),
    ("fan_in_fan_out", bool, "Conv1D (fan_in_fan_out) layers"),
    ("modules_to_save", bool, "fully trained extra modules (modules_to_save)"),
    ("layer_replication", bool, "layer replication"),
)


def _read_peft_config(path: Path) -> dict[str, Any]:

    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable JSON file ({err}); the adapter is truncated or "
                              "corrupt: save or download it again.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a PEFT adapter config (a JSON object with lora_alpha, r, ...).")
    problems = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA adapters can be applied)")
    for key, bad, what in _UNSUPPORTED_PEFT:
        if bad(config.get(key)):
            problems.append(f"{key}={config.get(key)!r} ({what} are not supported)")
    alpha = config.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        problems.append(f"lora_alpha={alpha!r} (must be a number)")
    if problems:
        raise CheckpointError(f"{path}: this adapter cannot be applied: {'; '.join(problems)}. Merge it "
                              "with PEFT (merge_and_unload) and pass the merged model as checkpoint= instead.")
    return config


def load_adapter(path: str | Path, *, model_type: str, num_heads: int, num_kv_heads: int,
                 embed_dim: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A LoRA adapter and its per-module scaling (``alpha / rank``; ``alpha / sqrt(rank)`` for
    rsLoRA).

    ``path`` is anything :func:`find_adapter` accepts. The PEFT ``adapter_config.json`` gives
    alpha (and ``alpha_pattern``); ranks come from the tensors. The tunekit ``adapter_0.pt`` is
    read when the checkpoint has one, else PEFT's ``adapter_model.safetensors`` (converted).

    Returns:
        (``{"<module>.lora_a.weight": A, "<module>.lora_b.weight": B[, "<module>.lora_magnitude": m]}``,
        ``{module: scaling}``).

    Raises:
        CheckpointError: nothing usable found, an unreadable file, a setting not supported,
            keys that are not this model family's adapter weights.
    """

    src = find_adapter(path)
    config = _read_peft_config(src.peft_dir / "adapter_config.json")
    mt = get_model_type(model_type)
    if src.tunekit_file is not None:
        file = src.tunekit_file
        adapter = load_state_file(file)
        foreign = sorted(k for k in adapter if not is_adapter_key(k))
        if foreign:
            raise CheckpointError(f"{file} is not a LoRA adapter file: it holds {len(foreign)} other tensor(s) "
                                  f"({', '.join(foreign[:3])}); give the adapter_0.pt of a LoRA run.")
    else:
        file = next((src.peft_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                     if (src.peft_dir / n).is_file()), None)
        if file is None:
            raise CheckpointError(f"{src.peft_dir} has adapter_config.json but no adapter_model.safetensors "
                                  "(or .bin): the adapter's weights are missing; copy or save them again.")
        try:
            adapter = mt.peft_to_adapter(load_state_file(file), num_heads, num_kv_heads, embed_dim)
        except ConversionError as err:
            raise CheckpointError(f"{file}: {err}") from None
    if not any(k.endswith(".lora_a.weight") for k in adapter):
        raise CheckpointError(f"{file} holds no LoRA weights (no lora_A / lora_a tensors); it is not the "
                              "adapter you meant.")
    alpha = float(config.get("lora_alpha", 8))
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    rslora = bool(config.get("use_rslora", False))
    scalings: dict[str, float] = {}
    for key, a in adapter.items():
        if key.endswith(".lora_a.weight"):
            module = key[: -len(".lora_a.weight")]
            rank = a.shape[0]
            module_alpha = float(_pattern_value(alpha_pattern, mt.peft_module_name(module), alpha))
            scalings[module] = module_alpha / (math.sqrt(rank) if rslora else rank)
    return adapter, scalings


def merge_adapter(state_dict: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor],
                  scalings: dict[str, float], *, source: str = "the adapter") -> dict[str, torch.Tensor]:
    """``W + scaling * B @ A`` for every adapted module (DoRA: rows rescaled), through
    :func:`tunekit.modules.peft.merged_weight` (fp32 math, the weight's dtype kept).

    Args:
        source: the adapter's path, named in errors.

    Raises:
        CheckpointError: the adapter names a module the weights lack, misses half of a pair, or
            its shapes do not fit the weights (an adapter trained on another model).
    """

    out = dict(state_dict)
    missing, unpaired, misfit = [], [], []
    for module, scale in scalings.items():
        key = f"{module}.weight"
        a, b = adapter.get(f"{module}.lora_a.weight"), adapter.get(f"{module}.lora_b.weight")
        if key not in out:
            missing.append(module)
            continue
        if a is None or b is None:
            unpaired.append(module)
            continue
        w = out[key]
        try:
            out[key] = merged_weight(w, a, b, scaling=scale, magnitude=adapter.get(f"{module}.lora_magnitude"))
        except ValueError:
            mag = adapter.get(f"{module}.lora_magnitude")
            misfit.append(f"{module}: lora_a {tuple(a.shape)}, lora_b {tuple(b.shape)}"
                          + ("" if mag is None else f", magnitude {tuple(mag.shape)}")
                          + f" vs weight {tuple(w.shape)}")
    if missing or unpaired or misfit:
        parts = []
        if missing:
            parts.append(f"it adapts {len(missing)} module(s) the model does not have ({', '.join(missing[:3])})")
        if unpaired:
            parts.append(f"{len(unpaired)} module(s) lack their lora_b ({', '.join(unpaired[:3])})")
        if misfit:
            parts.append(f"{len(misfit)} module(s) have shapes that do not fit the weights ({'; '.join(misfit[:2])})")
        raise CheckpointError(
            f"{source} does not fit this model: {'; '.join(parts)}. The adapter was trained on a different "
            "model: apply it to the base model it was trained on (`model=` and checkpoint= / the checkpointer "
            "of that model; see base_model_name_or_path in its adapter_config.json)."
        )
    return out
