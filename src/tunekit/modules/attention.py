"""Multi-head attention with grouped-query heads, RoPE and an optional KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.modules.kv_cache import KVCache
from tunekit.modules.position_embeddings import RotaryPositionalEmbeddings


def _native_gqa_ok(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether SDPA's ``enable_gqa`` avoids the math kernel for this call.

    On CUDA only flash attention broadcasts K/V heads, and flash takes no mask and needs
    fp16/bf16; the memory-efficient kernel needs equal head counts. CPU kernels do GQA.
    """
    if q.device.type == "cpu":
        return True
    return mask is None and q.dtype in (torch.float16, torch.bfloat16)


def _grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked grouped-query attention without repeating K/V heads (the KV-cache path).

    The ``g = n_heads / n_kv`` query heads that share a K/V head are folded into the query
    length: ``q [b, n, s, hd] -> [b, n_kv, g*s, hd]`` (head ``h`` uses K/V head ``h // g``, as
    ``enable_gqa`` and ``repeat_interleave`` do). Every query row still attends on its own,
    so the result is the same attention, but any SDPA kernel serves it with equal head
    counts and the cache is read once instead of copied ``g`` times per step.

    Args:
        q: ``[b, n_heads, s, hd]``.
        k, v: ``[b, n_kv, L, hd]``.
        mask: bool ``[b, s, L]``, True = may attend.

    Returns:
        ``[b, n_heads, s, hd]``.
    """
    b, n, s, hd = q.shape
    n_kv, kv_len = k.shape[1], k.shape[2]
    g = n // n_kv
    q = q.reshape(b, n_kv, g * s, hd)  # [b, n_kv, g*s, hd]
    # [b, s, L] -> [b, 1, g*s, L]: query row j*s + t of a group is position t (a view for s = 1).
    m = mask.unsqueeze(1).unsqueeze(2).expand(b, 1, g, s, kv_len).reshape(b, 1, g * s, kv_len)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # [b, n_kv, g*s, hd]
    # reshape, not view: CUDA kernels return [b, g*s, n_kv, hd] memory transposed, where
    # n_kv and g cannot merge without a copy (a small one: s is 1 when decoding).
    return out.reshape(b, n, s, hd)


class MultiHeadAttention(nn.Module):
    """Causal self-attention through ``F.scaled_dot_product_attention``.

    ``num_kv_heads < num_heads`` gives grouped-query attention (``num_kv_heads == 1`` is
    multi-query). Without a mask and a cache SDPA runs with ``is_causal=True`` and
    ``enable_gqa=True``, which the flash kernel serves without repeating K/V heads. Where
    flash cannot run on an accelerator (explicit mask, fp32), K/V heads are repeated first so
    the memory-efficient kernel serves the call instead of the math fallback; with a KV cache
    (decoding) the query heads of a group are folded into the query length instead, so the
    cache is never copied.

    Args:
        embed_dim: model width.
        num_heads: query heads.
        num_kv_heads: key/value heads (divides ``num_heads``).
        head_dim: per-head dimension.
        q_proj, k_proj, v_proj, output_proj: the four projections (``nn.Linear`` or LoRA).
        pos_embeddings: RoPE module applied to q and k (may be shared between layers).
        q_norm, k_norm: optional per-head norms (``RMSNorm(head_dim)``, Qwen3) applied to each
            query / key head before RoPE; None: none.
        kv_cache: optional cache; normally installed by ``TransformerDecoder.setup_caches``.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        output_proj: nn.Module,
        pos_embeddings: RotaryPositionalEmbeddings,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        kv_cache: KVCache | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.output_proj = output_proj
        self.pos_embeddings = pos_embeddings
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.kv_cache = kv_cache

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attends over ``x``.

        Args:
            x: ``[b, s, embed_dim]``.
            mask: bool ``[b, s, kv_len]``, True where attention is allowed; ``kv_len`` is
                ``s`` without a cache and the cache length with one.
            input_pos: ``[b, s]`` RoPE positions (and cache slots when a cache is set).

        Returns:
            ``[b, s, embed_dim]``.
        """
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head, over head_dim: [b, s, n, hd]
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q = self.pos_embeddings(q, input_pos=input_pos)
        k = self.pos_embeddings(k, input_pos=input_pos)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, hd]

        if self.kv_cache is not None:
            if input_pos is None or mask is None:
                raise ValueError("attention with a KV cache needs input_pos and a [b, s, cache_len] mask")
            k, v = self.kv_cache.update(input_pos, k, v)  # [b, n_kv, cache_len, hd]

        gqa = self.num_kv_heads != self.num_heads
        if gqa and self.kv_cache is not None and not _native_gqa_ok(q, mask):
            out = _grouped_sdpa(q, k, v, mask)  # decoding: no copies of the cache per step
            out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)  # [b, s, n*hd]
            return self.output_proj(out)
        if gqa and not _native_gqa_ok(q, mask):
            # [b, n_kv, L, hd] -> [b, n_heads, L, hd]; same head order as enable_gqa.
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            gqa = False
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if mask is None else mask.unsqueeze(1),  # [b, 1, s, kv_len]
            is_causal=mask is None,
            enable_gqa=gqa,
        )
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)  # [b, s, n*hd]
        return self.output_proj(out)
