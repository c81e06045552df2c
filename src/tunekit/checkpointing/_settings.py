"""What a checkpoint's ``config.json`` / ``params.json`` declares, checked against the model code.

Two checks, both before any weight is read:

- :func:`check_supported_hf_config` / :func:`check_supported_meta_params` refuse declared fields
  that change the math and that the model family does not implement (another ``model_type``,
  another activation, biases, RoPE scaling types, sliding-window attention, mixture of experts,
  ...). Without them a Gemma or Mistral ``config.json`` would train silently as Llama 2.
- :func:`check_model_matches` compares the model the config group built with what the JSON
  declares (layers, heads, widths, vocabulary, RoPE base, norm eps, RoPE scaling, tied
  embeddings), naming the file, the field, both values and the fix.

A checkpointer's ``model_settings`` (``hf_model_settings`` / ``meta_model_settings``) carries
what :func:`check_model_matches` needs: the JSON path and, per quantity, the field and value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunekit.checkpointing._errors import CheckpointError

__all__ = ["check_model_matches", "check_supported_hf_config", "check_supported_meta_params"]

# Per model family: the HF model_type values whose math the family's code implements, and the
# RoPE scaling types it implements. A family record may override these (``hf_model_types``,
# ``rope_scaling_types`` attributes of its ModelType); Llama 2's code implements plain RoPE only.
_HF_MODEL_TYPES = {"LLAMA2": ("llama",)}
_MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "n_shared_experts",
               "num_experts_per_tok", "moe_intermediate_size", "moe_layer_freq")
_SOFTCAP_FIELDS = ("attn_logit_softcapping", "final_logit_softcapping")
_FIX_HF = ("Use a model family that implements it (model= and checkpointer.model_type=; --model-type "
           "for tunekit convert), or point checkpointer.checkpoint_dir at a Llama checkpoint.")


def _family(mt: Any) -> str:
    return str(getattr(mt, "name", mt))


def _supported_model_types(mt: Any) -> tuple[str, ...]:
    explicit = getattr(mt, "hf_model_types", None)
    if explicit:
        return tuple(explicit)
    own = getattr(mt, "hf_model_type", None)  # the family record's own config.json model_type
    if own:
        return (str(own),)
    return _HF_MODEL_TYPES.get(_family(mt), ("llama",))


def _supported_scaling(mt: Any) -> tuple[str, ...]:
    return tuple(getattr(mt, "rope_scaling_types", None) or ())


def _rope_scaling_dict(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for key in ("rope_scaling", "rope_parameters"):  # older and transformers-5 spellings
        rope = config.get(key)
        if isinstance(rope, Mapping) and rope.get("rope_type", rope.get("type")) not in ("default", None):
            return rope
    return None


_LLAMA3_SCALING_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def describe_rope_scaling(config: Mapping[str, Any]) -> str | None:
    """The declared RoPE scaling as the model code names it (``llama3(factor=8, ...)``), None for plain
    RoPE; types without parameters that tunekit reads are named by their type alone."""
    rope = _rope_scaling_dict(config)
    if rope is None:
        return None
    kind = str(rope.get("rope_type", rope.get("type")))
    if kind == "llama3" and all(isinstance(rope.get(k), (int, float)) for k in _LLAMA3_SCALING_FIELDS):
        from tunekit.modules import describe_llama3_scaling

        return describe_llama3_scaling(*(rope[k] for k in _LLAMA3_SCALING_FIELDS))
    return kind


def rope_scaling_type(config: Mapping[str, Any]) -> str | None:
    """The RoPE scaling type an HF config declares (None for plain RoPE)."""
    kind = None
    for key in ("rope_scaling", "rope_parameters"):  # older and transformers-5 spellings
        rope = config.get(key)
        if isinstance(rope, Mapping) and rope.get("rope_type", rope.get("type")) not in ("default", None):
            kind = str(rope.get("rope_type", rope.get("type")))
    return kind


def check_supported_hf_config(config: Mapping[str, Any], path: str | Path, mt: Any) -> None:
    """Refuse ``config.json`` fields that change the math and that ``mt``'s model code lacks.

    Raises:
        CheckpointError: naming the file, every such field with its value, and what is supported.
    """
    problems = hf_config_problems(config, mt)
    if problems:
        raise CheckpointError(
            f"{path} declares {'; '.join(problems)}, which tunekit's {_family(mt)} model code does not "
            f"implement: the weights would run as a different model without any error. {_FIX_HF}"
        )


def hf_config_problems(config: Mapping[str, Any], mt: Any) -> list[str]:
    """Each ``config.json`` field (with its value and what is supported) that ``mt``'s code lacks."""
    family = _family(mt)
    problems: list[str] = []
    kinds = _supported_model_types(mt)
    model_type = config.get("model_type")
    if model_type is not None and model_type not in kinds:
        problems.append(f"model_type={model_type!r} (checkpointer.model_type={family} implements "
                        f"{', '.join(repr(k) for k in kinds)})")
    for key in ("hidden_act", "hidden_activation"):
        act = config.get(key)
        if act is not None and act != "silu":
            problems.append(f"{key}={act!r} (supported: 'silu')")
    if config.get("attention_bias") and not getattr(mt, "qkv_bias", False):
        problems.append("attention_bias=true (supported: false, the projections have no bias)")
    if config.get("mlp_bias"):
        problems.append("mlp_bias=true (supported: false, the MLP projections have no bias)")
    kind = rope_scaling_type(config)
    if kind is not None and kind not in _supported_scaling(mt):
        supported = _supported_scaling(mt)
        problems.append(f"rope_scaling type {kind!r} (supported: "
                        f"{', '.join(repr(k) for k in supported) if supported else 'none, plain RoPE only'})")
    elif kind == "llama3":
        rope = _rope_scaling_dict(config) or {}
        bad = [k for k in _LLAMA3_SCALING_FIELDS if not isinstance(rope.get(k), (int, float))
               or isinstance(rope.get(k), bool)]
        if bad:
            problems.append(f"rope_scaling of type 'llama3' without numeric {', '.join(bad)} (the llama3 "
                            f"scaling needs {', '.join(_LLAMA3_SCALING_FIELDS)})")
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and any(t != "full_attention" for t in layer_types):
        other = sorted({str(t) for t in layer_types if t != "full_attention"})
        problems.append(f"layer_types with {', '.join(repr(t) for t in other)} layers (supported: "
                        f"'full_attention' only)")
    window = config.get("sliding_window")
    if window is not None and config.get("use_sliding_window", True) is not False:
        n_pos = config.get("max_position_embeddings")
        if not (isinstance(n_pos, int) and isinstance(window, int) and window >= n_pos):
            problems.append(f"sliding_window={window!r} (supported: null; attention here is over the "
                            f"whole context)")
    heads, hidden, head_dim = config.get("num_attention_heads"), config.get("hidden_size"), config.get("head_dim")
    if head_dim is not None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0:
        if head_dim * heads != hidden and not getattr(mt, "explicit_head_dim", False):
            problems.append(f"head_dim={head_dim!r} (supported: hidden_size / num_attention_heads = "
                            f"{hidden}/{heads} = {hidden / heads:g})")
    for key in _MOE_FIELDS:
        if config.get(key):
            problems.append(f"{key}={config[key]!r} (mixture of experts; supported: a dense MLP)")
    for key in _SOFTCAP_FIELDS:
        if config.get(key) is not None:
            problems.append(f"{key}={config[key]!r} (supported: null)")
    factor = config.get("partial_rotary_factor")
    if factor is not None and float(factor) != 1.0:
        problems.append(f"partial_rotary_factor={factor!r} (supported: 1.0)")
    return problems


