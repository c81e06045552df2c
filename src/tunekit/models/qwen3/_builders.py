"""Qwen3 (dense) builders: per-head RMSNorm on q and k before RoPE, head_dim 128 set explicitly
(``num_heads * head_dim`` need not equal the width), no biases, RoPE base 1e6, eps 1e-6.

The 0.6B, 1.7B and 4B models tie their output projection to the token embedding.
"""

from __future__ import annotations

from tunekit.models._decoder import llama_layout_decoder
from tunekit.modules import TransformerDecoder
from tunekit.modules.peft import LoRASpec


def qwen3(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int = 128,
    norm_eps: float = 1e-6,
    rope_base: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """Builds a Qwen3 decoder.

    Args:
        vocab_size, num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim: the sizes.
        max_seq_len: longest sequence (RoPE table and default KV-cache length).
        head_dim: per-head width (q has ``num_heads * head_dim`` rows).
        norm_eps: epsilon of every RMSNorm, the q/k norms included.
        rope_base: RoPE base ``theta``.
        tie_word_embeddings: output projection shares the embedding's weight.
        lora: adapters to insert, or None.
    """
    return llama_layout_decoder(
        family="qwen3", vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len, head_dim=head_dim, norm_eps=norm_eps, rope_base=rope_base, qk_norm=True,
        tie_word_embeddings=tie_word_embeddings, lora=lora,
    )


def _q(layers: int, heads: int, kv: int, dim: int, ffn: int, tied: bool, lora: LoRASpec | None,
       max_seq_len: int) -> TransformerDecoder:
    return qwen3(vocab_size=151_936, num_layers=layers, num_heads=heads, num_kv_heads=kv, embed_dim=dim,
                 intermediate_dim=ffn, tie_word_embeddings=tied, max_seq_len=max_seq_len, lora=lora)


def qwen3_0_6b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-0.6B shape (0.60B parameters; 28 layers, 16 heads / 8 KV heads, width 1024, tied)."""
    return _q(28, 16, 8, 1024, 3072, True, lora, max_seq_len)


def qwen3_1_7b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-1.7B shape (1.72B parameters; 28 layers, 16 heads / 8 KV heads, width 2048, tied)."""
    return _q(28, 16, 8, 2048, 6144, True, lora, max_seq_len)


def qwen3_4b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-4B shape (4.02B parameters; 36 layers, 32 heads / 8 KV heads, width 2560, tied)."""
    return _q(36, 32, 8, 2560, 9728, True, lora, max_seq_len)


def qwen3_8b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-8B shape (8.19B parameters; 36 layers, 32 heads / 8 KV heads, width 4096)."""
    return _q(36, 32, 8, 4096, 12_288, False, lora, max_seq_len)


def qwen3_14b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-14B shape (14.8B parameters; 40 layers, 40 heads / 8 KV heads, width 5120)."""
    return _q(40, 40, 8, 5120, 17_408, False, lora, max_seq_len)


def qwen3_32b(lora: LoRASpec | None = None, max_seq_len: int = 40_960) -> TransformerDecoder:
    """Qwen3-32B shape (32.8B parameters; 64 layers, 64 heads / 8 KV heads, width 5120)."""
    return _q(64, 64, 8, 5120, 25_600, False, lora, max_seq_len)
