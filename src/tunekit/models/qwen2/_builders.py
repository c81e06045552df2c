"""Qwen2.5 builders: Llama's layout with a bias on q/k/v, RoPE base 1e6, RMSNorm eps 1e-6.

The 0.5B, 1.5B and 3B models tie their output projection to the token embedding.
"""

from __future__ import annotations

from tunekit.models._decoder import llama_layout_decoder
from tunekit.modules import TransformerDecoder
from tunekit.modules.peft import LoRASpec


def qwen2(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    norm_eps: float = 1e-6,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """Builds a Qwen2 / Qwen2.5 decoder (q/k/v projections with bias).

    Args:
        vocab_size, num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim: the sizes.
        max_seq_len: longest sequence (RoPE table and default KV-cache length).
        norm_eps: RMSNorm epsilon.
        rope_base: RoPE base ``theta``.
        tie_word_embeddings: output projection shares the embedding's weight.
        lora: adapters to insert, or None (a LoRA'd q/k/v keeps its bias, frozen).
    """
    return llama_layout_decoder(
        family="qwen2", vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len, norm_eps=norm_eps, rope_base=rope_base, qkv_bias=True,
        tie_word_embeddings=tie_word_embeddings, lora=lora,
    )


def _q(vocab: int, layers: int, heads: int, kv: int, dim: int, ffn: int, tied: bool, lora: LoRASpec | None,
       max_seq_len: int) -> TransformerDecoder:
    return qwen2(vocab_size=vocab, num_layers=layers, num_heads=heads, num_kv_heads=kv, embed_dim=dim,
                 intermediate_dim=ffn, tie_word_embeddings=tied, max_seq_len=max_seq_len, lora=lora)


def qwen2_5_0_5b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-0.5B shape (0.49B parameters; 24 layers, 14 heads / 2 KV heads, width 896, tied)."""
    return _q(151_936, 24, 14, 2, 896, 4864, True, lora, max_seq_len)


def qwen2_5_1_5b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-1.5B shape (1.54B parameters; 28 layers, 12 heads / 2 KV heads, width 1536, tied)."""
    return _q(151_936, 28, 12, 2, 1536, 8960, True, lora, max_seq_len)


def qwen2_5_3b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-3B shape (3.09B parameters; 36 layers, 16 heads / 2 KV heads, width 2048, tied)."""
    return _q(151_936, 36, 16, 2, 2048, 11_008, True, lora, max_seq_len)


def qwen2_5_7b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-7B shape (7.62B parameters; 28 layers, 28 heads / 4 KV heads, width 3584)."""
    return _q(152_064, 28, 28, 4, 3584, 18_944, False, lora, max_seq_len)


def qwen2_5_14b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-14B shape (14.8B parameters; 48 layers, 40 heads / 8 KV heads, width 5120)."""
    return _q(152_064, 48, 40, 8, 5120, 13_824, False, lora, max_seq_len)


def qwen2_5_32b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-32B shape (32.8B parameters; 64 layers, 40 heads / 8 KV heads, width 5120)."""
    return _q(152_064, 64, 40, 8, 5120, 27_648, False, lora, max_seq_len)


def qwen2_5_72b(lora: LoRASpec | None = None, max_seq_len: int = 32_768) -> TransformerDecoder:
    """Qwen2.5-72B shape (72.7B parameters; 80 layers, 64 heads / 8 KV heads, width 8192)."""
    return _q(152_064, 80, 64, 8, 8192, 29_568, False, lora, max_seq_len)