def check_supported_meta_params(params: Mapping[str, Any], path: str | Path, mt: Any) -> None:
    """The same for a Meta ``params.json`` (Llama 3.1's ``use_scaled_rope``, MoE fields, ...)."""
    family = _family(mt)
    problems: list[str] = []
    if params.get("use_scaled_rope") and "llama3" not in _supported_scaling(mt):
        problems.append(f"use_scaled_rope={params['use_scaled_rope']!r} (Llama 3.1 RoPE scaling; "
                        f"supported: false)")
    for key in ("moe_args", "moe", *_MOE_FIELDS):
        if params.get(key):
            problems.append(f"{key}={params[key]!r} (mixture of experts; supported: a dense MLP)")
    for key in ("qk_norm", "attention_bias", "mlp_bias"):
        if params.get(key):
            problems.append(f"{key}={params[key]!r} (supported: false)")
    if problems:
        raise CheckpointError(
            f"{path} declares {'; '.join(problems)}, which tunekit's {family} model code does not "
            f"implement: the weights would run as a different model without any error. Point "
            f"checkpointer.checkpoint_dir at a checkpoint of this model family, or use a model "
            f"family that implements it."
        )


# --- the built model against the declared settings ------------------------------------------
# quantity -> (the builder argument that sets it, how to say it)
_MODEL_ARGS = {
    "num_layers": ("num_layers", "layers"),
    "num_heads": ("num_heads", "attention heads"),
    "num_kv_heads": ("num_kv_heads", "key/value heads"),
    "embed_dim": ("embed_dim", "embedding width"),
    "intermediate_dim": ("intermediate_dim", "MLP width"),
    "vocab_size": ("vocab_size", "vocabulary entries"),
    "rope_base": ("rope_base", "RoPE base"),
    "norm_eps": ("norm_eps", "RMSNorm epsilon"),
    "rope_scaling": ("rope_scaling", "RoPE scaling"),
    "head_dim": ("head_dim", "head width"),
    "tie_word_embeddings": ("tie_word_embeddings", "tied input/output embeddings"),
}


