"""The Llama-layout decoder every family's builders assemble (Llama 2/3, Mistral, Qwen2.5, Qwen3).

One function with flat typed arguments; a family's builder passes what its architecture uses
(q/k/v biases, per-head q/k norms, an explicit head dim, RoPE scaling, tied embeddings), and the
math of each lives in ``tunekit.modules`` as a sub-module this function passes in. LoRA is
swapped in here, where the linears are built, so model code never knows about it.
"""

from __future__ import annotations

from torch import nn

from tunekit.modules import (
    FeedForward,
    Llama3RopeScaling,
    MultiHeadAttention,
    RMSNorm,
    RotaryPositionalEmbeddings,
    TiedLinear,
    TransformerDecoder,
    TransformerDecoderLayer,
)
from tunekit.modules.peft import LoRALinear, LoRASpec

__all__ = ["llama_layout_decoder"]


def _linear(name: str, in_dim: int, out_dim: int, lora: LoRASpec | None, bias: bool = False) -> nn.Module:
    """``nn.Linear`` or, when ``name``'s last part is a LoRA target, ``LoRALinear``."""
    if lora is not None and name.rpartition(".")[2] in lora.targets:
        return LoRALinear(in_dim, out_dim, lora.rank_for(name), lora.alpha_for(name), lora.dropout, bias=bias,
                          use_dora=lora.use_dora)
    return nn.Linear(in_dim, out_dim, bias=bias)


def _shape_problems(embed_dim: int, num_heads: int, num_kv_heads: int, head_dim: int | None) -> list[str]:
    problems = []
    if num_heads < 1 or num_kv_heads < 1:
        problems.append(f"num_heads ({num_heads}) and num_kv_heads ({num_kv_heads}) must be positive")
        return problems
    if head_dim is None and embed_dim % num_heads:
        problems.append(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) "
                        f"(or give head_dim explicitly)")
    if num_heads % num_kv_heads:
        problems.append(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    hd = head_dim if head_dim is not None else (embed_dim // num_heads if embed_dim % num_heads == 0 else None)
    if hd is not None and hd % 2:
        problems.append(f"head_dim ({hd}) must be even for RoPE")
    return problems


def llama_layout_decoder(
    *,
    family: str,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    head_dim: int | None = None,
    norm_eps: float = 1e-5,
    rope_base: float = 10_000.0,
    rope_scaling: Llama3RopeScaling | None = None,
    qkv_bias: bool = False,
    qk_norm: bool = False,
    tie_word_embeddings: bool = False,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """A pre-norm RMSNorm / GQA / RoPE / SwiGLU decoder in Llama's layout.

    Args:
        family: the builder's name, for error messages (``"llama3"``).
        vocab_size, num_layers, num_heads, num_kv_heads, embed_dim, intermediate_dim, max_seq_len:
            the sizes (``num_kv_heads < num_heads``: grouped-query attention).
        head_dim: per-head width; None: ``embed_dim // num_heads`` (Qwen3 sets it explicitly).
        norm_eps: RMSNorm epsilon (also of the q/k norms).
        rope_base: RoPE base ``theta``.
        rope_scaling: Llama 3.1-style frequency scaling, or None.
        qkv_bias: q/k/v projections with a bias (Qwen2.5).
        qk_norm: an ``RMSNorm(head_dim)`` on every query and key head before RoPE (Qwen3).
        tie_word_embeddings: the output projection is the embedding's weight (``TiedLinear``).
        lora: adapters to insert, or None. ``"output"`` is refused with tied embeddings.

    Raises:
        ValueError: inconsistent sizes, or LoRA on a tied output projection.
    """
    problems = _shape_problems(embed_dim, num_heads, num_kv_heads, head_dim)
    if tie_word_embeddings and lora is not None and "output" in lora.targets:
        problems.append(
            "lora.targets contains 'output', but this model ties its output projection to the token "
            "embedding (tie_word_embeddings): an adapter there would also change the input embedding. "
            "Remove 'output' from lora.targets"
        )
    if problems:
        raise ValueError(f"invalid {family} model:\n  " + "\n  ".join(problems))
    hd = head_dim if head_dim is not None else embed_dim // num_heads
    # One RoPE table shared by all layers (a non-persistent buffer; no state-dict keys).
    rope = RotaryPositionalEmbeddings(hd, max_seq_len=max_seq_len, base=rope_base, scaling=rope_scaling)
    layers = []
    for i in range(num_layers):
        p = f"layers.{i}"
        attn = MultiHeadAttention(
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=hd,
            q_proj=_linear(f"{p}.attn.q_proj", embed_dim, num_heads * hd, lora, qkv_bias),
            k_proj=_linear(f"{p}.attn.k_proj", embed_dim, num_kv_heads * hd, lora, qkv_bias),
            v_proj=_linear(f"{p}.attn.v_proj", embed_dim, num_kv_heads * hd, lora, qkv_bias),
            output_proj=_linear(f"{p}.attn.output_proj", num_heads * hd, embed_dim, lora),
            pos_embeddings=rope,
            q_norm=RMSNorm(hd, eps=norm_eps) if qk_norm else None,
            k_norm=RMSNorm(hd, eps=norm_eps) if qk_norm else None,
        )
        mlp = FeedForward(
            w1=_linear(f"{p}.mlp.w1", embed_dim, intermediate_dim, lora),
            w2=_linear(f"{p}.mlp.w2", intermediate_dim, embed_dim, lora),
            w3=_linear(f"{p}.mlp.w3", embed_dim, intermediate_dim, lora),
        )
        layers.append(TransformerDecoderLayer(attn=attn, mlp=mlp, sa_norm=RMSNorm(embed_dim, eps=norm_eps),
                                              mlp_norm=RMSNorm(embed_dim, eps=norm_eps)))
    tok_embeddings = nn.Embedding(vocab_size, embed_dim)
    output = (TiedLinear(tok_embeddings) if tie_word_embeddings
              else _linear("output", embed_dim, vocab_size, lora))
    return TransformerDecoder(tok_embeddings=tok_embeddings, layers=layers, norm=RMSNorm(embed_dim, eps=norm_eps),
                              output=output, max_seq_len=max_seq_len)
