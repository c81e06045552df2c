"""Model families, and the one table checkpointers use to convert their weights.

``MODEL_TYPES[model_type]`` is one :class:`ModelType` record per family; checkpointers, export
and generation look a family up there (:func:`get_model_type`) and never branch on its name.

What a new family provides - one folder and one row:

1. ``models/<family>/`` with its builders (``<family>(...)`` taking flat typed arguments and
   returning a ``TransformerDecoder``, plus the published sizes), exported from the folder's
   ``__init__``. Its private modules (``_builders.py`` ...) are imported from nowhere else.
2. One row below: ``LLAMA2.derive(name=..., display_name=..., ...)`` stating only what differs
   from Llama 2 - the HF names it renames (``hf_renames={tunekit name: hf name}``), the tensors
   it adds (``extra_weights=(Weight(...),)``: q/k/v biases, per-head q/k norms; their ``rope``
   rule says whether and in which groups of heads HF <-> tunekit permutes their rows), its
   ``hf_model_type`` / ``hf_architectures`` (written into a fresh ``config.json``), its
   defaults (``rope_theta``, ``max_position_embeddings``, ``hf_config_defaults``,
   ``tokenizer_config``, ``meta_ffn_rules``) and ``lora_targets`` if other linears may take
   LoRA (their PEFT module names follow from the table). Every conversion (HF, Meta, PEFT
   adapters and their config, config files, expected shapes) then comes from the shared
   machinery in ``models/_layout.py``. Example (a test registers exactly this)::

       TOY = register_model_type(LLAMA2.derive(
           name="TOY_LLAMA", display_name="Toy Llama", hf_model_type="toy_llama",
           hf_architectures=("ToyLlamaForCausalLM",), hf_renames={"mlp.w1.weight": "mlp.gate.weight"}))

   Outside ``models/`` import only ``tunekit.models`` and ``tunekit.models.<family>`` (a test
   checks it).

A family whose layout is not Llama's (another block structure) needs new builders and, where
its keys cannot be expressed as :class:`Weight` rows, a new record type with the same methods.
"""

from __future__ import annotations

from tunekit.models._layout import (
    LLAMA_PEFT_TARGETS,
    LLAMA_WEIGHTS,
    ConversionError,
    ModelDims,
    ModelType,
    Weight,
    permute_from_hf,
    permute_to_hf,
)
from tunekit.models._weights import hf_llama3_scaling, meta_llama3_scaling
from tunekit.models.llama3._tokenizer_config import LLAMA3_TOKENIZER_CONFIG

__all__ = [
    "LLAMA2",
    "LLAMA3",
    "MISTRAL",
    "QWEN2",
    "QWEN3",
    "LLAMA_PEFT_TARGETS",
    "LLAMA_WEIGHTS",
    "MODEL_TYPES",
    "ConversionError",
    "ModelDims",
    "ModelType",
    "Weight",
    "get_model_type",
    "hf_llama3_scaling",
    "meta_llama3_scaling",
    "permute_from_hf",
    "permute_to_hf",
    "register_model_type",
]

#: The table: ``model_type`` string -> family record.
MODEL_TYPES: dict[str, ModelType] = {}


def register_model_type(model_type: ModelType, *, replace: bool = False) -> ModelType:
    """Add a family's row to :data:`MODEL_TYPES` (also how tests add throwaway families).

    Raises:
        ValueError: ``model_type.name`` is taken and ``replace`` is False.
    """
    if model_type.name in MODEL_TYPES and not replace:
        raise ValueError(f"model_type {model_type.name!r} is already registered "
                         f"({MODEL_TYPES[model_type.name].display_name}); pass replace=True to override it.")
    MODEL_TYPES[model_type.name] = model_type
    return model_type


# ---- the rows -------------------------------------------------------------------------------
#: Llama 2 (builders: ``tunekit.models.llama2``). The layout's defaults are Llama 2's.
LLAMA2 = register_model_type(ModelType(name="LLAMA2", display_name="Llama 2"))

_LLAMA_HF = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02}

