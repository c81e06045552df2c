"""Llama 3.1 / 3.2 builders: GQA, RoPE base 500000 with ``llama3`` frequency scaling, vocab 128256.

The 3.2 1B and 3B models tie their output projection to the token embedding.
"""

from __future__ import annotations

from tunekit.models._decoder import llama_layout_decoder
from tunekit.modules import Llama3RopeScaling, TransformerDecoder
from tunekit.modules.peft import LoRASpec

# Llama 3.1's published rope_scaling; 3.2 (1B, 3B) uses factor 32.
_SCALING_3_1 = Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192)
_SCALING_3_2 = Llama3RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192)


def llama3(
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
    rope_base: float = 500_000.0,
    rope_scaling_factor: float | None = 8.0,
    rope_low_freq_factor: float = 1.0,
    rope_high_freq_factor: float = 4.0,
    rope_original_max_position_embeddings: int = 8192,
    tie_word_embeddings: bool = False,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """Builds a Llama 3.x decoder.

    Args:
        vocab_size, num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim: the sizes.
        max_seq_len: longest sequence (RoPE table and default KV-cache length).
        head_dim: per-head width (None: ``embed_dim // num_heads``).
        norm_eps: RMSNorm epsilon.
        rope_base: RoPE base ``theta``.
        rope_scaling_factor: ``rope_scaling.factor`` of type ``llama3``; None: plain RoPE.
        rope_low_freq_factor, rope_high_freq_factor, rope_original_max_position_embeddings: the
            other ``rope_scaling`` fields.
        tie_word_embeddings: output projection shares the embedding's weight (3.2 1B / 3B).
        lora: adapters to insert, or None.
    """
    scaling = None if rope_scaling_factor is None else Llama3RopeScaling(
        factor=rope_scaling_factor, low_freq_factor=rope_low_freq_factor,
        high_freq_factor=rope_high_freq_factor,
        original_max_position_embeddings=rope_original_max_position_embeddings)
    return llama_layout_decoder(
        family="llama3", vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len, head_dim=head_dim, norm_eps=norm_eps, rope_base=rope_base,
        rope_scaling=scaling, tie_word_embeddings=tie_word_embeddings, lora=lora,
    )


def _published(scaling: Llama3RopeScaling, **sizes: int | bool) -> dict:
    return dict(vocab_size=128_256, rope_base=500_000.0, norm_eps=1e-5, rope_scaling_factor=scaling.factor,
                rope_low_freq_factor=scaling.low_freq_factor, rope_high_freq_factor=scaling.high_freq_factor,
                rope_original_max_position_embeddings=scaling.original_max_position_embeddings, **sizes)


def llama3_1_8b(lora: LoRASpec | None = None, max_seq_len: int = 8192) -> TransformerDecoder:
    """Llama-3.1-8B shape (8.03B parameters; 32 layers, 32 heads / 8 KV heads, width 4096)."""
    return llama3(**_published(_SCALING_3_1, num_layers=32, num_heads=32, num_kv_heads=8, embed_dim=4096,
                               intermediate_dim=14_336), max_seq_len=max_seq_len, lora=lora)


def llama3_1_70b(lora: LoRASpec | None = None, max_seq_len: int = 8192) -> TransformerDecoder:
    """Llama-3.1-70B shape (70.6B parameters; 80 layers, 64 heads / 8 KV heads, width 8192)."""
    return llama3(**_published(_SCALING_3_1, num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192,
                               intermediate_dim=28_672), max_seq_len=max_seq_len, lora=lora)


def llama3_2_1b(lora: LoRASpec | None = None, max_seq_len: int = 8192) -> TransformerDecoder:
    """Llama-3.2-1B shape (1.24B parameters; 16 layers, width 2048, tied embeddings)."""
    return llama3(**_published(_SCALING_3_2, num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048,
                               intermediate_dim=8192, tie_word_embeddings=True), max_seq_len=max_seq_len, lora=lora)


def llama3_2_3b(lora: LoRASpec | None = None, max_seq_len: int = 8192) -> TransformerDecoder:
    """Llama-3.2-3B shape (3.21B parameters; 28 layers, 24 heads / 8 KV heads, width 3072, tied)."""
    return llama3(**_published(_SCALING_3_2, num_layers=28, num_heads=24, num_kv_heads=8, embed_dim=3072,
                               intermediate_dim=8192, tie_word_embeddings=True), max_seq_len=max_seq_len, lora=lora)
