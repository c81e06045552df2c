"""Parameter-efficient fine-tuning: LoRA/DoRA layers, the one merge function (:func:`merged_weight`),
the one adapter-key predicate (:func:`is_adapter_key`) and whole-model adapter helpers."""

from tunekit.modules.peft._utils import (
    disable_adapters,
    get_adapter_state_dict,
    get_merged_state_dict,
    is_adapter_key,
    merge_lora_weights_,
    merged_weight,
    reset_all_parameters,
    set_trainable_params,
)
from tunekit.modules.peft.lora import LORA_TARGETS, LoRALinear, LoRASpec

__all__ = [
    "LORA_TARGETS",
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