#: Llama 3.1 / 3.2 (builders: ``tunekit.models.llama3``): RoPE scaling ``llama3``, tied 3.2 1B/3B.
LLAMA3 = register_model_type(LLAMA2.derive(
    builder="tunekit.models.llama3.llama3",
    name="LLAMA3", display_name="Llama 3", rope_theta=500_000.0, max_position_embeddings=131_072,
    rope_scaling_types=("llama3",), meta_writes_vocab_size=True,
    hf_config_defaults={**_LLAMA_HF, "rope_scaling": None, "tie_word_embeddings": False, "pretraining_tp": 1,
                        "bos_token_id": 128_000, "eos_token_id": 128_001},
    tokenizer_config=LLAMA3_TOKENIZER_CONFIG,  # Meta's tiktoken tokenizer.model as transformers reads it
    # Meta's params.json rules: 3.2 1B (1.5, 256), 3.2 3B (1.0, 256), 3.1 70B (1.3, 4096), 3.1 8B (1.3, 1024)
    meta_ffn_rules=((1.5, 256), (1.0, 256), (1.3, 4096), (1.3, 1024), *((None, 2**k) for k in range(8, 2, -1))),
))

#: Mistral 7B v0.3 (builders: ``tunekit.models.mistral``): full attention only (no sliding window).
MISTRAL = register_model_type(LLAMA2.derive(
    builder="tunekit.models.mistral.mistral",
    name="MISTRAL", display_name="Mistral", hf_model_type="mistral", hf_architectures=("MistralForCausalLM",),
    rope_theta=1_000_000.0, max_position_embeddings=32_768,
    hf_config_defaults={"hidden_act": "silu", "sliding_window": None, "tie_word_embeddings": False,
                        "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2},
))

_QKV_BIAS = (
    Weight("attn.q_proj.bias", "self_attn.q_proj.bias", None, ("q",), 0, "heads"),
    Weight("attn.k_proj.bias", "self_attn.k_proj.bias", None, ("kv",), 0, "kv_heads"),
    Weight("attn.v_proj.bias", "self_attn.v_proj.bias", None, ("kv",), 0),
)
_QK_NORM = (
    Weight("attn.q_norm.scale", "self_attn.q_norm.weight", None, ("hd",), None, "head"),
    Weight("attn.k_norm.scale", "self_attn.k_norm.weight", None, ("hd",), None, "head"),
)
_QWEN_HF = {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None, "initializer_range": 0.02,
            "tie_word_embeddings": False, "bos_token_id": 151_643, "eos_token_id": 151_643}

#: Qwen2.5 (builders: ``tunekit.models.qwen2``): q/k/v biases. No Meta format.
QWEN2 = register_model_type(LLAMA2.derive(
    builder="tunekit.models.qwen2.qwen2",
    name="QWEN2", display_name="Qwen2.5", hf_model_type="qwen2", hf_architectures=("Qwen2ForCausalLM",),
    extra_weights=_QKV_BIAS, qkv_bias=True, rope_theta=1_000_000.0, max_position_embeddings=32_768,
    hf_config_defaults=_QWEN_HF,
))

#: Qwen3 dense (builders: ``tunekit.models.qwen3``): per-head q/k RMSNorm, explicit head_dim. No Meta format.
QWEN3 = register_model_type(LLAMA2.derive(
    builder="tunekit.models.qwen3.qwen3",
    name="QWEN3", display_name="Qwen3", hf_model_type="qwen3", hf_architectures=("Qwen3ForCausalLM",),
    extra_weights=_QK_NORM, explicit_head_dim=True, rope_theta=1_000_000.0, max_position_embeddings=40_960,
    hf_config_defaults={**_QWEN_HF, "attention_bias": False},
))


def get_model_type(model_type: str) -> ModelType:
    """Look up ``model_type`` in :data:`MODEL_TYPES`.

    Raises:
        ValueError: naming the bad value and listing the valid ones.
    """
    try:
        return MODEL_TYPES[model_type]
    except (KeyError, TypeError):
        norm = str(model_type).upper().replace("-", "").replace("_", "")
        close = [k for k in MODEL_TYPES if norm == k.replace("_", "")]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"Unknown model_type {model_type!r}{hint}; valid model types: {', '.join(sorted(MODEL_TYPES))}."
        ) from None
