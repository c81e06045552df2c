"""Deprecated import path: Llama 2's conversion is the ``LLAMA2`` row of ``tunekit.models``.

The key tables and conversions moved to ``tunekit.models._layout`` (shared by every
Llama-layout family); use ``tunekit.models.get_model_type("LLAMA2").<method>`` and
``tunekit.models.ConversionError`` / ``ModelDims`` / ``permute_from_hf`` / ``permute_to_hf``.
These module-level aliases only keep older importers (tests and scripts outside ``models/``)
working until they switch; nothing in ``src/`` imports this module.
"""

from __future__ import annotations

from tunekit.models import LLAMA2 as _LLAMA2
from tunekit.models._layout import ConversionError, ModelDims, permute_from_hf, permute_to_hf

__all__ = [
    "ConversionError", "Llama2Dims", "MERGE_DIMS", "PEFT_TARGET_NAMES", "adapter_to_peft", "expected_shapes",
    "hf_config", "hf_config_dims", "hf_tokenizer_config", "hf_to_tunekit", "hf_to_tunekit_key", "meta_merge_dim",
    "meta_params", "meta_params_dims", "meta_to_tunekit", "peft_config", "peft_to_adapter", "permute_from_hf",
    "permute_to_hf", "rope_theta_of", "tunekit_to_hf", "tunekit_to_hf_key", "tunekit_to_meta",
]  # fmt: skip

Llama2Dims = ModelDims
PEFT_TARGET_NAMES = dict(_LLAMA2.peft_target_names)
MERGE_DIMS = {w.meta: w.split for w in _LLAMA2.weights if w.meta is not None}

hf_to_tunekit = _LLAMA2.hf_to_tunekit
tunekit_to_hf = _LLAMA2.tunekit_to_hf
meta_to_tunekit = _LLAMA2.meta_to_tunekit
tunekit_to_meta = _LLAMA2.tunekit_to_meta
adapter_to_peft = _LLAMA2.adapter_to_peft
peft_to_adapter = _LLAMA2.peft_to_adapter
peft_config = _LLAMA2.peft_config
hf_config_dims = _LLAMA2.hf_config_dims
meta_params_dims = _LLAMA2.meta_params_dims
expected_shapes = _LLAMA2.expected_shapes
meta_merge_dim = _LLAMA2.meta_merge_dim
hf_config = _LLAMA2.hf_config
meta_params = _LLAMA2.meta_params
hf_tokenizer_config = _LLAMA2.hf_tokenizer_config
rope_theta_of = _LLAMA2.rope_theta_of
tunekit_to_hf_key = _LLAMA2.tunekit_to_hf_key
hf_to_tunekit_key = _LLAMA2.hf_to_tunekit_key
