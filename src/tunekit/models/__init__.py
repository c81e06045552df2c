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

__all__ = [
    "LLAMA2",
    "LLAMA_PEFT_TARGETS",
    "LLAMA_WEIGHTS",
    "MODEL_TYPES",
    "ConversionError",
    "ModelDims",
    "ModelType",
    "Weight",
    "get_model_type",
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
