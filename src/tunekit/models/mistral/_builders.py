"""Mistral 7B v0.3 builders: Llama's layout with GQA, RoPE base 1e6, vocab 32768, full attention.

Sliding-window attention (Mistral v0.1) is not implemented; checkpoints declaring one are refused
when their ``config.json`` is read.
"""

from __future__ import annotations

from tunekit.models._decoder import llama_layout_decoder
from tunekit.modules import TransformerDecoder
from tunekit.modules.peft import LoRASpec


def mistral(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int | None = None,
    norm_eps: float = 1e-5,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """Builds a Mistral decoder (arguments as :func:`tunekit.models.llama3.llama3`, no RoPE scaling)."""
    return llama_layout_decoder(
        family="mistral", vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len, head_dim=head_dim, norm_eps=norm_eps, rope_base=rope_base,
        tie_word_embeddings=tie_word_embeddings, lora=lora,
    )


def mistral_7b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Mistral-7B-v0.3 shape (7.25B parameters; 32 layers, 32 heads / 8 KV heads, width 4096)."""
    return mistral(vocab_size=32_768, num_layers=32, num_heads=32, num_kv_heads=8, embed_dim=4096,
                   intermediate_dim=14_336, max_seq_len=max_seq_len, lora=lora)
