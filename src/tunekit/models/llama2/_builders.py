"""Llama 2 builders: flat typed arguments -> an assembled ``TransformerDecoder``.

Meta-device pattern (a 7B model without touching host memory, materialised in bf16 on GPU)::

    with torch.device("meta"):
        model = llama2_7b()
    # random weights:
    init_on_device(model, "cuda", dtype=torch.bfloat16)
    # or real weights (tunekit names, already bf16 on the GPU):
    model.load_state_dict(state_dict, strict=True, assign=True)  # strict=False with LoRA
    model.init_buffers()                                          # RoPE tables
"""

from __future__ import annotations

import torch

from tunekit.models._decoder import llama_layout_decoder
from tunekit.modules import TransformerDecoder
from tunekit.modules.peft import LoRASpec, reset_all_parameters


def llama2(
    *,
    vocab_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    embed_dim: int,
    intermediate_dim: int,
    max_seq_len: int,
    norm_eps: float = 1e-5,
    rope_base: float = 10_000.0,
    lora: LoRASpec | None = None,
) -> TransformerDecoder:
    """Builds a Llama 2 decoder.

    Args:
        vocab_size: vocabulary size.
        num_layers: decoder layers.
        num_heads: query heads.
        num_kv_heads: key/value heads (== ``num_heads`` for MHA, fewer for GQA).
        embed_dim: model width; ``head_dim = embed_dim // num_heads``.
        intermediate_dim: SwiGLU hidden width.
        max_seq_len: longest sequence (RoPE table length).
        norm_eps: RMSNorm epsilon.
        rope_base: RoPE base ``theta``.
        lora: adapters to insert (each target linear becomes a ``LoRALinear``), or None.

    Returns:
        The model, with state-dict keys as in docs/architecture.md.
    """
    return llama_layout_decoder(
        family="llama2", vocab_size=vocab_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, embed_dim=embed_dim, intermediate_dim=intermediate_dim,
        max_seq_len=max_seq_len, norm_eps=norm_eps, rope_base=rope_base, lora=lora,
    )


def llama2_7b(lora: LoRASpec | None = None, max_seq_len: int = 4096) -> TransformerDecoder:
    """Llama-2-7B shape (6.74B parameters)."""
    return llama2(
        vocab_size=32_000, num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096,
        intermediate_dim=11_008, max_seq_len=max_seq_len, lora=lora,
    )  # fmt: skip


def llama2_13b(lora: LoRASpec | None = None, max_seq_len: int = 4096) -> TransformerDecoder:
    """Llama-2-13B shape (13.0B parameters)."""
    return llama2(
        vocab_size=32_000, num_layers=40, num_heads=40, num_kv_heads=40, embed_dim=5120,
        intermediate_dim=13_824, max_seq_len=max_seq_len, lora=lora,
    )  # fmt: skip


def llama2_70b(lora: LoRASpec | None = None, max_seq_len: int = 4096) -> TransformerDecoder:
    """Llama-2-70B shape (69.0B parameters; GQA with 64 query and 8 KV heads)."""
    return llama2(
        vocab_size=32_000, num_layers=80, num_heads=64, num_kv_heads=8, embed_dim=8192,
        intermediate_dim=28_672, max_seq_len=max_seq_len, lora=lora,
    )  # fmt: skip


def llama2_tiny(lora: LoRASpec | None = None) -> TransformerDecoder:
    """The bundled tiny model (vocab 512, 4 layers, 4 heads / 2 KV heads, width 128).

    These shapes are fixed: the bundled tokenizer and tiny checkpoint use them.
    """
    return llama2(
        vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128,
        intermediate_dim=352, max_seq_len=512, lora=lora,
    )  # fmt: skip


@torch.no_grad()
def init_on_device(
    model: TransformerDecoder, device: torch.device | str, dtype: torch.dtype | None = None
) -> TransformerDecoder:
    """Materialises a (meta-device) model on ``device`` with fresh random weights.

    Casts on the meta device first (free), allocates once with ``to_empty``, then runs each
    module's own ``reset_parameters`` (LoRA: ``A`` Kaiming, ``B`` zero) and rebuilds the
    fp32 RoPE tables. Use ``load_state_dict(..., assign=True)`` + ``init_buffers()``
    instead when real weights follow.

    Args:
        model: a model from one of the builders (any device).
        device: target device.
        dtype: parameter dtype; None keeps the current one.

    Returns:
        ``model``, materialised in place.
    """
    if dtype is not None:
        model.to(dtype=dtype)
    model.to_empty(device=device)
    reset_all_parameters(model)
    model.init_buffers(device=device)
    return model
