"""Multi-head attention with grouped-query heads, RoPE and an optional KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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


# ---- packed rows: document masking without a dense [b, s, s] mask -------------------------

ATTENTION_IMPLS = ("auto", "sdpa", "flex", "varlen")


@dataclass(frozen=True)
class VarlenDocuments:
    """The documents of a packed batch for variable-length (flash) attention.

    Attributes:
        cu_seqlens: int32 ``[n_docs + 1]``, offsets of the documents in the flattened
            ``[b * s]`` tokens (row ``i`` starts at ``i * s``); trailing repeats of the total
            are zero-length documents (padding of the tensor's length).
        max_len: an upper bound on a document's length (the row length: static, no sync).
    """

    cu_seqlens: torch.Tensor
    max_len: int


def resolve_attention(impl: str, *, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The kernel family that serves packed rows for ``impl`` (``auto`` picks one).

    ``auto``: on CUDA with bf16/fp16 and a head_dim flash supports, ``varlen`` (flash
    attention over the documents, no mask at all); other CUDA runs ``flex`` (block-sparse
    document mask); elsewhere ``sdpa`` with a dense mask (today's path, exact bit for bit;
    torch's flex attention has no CPU backward).
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention={impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    if impl != "auto":
        return impl
    if device.type != "cuda":
        return "sdpa"
    varlen_ok = dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256
    return "varlen" if varlen_ok and _varlen_attn() is not None else "flex"


def doc_ids_from_seq_lens(seq_lens: list[list[int]]) -> torch.Tensor:
    """``[b, s]`` document index of every position, from each row's document lengths."""
    rows = [torch.repeat_interleave(torch.arange(len(lens)), torch.as_tensor(lens, dtype=torch.long))
            for lens in seq_lens]
    return torch.stack(rows)


def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """int32 ``[n_docs + 1]`` offsets of the documents of ``doc_ids [b, s]`` flattened.

    A document starts at every row start and wherever the id changes. This reads the
    number of documents back to the host (one sync): collate passes ``cu_seqlens`` instead.
    """
    b, s = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = starts.flatten().nonzero().squeeze(1)
    end = torch.tensor([b * s], device=doc_ids.device, dtype=idx.dtype)
    return torch.cat([idx, end]).to(torch.int32)


def dense_document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[b, s, s]``: query i may attend key j when same document and j <= i (the SDPA path)."""
    s = doc_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_ids.device).tril()
    return (doc_ids.unsqueeze(2) == doc_ids.unsqueeze(1)) & causal


def flex_document_mask(doc_ids: torch.Tensor) -> Any:
    """A flex-attention ``BlockMask`` for ``doc_ids [b, s]``: block-causal within documents.

    Only blocks that touch a document on the diagonal are visited, so memory and work grow
    with the documents' lengths, not the square of the row. On CUDA the block mask is built
    by a compiled kernel (no dense ``[s, s]`` intermediate).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    b, s = doc_ids.shape

    def same_doc_causal(bi: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        del h
        return (doc_ids[bi, q] == doc_ids[bi, kv]) & (q >= kv)

    return create_block_mask(same_doc_causal, b, None, s, s, device=doc_ids.device, _compile=doc_ids.is_cuda)


def document_attention_mask(impl: str, doc_ids: torch.Tensor, cu_seqlens: torch.Tensor | None, *,
                            dtype: torch.dtype, head_dim: int) -> Any:
    """What the attention layers get for packed rows under ``impl`` (built once per forward).

    Returns a bool ``[b, s, s]`` tensor (``sdpa``), a ``BlockMask`` (``flex``) or
    :class:`VarlenDocuments` (``varlen``).
    """
    impl = resolve_attention(impl, device=doc_ids.device, dtype=dtype, head_dim=head_dim)
    if impl == "sdpa":
        return dense_document_mask(doc_ids)
    if impl == "flex":
        if doc_ids.device.type == "cpu" and torch.is_grad_enabled():
            raise ValueError("attention='flex' cannot train on the CPU (torch's flex attention has no CPU "
                             "backward); use attention=auto or sdpa there")
        if doc_ids.is_cuda:
            _compiled_flex_attention()
        return flex_document_mask(doc_ids)
    _varlen_kernel()  # looked up here, eagerly, not inside a compiled layer
    cu = cu_seqlens_from_doc_ids(doc_ids) if cu_seqlens is None else cu_seqlens.to(torch.int32)
    return VarlenDocuments(cu_seqlens=cu, max_len=doc_ids.shape[1])


_VARLEN: list[Any] = []  # [(kernel or None, its keyword names)] once looked up


def _varlen_kernel() -> tuple[Callable[..., torch.Tensor] | None, frozenset[str]]:
    """torch's flash varlen function and its keyword names (they changed across releases)."""
    if not _VARLEN:
        try:
            import inspect

            from torch.nn.attention.varlen import varlen_attn

            names = frozenset(inspect.signature(varlen_attn).parameters)
            usable = "window_size" in names or "is_causal" in names
            _VARLEN.append((varlen_attn if usable else None, names))
        except (ImportError, ValueError, TypeError):  # torch < 2.9
            _VARLEN.append((None, frozenset()))
    return _VARLEN[0]


def _varlen_attn() -> Callable[..., torch.Tensor] | None:
    return _varlen_kernel()[0]


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: VarlenDocuments) -> torch.Tensor:
    """Causal flash varlen attention on ``[T, heads, hd]`` tensors, whatever torch's keywords."""
    kernel, names = _varlen_kernel()
    causal = {"window_size": (-1, 0)} if "window_size" in names else {"is_causal": True}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in names:
            causal["enable_gqa"] = True
        else:  # an older varlen_attn: repeat K/V heads (same head order as enable_gqa)
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return kernel(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_len, docs.max_len, **causal)


def _varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """Causal attention per document of flattened ``q [T, n, hd]``, ``k/v [T, n_kv, hd]`` (any device).

    One SDPA call per document (memory linear in the row); the CPU stand-in for flash varlen.
    """
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        qd, kd, vd = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # [heads, len, hd]
        od = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
        out[lo:hi] = od.transpose(0, 1)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: VarlenDocuments) -> torch.Tensor:
    """Block-causal attention over the documents of packed rows, with no mask.

    Args:
        q: ``[b, s, n_heads, hd]``; k, v: ``[b, s, n_kv, hd]`` (after RoPE).
        docs: the batch's document offsets.

    Returns:
        ``[b, s, n_heads, hd]``. CUDA: flash attention's variable-length kernel (GQA native);
        elsewhere one SDPA call per document.
    """
    b, s, n, hd = q.shape
    qf, kf, vf = q.reshape(b * s, n, hd), k.reshape(b * s, -1, hd), v.reshape(b * s, -1, hd)
    if q.is_cuda and _varlen_attn() is not None:
        out = _flash_varlen(qf, kf, vf, docs)
    else:
        out = _varlen_reference(qf, kf, vf, docs.cu_seqlens)
    return out.view(b, s, n, hd)


