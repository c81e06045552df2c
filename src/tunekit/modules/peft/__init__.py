"""Parameter-efficient fine-tuning: LoRA/DoRA layers, QLoRA's NF4 base (:func:`quantize_base_`),
the one merge function (:func:`merged_weight`), the one adapter-key predicate
(:func:`is_adapter_key`) and whole-model adapter helpers."""

from tunekit.modules.peft._nf4 import (
    NF4_CODE,
    QUANTIZE_ATTR,
    QUANTIZE_BASE_CHOICES,
    NF4Linear,
    QuantizationUnavailableError,
    dequantize,
    is_nf4,
    nf4_linear,
    quantize_nf4,
    quiet_torchao_import,
)
from tunekit.modules.peft._utils import (
    disable_adapters,
    get_adapter_state_dict,
    get_merged_state_dict,
    is_adapter_key,
    merge_lora_weights_,
    merged_weight,
    quantize_base_,
    quantized_base_names,
    reset_all_parameters,
    set_trainable_params,
)
from tunekit.modules.peft.lora import LORA_TARGETS, MERGE_BASE_CHOICES, LoRALinear, LoRASpec

__all__ = [
    "LORA_TARGETS",
    "MERGE_BASE_CHOICES",
    "NF4_CODE",
    "QUANTIZE_ATTR",
    "QUANTIZE_BASE_CHOICES",
    "NF4Linear",
    "QuantizationUnavailableError",
    "dequantize",
    "is_nf4",
    "nf4_linear",
    "quantize_base_",
    "quantize_nf4",
    "quantized_base_names",
    "quiet_torchao_import",
    "LoRALinear",
    "LoRASpec",
    "disable_adapters",
    "get_adapter_state_dict",
    "get_merged_state_dict",
    "is_adapter_key",
    "merge_lora_weights_",
    "merged_weight",
    "reset_all_parameters",
    "set_trainable_params",
]