def _built(model: Any) -> dict[str, Any]:
    """What the built (possibly meta-device) model has, for each quantity it exposes."""
    from tunekit.modules import RMSNorm, RotaryPositionalEmbeddings

    out: dict[str, Any] = {}
    layers = getattr(model, "layers", None)
    if layers is not None:
        out["num_layers"] = len(layers)
        first = layers[0] if len(layers) else None
        attn = getattr(first, "attn", None)
        for k in ("num_heads", "num_kv_heads", "embed_dim", "head_dim"):
            if attn is not None and getattr(attn, k, None) is not None:
                out[k] = int(getattr(attn, k))
        w1 = getattr(getattr(first, "mlp", None), "w1", None)
        weight = getattr(w1, "weight", None)
        if weight is not None:
            out["intermediate_dim"] = int(weight.shape[0])
    emb = getattr(model, "tok_embeddings", None)
    if getattr(emb, "weight", None) is not None:
        out["vocab_size"] = int(emb.weight.shape[0])
        if "embed_dim" not in out:
            out["embed_dim"] = int(emb.weight.shape[1])
    ropes = [m for m in model.modules() if isinstance(m, RotaryPositionalEmbeddings)]
    if ropes:
        out["rope_base"] = sorted({float(m.base) for m in ropes})
        scal = {getattr(m, "scaling_type", None) or getattr(getattr(m, "scaling", None), "rope_type", None)
                for m in ropes}
        out["rope_scaling"] = sorted(str(x) for x in scal if x)[0] if any(scal) else None
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    if norms:
        out["norm_eps"] = sorted({float(m.eps) for m in norms})
    output = getattr(model, "output", None)
    if output is not None and emb is not None and getattr(output, "weight", None) is not None:
        out["tie_word_embeddings"] = output.weight is emb.weight
    return out


def _same(quantity: str, declared: Any, built: Any) -> bool:
    if quantity in ("rope_base", "norm_eps"):
        vals = built if isinstance(built, list) else [built]
        tol = 1e-9 if quantity == "rope_base" else 1e-6
        return all(math.isclose(float(v), float(declared), rel_tol=tol) for v in vals)
    if quantity == "tie_word_embeddings":
        return bool(declared) == bool(built)
    if quantity == "rope_scaling" and isinstance(declared, str) and "(" not in declared and built:
        return str(built).partition("(")[0] == declared  # Meta's use_scaled_rope names the type only
    if quantity == "rope_scaling" and declared is None and not built:
        return True
    return declared == built


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(repr(v) for v in value) if len(value) != 1 else repr(value[0])
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def check_model_matches(model: Any, settings: Mapping[str, Any] | None, source: str) -> None:
    """Refuse a built model that differs from what its checkpoint's JSON declares.

    Run it on the model built on the meta device, before any weight is read: the message then
    names the JSON file and field (``num_hidden_layers`` / ``n_layers``, ...) rather than a list
    of mismatched tensors.

    Args:
        model: the built model (``TransformerDecoder``: ``layers``, ``tok_embeddings``, ...).
        settings: a checkpointer's ``model_settings``: ``{"path": json file, "declared":
            {quantity: (field, value)}}`` (older settings with only ``norm_eps`` / ``rope_base``
            / ``rope_scaling`` are checked as far as they go). None or empty checks nothing.
        source: the checkpoint, named when ``settings`` has no path.

    Raises:
        CheckpointError: naming the file, each mismatched field, its value, what the model
            builds, and the fix (the matching ``model=`` option or ``model.<arg>=`` overrides).
    """
    if not settings:
        return
    path = settings.get("path") or source
    declared: dict[str, tuple[str, Any]] = dict(settings.get("declared") or {})
    for q, field in (("norm_eps", "norm_eps"), ("rope_base", "rope_theta"), ("rope_scaling", "rope_scaling")):
        if q not in declared and q in settings:
            declared[q] = (field, settings[q])
    built = _built(model)
    problems, overrides = [], []
    for quantity, (field, value) in declared.items():
        if value is None and quantity != "rope_scaling" or quantity not in built:
            continue
        have = built[quantity]
        if _same(quantity, value, have):
            continue
        arg, what = _MODEL_ARGS.get(quantity, (quantity, quantity))
        problems.append(f"{field}={_show(value)} where the chosen model builds {what}={_show(have)}")
        if quantity == "rope_scaling" and have and isinstance(value, str) and value.startswith("llama3("):
            # the llama3 builders' arguments: rope_scaling_factor, rope_low_freq_factor, ...
            for name, num in re.findall(r"(\w+)=([\d.e+-]+)", value):
                arg_name = "rope_scaling_factor" if name == "factor" else f"rope_{name}"
                overrides.append(f"model.{arg_name}={num}")
            continue
        if quantity in ("rope_scaling", "tie_word_embeddings"):
            continue  # not a builder argument of every family: only the right model= fixes it
        overrides.append(f"model.{arg}={value!r}")
    if not problems:
        return
    fix = "Pick the model= option built for this checkpoint"
    if overrides:
        builder = settings.get("builder") or "tunekit.models.llama2.llama2"
        fix += (f", or override {' '.join(overrides)} (the fixed-size builders such as llama2_7b or qwen2_5_7b take "
                f"no size arguments: use model._component_={builder} with every size)")
    raise CheckpointError(
        f"{path} declares {'; '.join(problems)}. The weights cannot be loaded into this model, or would "
        f"run with settings they were not trained with. {fix}; or point the checkpointer at the "
        f"weights this model is for."
    )
