"""Model families and the table checkpointers use to convert their weights.

``MODEL_TYPES[model_type]`` gives one :class:`ModelType` record of conversion functions; a
checkpointer never branches on the model family itself. A new family adds a row here and a
``_convert.py`` beside its builders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunekit.models.llama2 import _convert as _llama2

__all__ = ["MODEL_TYPES", "ModelType", "get_model_type"]

StateDict = dict[str, Any]


@dataclass(frozen=True)
class ModelType:
    """Conversion functions for one model family (all work on any subset of keys: one shard).

    Attributes:
        name: the ``model_type`` string used in configs.
        hf_to_tunekit / tunekit_to_hf: ``(sd, num_heads, num_kv_heads, dim) -> sd``.
        meta_to_tunekit / tunekit_to_meta: ``(sd) -> sd``.
        adapter_to_peft / peft_to_adapter: ``(sd, num_heads, num_kv_heads, dim) -> sd``.
        peft_config: ``(adapter_config, base_model_name_or_path) -> adapter_config.json dict``.
        hf_config_dims / meta_params_dims: ``config.json`` / ``params.json`` dict -> dims.
        expected_shapes: ``dims -> {tunekit key: shape}`` for the plain model.
        meta_merge_dim: ``Meta key -> dim`` of model-parallel splits (None: replicated).
        hf_config / meta_params: dims (+ norm_eps, rope_theta, ...) -> ``config.json`` /
            ``params.json`` dict, for cross-format export; hf_tokenizer_config likewise.
        rope_theta_of: an HF ``config.json`` dict -> its RoPE base.
        peft_target_names: tunekit LoRA target -> PEFT module name.
    """

    name: str
    hf_to_tunekit: Callable[..., StateDict]
    tunekit_to_hf: Callable[..., StateDict]
    meta_to_tunekit: Callable[[Mapping[str, Any]], StateDict]
    tunekit_to_meta: Callable[[Mapping[str, Any]], StateDict]
    adapter_to_peft: Callable[..., StateDict]
    peft_to_adapter: Callable[..., StateDict]
    peft_config: Callable[..., dict[str, Any]]
    hf_config_dims: Callable[[Mapping[str, Any]], Any]
    meta_params_dims: Callable[[Mapping[str, Any]], Any]
    expected_shapes: Callable[[Any], dict[str, tuple[int | None, ...]]]
    meta_merge_dim: Callable[[str], int | None]
    hf_config: Callable[..., dict[str, Any]]
    meta_params: Callable[..., dict[str, Any]]
    hf_tokenizer_config: Callable[[int], dict[str, Any]]
    rope_theta_of: Callable[[Mapping[str, Any]], float]
    peft_target_names: Mapping[str, str] = field(default_factory=dict)


MODEL_TYPES: dict[str, ModelType] = {
    "LLAMA2": ModelType(
        name="LLAMA2",
        hf_to_tunekit=_llama2.hf_to_tunekit,
        tunekit_to_hf=_llama2.tunekit_to_hf,
        meta_to_tunekit=_llama2.meta_to_tunekit,
        tunekit_to_meta=_llama2.tunekit_to_meta,
        adapter_to_peft=_llama2.adapter_to_peft,
        peft_to_adapter=_llama2.peft_to_adapter,
        peft_config=_llama2.peft_config,
        hf_config_dims=_llama2.hf_config_dims,
        meta_params_dims=_llama2.meta_params_dims,
        expected_shapes=_llama2.expected_shapes,
        meta_merge_dim=_llama2.meta_merge_dim,
        hf_config=_llama2.hf_config,
        meta_params=_llama2.meta_params,
        hf_tokenizer_config=_llama2.hf_tokenizer_config,
        rope_theta_of=_llama2.rope_theta_of,
        peft_target_names=_llama2.PEFT_TARGET_NAMES,
    ),
}


def get_model_type(model_type: str) -> ModelType:
    """Look up ``model_type`` in :data:`MODEL_TYPES`.

    Raises:
        ValueError: naming the bad value and listing the valid ones.
    """
    try:
        return MODEL_TYPES[model_type]
    except (KeyError, TypeError):
        close = [k for k in MODEL_TYPES if str(model_type).upper().replace("-", "").replace("_", "") == k]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown model_type {model_type!r}{hint}; valid model types: {', '.join(sorted(MODEL_TYPES))}."
        ) from None