_compiled_flex: Callable[..., torch.Tensor] | None = None


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """``flex_attention`` with ``block_mask`` on ``[b, heads, s, hd]`` tensors (GQA native).

    On CUDA through ``torch.compile`` (eager flex attention materialises the scores); inside
    an already compiled layer this is traced inline.
    """
    from torch.nn.attention.flex_attention import flex_attention

    fn = _compiled_flex_attention() if q.is_cuda else flex_attention
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.shape[1] != q.shape[1])


def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """The one ``torch.compile``d flex attention (made eagerly by :func:`document_attention_mask`,
    so a compiled layer only reads it)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


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
        mask: Any = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attends over ``x``.

        Args:
            x: ``[b, s, embed_dim]``.
            mask: bool ``[b, s, kv_len]``, True where attention is allowed; ``kv_len`` is
                ``s`` without a cache and the cache length with one. Packed rows may pass
                what :func:`document_attention_mask` builds instead (a flex ``BlockMask`` or
                :class:`VarlenDocuments`).
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
        if mask is not None and not isinstance(mask, torch.Tensor):
            if self.kv_cache is not None:
                raise ValueError("packed-row document masks cannot be used with a KV cache")
            if isinstance(mask, VarlenDocuments):  # q/k/v [b, s, heads, hd]: no transpose needed
                out = varlen_attention(q, k, v, mask).reshape(b, s, self.num_heads * self.head_dim)
            else:  # a flex BlockMask
                out = flex_document_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
                out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
            return self.output_proj(out)
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
