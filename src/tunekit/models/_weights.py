"""The pieces of the weight layout: model dimensions, one weight's row of the table, RoPE row order.

See ``_layout.py`` for the record that reads them (the conventions are stated there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

__all__ = ["LLAMA_PEFT_TARGETS", "LLAMA_WEIGHTS", "ConversionError", "ModelDims", "Weight", "permute_from_hf",
           "permute_to_hf"]

class ConversionError(KeyError):
    """A state-dict key that the conversion table does not know, or a key that is missing."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelDims:
    """The sizes a checkpoint's config declares (None where the config does not say)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    vocab_size: int | None = None
    intermediate_dim: int | None = None
    #: an explicit per-head width (Qwen3's ``head_dim``); None: ``embed_dim // num_heads``
    declared_head_dim: int | None = None
    #: the output projection is the embedding (no ``output.weight`` / ``lm_head.weight``)
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.declared_head_dim or self.embed_dim // self.num_heads


@dataclass(frozen=True)
class Weight:
    """One tensor of a layout under its three names.

    Attributes:
        tunekit: tunekit name (after ``layers.{i}.`` when ``per_layer``).
        hf: HF name (after ``model.layers.{i}.`` when ``per_layer``).
        meta: Meta name (after ``layers.{i}.`` when ``per_layer``); None: no Meta format.
        shape: symbolic shape, one symbol per dim: ``v`` vocab, ``e`` embed dim, ``f`` FFN
            width, ``q`` heads x head dim, ``kv`` kv-heads x head dim, ``hd`` head dim.
        split: the dim Meta's model-parallel shards split this tensor along (None: replicated).
        rope: ``"heads"`` / ``"kv_heads"`` / ``"head"``: rows stored in RoPE order, permuted
            between HF and tunekit in groups of that many heads (None: never permuted).
        per_layer: one tensor per decoder layer (else one per model).
    """

    tunekit: str
    hf: str
    meta: str | None
    shape: tuple[str, ...]
    split: int | None = None
    rope: str | None = None
    per_layer: bool = True


#: Llama 2's tensors; later Llama-layout families start from this table.
LLAMA_WEIGHTS: tuple[Weight, ...] = (
    Weight("attn.q_proj.weight", "self_attn.q_proj.weight", "attention.wq.weight", ("q", "e"), 0, "heads"),
    Weight("attn.k_proj.weight", "self_attn.k_proj.weight", "attention.wk.weight", ("kv", "e"), 0, "kv_heads"),
    Weight("attn.v_proj.weight", "self_attn.v_proj.weight", "attention.wv.weight", ("kv", "e"), 0),
    Weight("attn.output_proj.weight", "self_attn.o_proj.weight", "attention.wo.weight", ("e", "q"), 1),
    Weight("sa_norm.scale", "input_layernorm.weight", "attention_norm.weight", ("e",)),
    Weight("mlp_norm.scale", "post_attention_layernorm.weight", "ffn_norm.weight", ("e",)),
    Weight("mlp.w1.weight", "mlp.gate_proj.weight", "feed_forward.w1.weight", ("f", "e"), 0),
    Weight("mlp.w2.weight", "mlp.down_proj.weight", "feed_forward.w2.weight", ("e", "f"), 1),
    Weight("mlp.w3.weight", "mlp.up_proj.weight", "feed_forward.w3.weight", ("f", "e"), 0),
    Weight("tok_embeddings.weight", "model.embed_tokens.weight", "tok_embeddings.weight", ("v", "e"), 1,
           per_layer=False),
    Weight("norm.scale", "model.norm.weight", "norm.weight", ("e",), per_layer=False),
    Weight("output.weight", "lm_head.weight", "output.weight", ("v", "e"), 0, per_layer=False),
)

#: LoRA target names, tunekit -> PEFT/HF module names (docs/architecture.md): what
#: ``ModelType.peft_target_names`` derives from :data:`LLAMA_WEIGHTS`.
LLAMA_PEFT_TARGETS: Mapping[str, str] = MappingProxyType({
    "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head",
})  # fmt: skip

# config.json fields a fresh Llama 2 config gets after the sizes, RoPE base and norm eps.
_LLAMA2_HF_CONFIG: Mapping[str, Any] = MappingProxyType({
    "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
    "mlp_bias": False, "initializer_range": 0.02, "pretraining_tp": 1, "bos_token_id": 1, "eos_token_id": 2,
})  # fmt: skip

# tokenizer_config.json for Llama 2's SentencePiece tokenizer.model (BOS, no EOS).
_LLAMA2_TOKENIZER_CONFIG: Mapping[str, Any] = MappingProxyType({
    "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "add_bos_token": True, "add_eos_token": False, "legacy": True,
})  # fmt: skip

# (ffn_dim_multiplier, multiple_of) pairs tried in order: Meta's for Llama 2 7B/13B and 70B,
# then smaller powers of two (small models), before the exact fallback.
_LLAMA2_FFN_RULES: tuple[tuple[float | None, int], ...] = ((None, 256), (1.3, 4096),
                                                           *((None, 2**k) for k in range(7, 2, -1)))


def hf_llama3_scaling(scaling: Mapping[str, Any]) -> dict[str, Any]:
    """HF's ``rope_scaling`` of type ``llama3`` for ``{factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}``."""
    return {"rope_type": "llama3", "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"])}


