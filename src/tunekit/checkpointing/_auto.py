"""``model=auto``: the model family and its sizes read from the checkpoint's own JSON.

:func:`resolve_model_type` turns ``model_type="auto"`` (``checkpointer.model_type``,
``tunekit convert --model-type auto``) into the family row whose code runs what ``config.json``
(HF) or ``params.json`` (Meta) declares; :func:`model_from_checkpoint` (the ``model=auto``
component) builds that family's model with the declared sizes. Both refuse what no family
implements through the one checker, ``_settings.check_supported_hf_config`` /
``check_supported_meta_params``: the message names the file and the field.

The choice is made from data of the family rows, never from a family's name: a row is a
candidate when it implements the declared ``model_type`` (Meta: has a Meta name for every
weight), the declared RoPE scaling type, and its builder takes every argument the JSON needs
(tied embeddings, an explicit head width); among candidates the one whose default RoPE base is
the declared one wins (Llama 2's 10000 against Llama 3's 500000), then the first registered.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.checkpointing._settings import (
    _LLAMA3_SCALING_FIELDS,
    _rope_scaling_dict,
    _supported_model_types,
    _supported_scaling,
    check_supported_hf_config,
    check_supported_meta_params,
    hf_config_problems,
    rope_scaling_type,
)
from tunekit.models import MODEL_TYPES, ConversionError, ModelType, get_model_type

__all__ = ["AUTO", "meta_rope_scaling", "model_from_checkpoint", "model_spec", "resolve_model_type"]

#: The ``model_type`` value that asks for the family to be read from the checkpoint.
AUTO = "auto"
#: transformers' default ``rms_norm_eps`` of the Llama, Mistral and Qwen config classes, used when
#: a config.json leaves the field out (as transformers does).
_HF_DEFAULT_NORM_EPS = 1e-6
#: Meta's reference Llama 3.1 code applies the ``llama3`` scaling with these when params.json says
#: only ``use_scaled_rope: true`` (``rope_scaling_factor`` / ``rope_high_freq_factor`` override).
_META_SCALING_DEFAULTS = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read as JSON ({err}); model=auto reads the model's family "
                              f"and sizes from it. Restore the file that came with the weights "
                              f"(`tunekit download <repo>`).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object of settings; restore "
                              f"the file that came with the weights (`tunekit download <repo>`).")
    return data


def _json_of(path: str | Path) -> tuple[Path, str, dict[str, Any]]:
    """(the JSON file, ``"hf"`` | ``"meta"``, its content) for a model, checkpoint or run directory."""
    from tunekit.checkpointing._checkpointer import resolve_checkpoint_dir

    given = Path(path).expanduser()
    if not given.is_dir():
        raise CheckpointFileNotFoundError(
            f"model=auto: checkpointer.checkpoint_dir={str(given)!r} is not a directory, so there is no "
            f"config.json / params.json to read the model from. Set checkpointer.checkpoint_dir=<the model "
            f"directory> (a download, e.g. `tunekit download meta-llama/Llama-3.1-8B-Instruct`, or a run's "
            f"epoch_N/), or pick a named model (model=llama3_1_8b, ...; `tunekit ls` lists them).")
    d, _ = resolve_checkpoint_dir(given)
    for name, fmt in (("config.json", "hf"), ("params.json", "meta")):
        if (d / name).is_file():
            return d / name, fmt, _read(d / name)
    held = sorted(p.name for p in d.iterdir())[:10]
    raise CheckpointFileNotFoundError(
        f"model=auto: {d} holds neither config.json (HF) nor params.json (Meta) (it holds "
        f"{', '.join(held) or 'nothing'}), so the model cannot be read from it. Point "
        f"checkpointer.checkpoint_dir at the model's directory, or pick a named model (model=llama3_1_8b, ...).")


def _builder(mt: ModelType) -> Callable[..., Any]:
    module, _, fn = mt.builder.rpartition(".")
    return getattr(importlib.import_module(module), fn)


def _accepts(mt: ModelType, args: Mapping[str, Any]) -> bool:
    params = inspect.signature(_builder(mt)).parameters
    return all(k in params for k, v in args.items() if v)


def _needs(config: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """Builder arguments beyond the common ones that this JSON requires (truthy = required)."""
    if fmt == "meta":
        return {}
    heads, hidden, hd = config.get("num_attention_heads"), config.get("hidden_size"), config.get("head_dim")
    explicit = bool(hd) and isinstance(heads, int) and isinstance(hidden, int) and heads and hd * heads != hidden
    return {"tie_word_embeddings": bool(config.get("tie_word_embeddings")), "head_dim": explicit}


def _choose(candidates: list[ModelType], rope_theta: float | None, path: Path, what: str) -> ModelType:
    if not candidates:
        raise CheckpointError(what)
    if rope_theta is not None:
        same = [mt for mt in candidates if abs(mt.rope_theta - rope_theta) <= 1e-9 * rope_theta]
        if same:
            return same[0]
    return candidates[0]


def _families(rows: list[ModelType]) -> str:
    seen: dict[str, list[str]] = {}
    for mt in rows:
        for kind in _supported_model_types(mt):
            seen.setdefault(kind, []).append(mt.display_name)
    return ", ".join(f"{k!r} ({' / '.join(v)})" for k, v in seen.items())


def _hf_family(config: Mapping[str, Any], path: Path) -> ModelType:
    rows = list(MODEL_TYPES.values())
    declared = config.get("model_type")
    if declared is None:
        raise CheckpointError(
            f"{path} has no model_type field, so model=auto cannot tell which model family it describes. "
            f"Restore the config.json that came with the weights, or pick a named model (model=llama3_1_8b, "
            f"qwen2_5_7b, ...) and set checkpointer.model_type to its family.")
    by_type = [mt for mt in rows if declared in _supported_model_types(mt)]
    if not by_type:
        # what else it declares that no family runs (Gemma's soft-capping, its activation, ...)
        anyone = SimpleNamespace(name="any", hf_model_types=(declared,), rope_scaling_types=("llama3",),
                                 qkv_bias=True, explicit_head_dim=True)
        more = hf_config_problems(config, anyone)
        raise CheckpointError(
            f"{path} declares model_type={declared!r}, which no tunekit model family implements (supported "
            f"model_type values: {_families(rows)}){'; also ' + '; '.join(more) if more else ''}; model=auto "
            f"cannot build it, and running its weights as another family would be a different model. Use a "
            f"checkpoint of a supported family.")
    kind = rope_scaling_type(config)
    needs = _needs(config, "hf")
    fits = [mt for mt in by_type if (kind is None or kind in _supported_scaling(mt)) and _accepts(mt, needs)]
    if not fits:  # let the one checker name every unsupported field of the closest family
        check_supported_hf_config(config, path, by_type[-1])
        what = [k for k, v in needs.items() if v]
        raise CheckpointError(
            f"{path} declares {', '.join(f'{k}={config.get(k)!r}' for k in what)}, which the "
            f"{' / '.join(mt.display_name for mt in by_type)} model code does not implement. Use a checkpoint of a "
            f"supported family.")
    return _choose(fits, by_type[0].rope_theta_of(config), path, "")


def _meta_family(params: Mapping[str, Any], path: Path) -> ModelType:
    rows = [mt for mt in MODEL_TYPES.values() if all(w.meta is not None for w in mt.weights)]
    scaled = bool(params.get("use_scaled_rope"))
    fits = [mt for mt in rows if not scaled or "llama3" in _supported_scaling(mt)]
    if not fits:
        check_supported_meta_params(params, path, rows[0])
    theta = float(params.get("rope_theta") or 10000.0)
    return _choose(fits, theta, path, f"{path}: no tunekit model family reads this Meta checkpoint.")


def resolve_model_type(model_type: str | ModelType, checkpoint_dir: str | Path) -> ModelType:
    """The family row for ``model_type``; ``"auto"`` reads it from ``checkpoint_dir``'s JSON.

    Raises:
        CheckpointError: an unknown ``model_type``, or (``"auto"``) a JSON that no family implements
            (naming the file and the field).
    """
    if isinstance(model_type, ModelType):
        return model_type
    if str(model_type).lower() != AUTO:
        try:
            return get_model_type(model_type)
        except ValueError as err:
            raise CheckpointError(f"checkpointer.model_type: {err} (or 'auto': read from the checkpoint)") from None
    path, fmt, data = _json_of(checkpoint_dir)
    return _hf_family(data, path) if fmt == "hf" else _meta_family(data, path)


def meta_rope_scaling(params: Mapping[str, Any], path: Path | None = None) -> dict[str, float] | None:
    """The ``llama3`` RoPE scaling a Meta ``params.json`` runs with, None without ``use_scaled_rope``.

    ``rope_scaling_factor`` / ``rope_high_freq_factor`` (what tunekit writes when they differ
    from Meta's defaults) override the defaults of Meta's reference code (factor 8, high 4); a
    ``config.json`` of the same download beside ``original/`` (``path``'s parent's parent) wins
    over both, since it records every field.
    """
    if not params.get("use_scaled_rope"):
        return None
    if path is not None:
        sibling = path.parent.parent / "config.json"
        if path.parent.name == "original" and sibling.is_file():
            try:
                rope = _rope_scaling_dict(json.loads(sibling.read_text())) or {}
            except (OSError, ValueError):
                rope = {}
            if str(rope.get("rope_type", rope.get("type"))) == "llama3" and all(
                    isinstance(rope.get(k), (int, float)) for k in _LLAMA3_SCALING_FIELDS):
                return {k: rope[k] for k in _LLAMA3_SCALING_FIELDS}
    out = dict(_META_SCALING_DEFAULTS)
    if isinstance(params.get("rope_scaling_factor"), (int, float)):
        out["factor"] = float(params["rope_scaling_factor"])
    if isinstance(params.get("rope_high_freq_factor"), (int, float)):
        out["high_freq_factor"] = float(params["rope_high_freq_factor"])
    return out


def _scaling_args(scaling: Mapping[str, Any] | None) -> dict[str, Any]:
    if scaling is None:
        return {"rope_scaling_factor": None}
    return {"rope_scaling_factor": float(scaling["factor"]), "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}


def model_spec(path: str | Path, *, model_type: str | ModelType = AUTO,
               max_seq_len: int | None = None) -> tuple[ModelType, dict[str, Any]]:
    """(family row, builder keyword arguments) for the model a checkpoint's JSON declares.

    Raises:
        CheckpointError: the JSON is missing, unreadable, lacks a size, or declares what the
            chosen family does not implement (one paragraph naming the file and field).
    """
    json_path, fmt, data = _json_of(path)
    mt = resolve_model_type(model_type, json_path.parent)
    try:
        if fmt == "hf":
            check_supported_hf_config(data, json_path, mt)
            d = mt.hf_config_dims(data)
            eps = data.get("rms_norm_eps", _HF_DEFAULT_NORM_EPS)
            rope = mt.rope_theta_of(data)
            scaling = _rope_scaling_dict(data) if rope_scaling_type(data) == "llama3" else None
            n_pos = data.get("max_position_embeddings") or mt.max_position_embeddings
        else:
            check_supported_meta_params(data, json_path, mt)
            d = mt.meta_params_dims(data)
            eps = data.get("norm_eps", 1e-5)
            rope = float(data.get("rope_theta") or 10000.0)
            scaling = meta_rope_scaling(data, json_path)
            n_pos = data.get("max_seq_len") or mt.max_position_embeddings
    except ConversionError as err:
        raise CheckpointError(f"{json_path}: {err}; model=auto needs it to build the model. Restore the file "
                              f"that came with the weights.") from None
    missing = [f for f, v in (("vocab_size", d.vocab_size), ("intermediate_size" if fmt == "hf" else
                                                             "multiple_of", d.intermediate_dim)) if v is None]
    if missing:
        raise CheckpointError(f"{json_path} does not declare {' nor '.join(missing)}, so model=auto cannot size the "
                              f"model. Restore the file that came with the weights, or pick a named model "
                              f"(model=llama3_1_8b, ...).")
    args: dict[str, Any] = dict(vocab_size=int(d.vocab_size), num_layers=d.num_layers, num_heads=d.num_heads,
                                num_kv_heads=d.num_kv_heads, embed_dim=d.embed_dim,
                                intermediate_dim=int(d.intermediate_dim), max_seq_len=int(max_seq_len or n_pos),
                                norm_eps=float(eps), rope_base=float(rope))
    params = inspect.signature(_builder(mt)).parameters
    if d.declared_head_dim is not None and "head_dim" in params:
        args["head_dim"] = d.declared_head_dim
    if d.tie_word_embeddings:
        args["tie_word_embeddings"] = True
    if "rope_scaling_factor" in params:
        args.update(_scaling_args(scaling))
    return mt, args


def model_from_checkpoint(path: str | Path, *, model_type: str = AUTO, max_seq_len: int | None = None,
                          lora: Any = None) -> Any:
    """The ``model=auto`` builder: the model ``path``'s ``config.json`` / ``params.json`` declares.

    Args:
        path: an HF or Meta model directory, a checkpoint (``RUN/epoch_N``) or a run directory.
        model_type: ``"auto"`` (the family read from the JSON) or a ``MODEL_TYPES`` key.
        max_seq_len: RoPE table / default KV-cache length; None: the checkpoint's
            ``max_position_embeddings`` (Meta: ``max_seq_len``, else the family's context).
        lora: a ``LoRASpec`` or None.

    Returns:
        The family's ``TransformerDecoder`` (on the current default device: build it under
        ``torch.device("meta")`` and assign the weights, as the recipes do).
    """
    mt, args = model_spec(path, model_type=model_type, max_seq_len=max_seq_len)
    try:
        return _builder(mt)(**args, lora=lora)
    except ValueError as err:  # what the family refuses (LoRA on a tied output, ...): one paragraph
        reasons = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()] or [str(err)]
        raise CheckpointError(
            f"model=auto: the {mt.display_name} model {_json_of(path)[0]} declares"
            f"{' (tie_word_embeddings=true)' if args.get('tie_word_embeddings') else ''} cannot be built as "
            f"configured: {'; '.join(r.rstrip('.') for r in reasons)}.") from None