def meta_llama3_scaling(scaling: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params.json`` fields for a ``llama3`` RoPE scaling, as Meta writes them.

    ``use_scaled_rope: true`` (Llama 3.1's files); a factor / high-frequency factor other than the
    8 / 4 Meta's reference code applies goes into ``rope_scaling_factor`` / ``rope_high_freq_factor``
    (fields of Meta's ``ModelArgs``). Meta's code fixes the other two (1 and 8192).

    Raises:
        ConversionError: a low-frequency factor or original context Meta's code cannot run.
    """
    fixed = {"low_freq_factor": 1.0, "original_max_position_embeddings": 8192}
    odd = [f"{k}={scaling[k]!r}" for k, v in fixed.items() if float(scaling[k]) != v]
    if odd:
        raise ConversionError(f"RoPE scaling with {', '.join(odd)} cannot be written to a Meta params.json: "
                              f"Meta's code fixes low_freq_factor=1 and original_max_position_embeddings=8192")
    out: dict[str, Any] = {"use_scaled_rope": True}
    if float(scaling["factor"]) != 8.0:
        out["rope_scaling_factor"] = float(scaling["factor"])
    if float(scaling["high_freq_factor"]) != 4.0:
        out["rope_high_freq_factor"] = float(scaling["high_freq_factor"])
    return out


_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_ADAPTER_RE = re.compile(r"^(.*)\.lora_(?:([ab])\.weight|(magnitude))$")
_PEFT_RE = re.compile(r"^base_model\.model\.(.*)\.lora_(?:([AB])\.weight|(magnitude)_vector\.weight)$")


# --- RoPE permutation ----------------------------------------------------------------------
def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of an HF q/k weight (rotate-half RoPE) for interleaved RoPE.

    Args:
        w: ``[n_heads * head_dim, d]`` (a q/k weight, or the LoRA B of one).
        n_heads: heads for q, kv-heads for k.
    """
    rows, dim = w.shape
    hd = rows // n_heads
    return w.view(n_heads, 2, hd // 2, dim).transpose(1, 2).reshape(rows, dim)


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`permute_from_hf` (interleaved -> rotate-half row order)."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def _permute_rows(w: torch.Tensor, n_heads: int, permute: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    # 1-D tensors (biases, per-head norms, DoRA magnitudes) get the order of the rows they scale.
    if w.dim() == 1:
        return permute(w.unsqueeze(1), n_heads).squeeze(1)
    return permute(w, n_heads)


def _check_rows(key: str, w: torch.Tensor, n_heads: int) -> None:
    if w.dim() not in (1, 2) or w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise ConversionError(
            f"Key {key!r} has shape {tuple(w.shape)}, which cannot be split into {n_heads} heads of "
            f"an even head dim; check num_attention_heads / num_key_value_heads in the config."
        )


