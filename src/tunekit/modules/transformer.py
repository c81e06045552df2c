"""Decoder-only transformer: token embedding, pre-norm layers, final norm, output head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.modules.attention import ATTENTION_IMPLS, MultiHeadAttention, document_attention_mask
from tunekit.modules.kv_cache import KVCache
from tunekit.modules.position_embeddings import RotaryPositionalEmbeddings


class TransformerDecoderLayer(nn.Module):
    """Pre-norm block: ``h = x + attn(sa_norm(x)); out = h + mlp(mlp_norm(h))``.

    Args:
        attn: self-attention module.
        mlp: feed-forward module.
        sa_norm: norm before attention.
        mlp_norm: norm before the feed-forward.
    """

    def __init__(
        self, *, attn: MultiHeadAttention, mlp: nn.Module, sa_norm: nn.Module, mlp_norm: nn.Module
    ) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        self.sa_norm = sa_norm
        self.mlp_norm = mlp_norm

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: Any = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attn(self.sa_norm(x), mask=mask, input_pos=input_pos)
        return h + self.mlp(self.mlp_norm(h))


class TiedLinear(nn.Module):
    """The output projection of a model with tied embeddings: ``x @ embedding.weight.T``.

    It owns no parameter (the state dict has no ``output.weight``, as HF writes no
    ``lm_head.weight`` for such models); the weight is the embedding's, read at every call,
    so materialising, loading with ``assign=True``, casting and sharding the embedding keep
    the two tied. The embedding is held outside the module tree (not a submodule).

    Args:
        embedding: the model's ``tok_embeddings``.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self._tied = (embedding,)  # a tuple: not registered, so no second copy of its keys

    @property
    def weight(self) -> torch.Tensor:
        """The embedding's weight ``[vocab, dim]``."""
        return self._tied[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def _drop_tied_output(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any,
                      strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                      error_msgs: list[str]) -> None:
    """Load-state-dict pre-hook of a tied model: accept a stored copy of the tied output weight.

    Meta checkpoints (and some HF exports) store ``output.weight`` even for tied models; it is
    dropped when it equals the embedding, and refused when it differs (loading it would not
    run the weights as saved).
    """
    del module, local_metadata, strict, missing_keys, unexpected_keys
    out, emb = state_dict.get(f"{prefix}output.weight"), state_dict.get(f"{prefix}tok_embeddings.weight")
    if out is None:
        return
    if emb is not None and out.shape == emb.shape and (out.is_meta or torch.equal(out, emb)):
        del state_dict[f"{prefix}output.weight"]
    else:
        error_msgs.append(
            "the checkpoint holds an output.weight (lm_head.weight) that differs from tok_embeddings.weight, "
            "but this model ties its output projection to the embedding (tie_word_embeddings); pick the "
            "model= option built for this checkpoint (one without tied embeddings)"
        )


class TransformerDecoder(nn.Module):
    """The full decoder.

    ``forward(tokens) == output(forward_hidden(tokens))``; chunked losses call
    :meth:`forward_hidden` and apply ``self.output`` chunk by chunk so the full logits are
    never materialised. ``self.layers`` holds one entry per decoder layer (the unit for
    FSDP, per-layer compile and activation checkpointing).

    Args:
        tok_embeddings: ``nn.Embedding(vocab, dim)``.
        layers: decoder layers.
        norm: final norm.
        output: ``dim -> vocab`` projection (``nn.Linear``, LoRA, or ``TiedLinear(tok_embeddings)``
            for tied input/output embeddings).
        max_seq_len: longest sequence the RoPE tables (and default KV cache) cover.
    """

    def __init__(
        self,
        *,
        tok_embeddings: nn.Embedding,
        layers: list[TransformerDecoderLayer],
        norm: nn.Module,
        output: nn.Module,
        max_seq_len: int,
    ) -> None:
        super().__init__()
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.output = output
        self.max_seq_len = max_seq_len
        self._cache_len: int | None = None
        self.attention = "auto"  # how packed rows (doc_ids) attend: see set_attention
        if isinstance(output, TiedLinear):
            if output.weight is not tok_embeddings.weight:
                raise ValueError("TiedLinear output must be tied to this decoder's tok_embeddings")
            self.register_load_state_dict_pre_hook(_drop_tied_output)

    @property
    def tie_word_embeddings(self) -> bool:
        """True when the output projection is the embedding's weight (``TiedLinear``)."""
        return isinstance(self.output, TiedLinear)

    # ---- buffers and caches -------------------------------------------------------------

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Rebuilds the non-persistent RoPE tables after materialising a meta-device model.

        Args:
            device: where to build them; default: the device of ``tok_embeddings.weight``.
        """
        device = self.tok_embeddings.weight.device if device is None else device
        for m in self.modules():
            if isinstance(m, RotaryPositionalEmbeddings):
                m.reset_parameters(device=device)

    def setup_caches(self, batch_size: int, dtype: torch.dtype, max_seq_len: int | None = None) -> None:
        """Installs a KV cache in every attention layer; ``forward`` then needs ``input_pos``.

        Args:
            batch_size: largest batch to decode.
            dtype: cache dtype (usually the model's).
            max_seq_len: cache length; default and maximum ``self.max_seq_len``.
        """
        cache_len = self.max_seq_len if max_seq_len is None else max_seq_len
        if cache_len > self.max_seq_len:
            raise ValueError(f"cache length {cache_len} exceeds the model's max_seq_len {self.max_seq_len}")
        device = self.tok_embeddings.weight.device
        for layer in self.layers:
            attn = layer.attn
            attn.kv_cache = KVCache(batch_size, cache_len, attn.num_kv_heads, attn.head_dim, dtype, device)
        self._cache_len = cache_len

    def reset_caches(self) -> None:
        """Zeroes every KV cache (start a new generation)."""
        for layer in self.layers:
            if layer.attn.kv_cache is not None:
                layer.attn.kv_cache.reset()

    def remove_caches(self) -> None:
        """Removes the KV caches (back to training mode)."""
        for layer in self.layers:
            layer.attn.kv_cache = None
        self._cache_len = None

    def caches_are_enabled(self) -> bool:
        """True after :meth:`setup_caches` (until :meth:`remove_caches`)."""
        return self._cache_len is not None

    def set_attention(self, impl: str) -> None:
        """How packed rows (``doc_ids``) attend: ``auto`` (default), ``sdpa``, ``flex`` or ``varlen``.

        ``sdpa`` builds the dense ``[b, s, s]`` block-causal mask (memory quadratic in the row;
        no flash kernel); ``flex`` a flex-attention block mask; ``varlen`` flash attention over
        the documents (CUDA, bf16/fp16; one SDPA call per document elsewhere). All compute the
        same attention; ``auto`` picks ``varlen`` on CUDA in bf16/fp16, else ``flex`` on CUDA,
        else ``sdpa`` (see ``modules.attention.resolve_attention``).
        """
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention={impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
        self.attention = impl

    def _document_mask(self, doc_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> Any:
        if self._cache_len is not None:
            raise ValueError("packed rows (doc_ids) cannot be decoded with KV caches enabled")
        attn = self.layers[0].attn if len(self.layers) else None
        head_dim = attn.head_dim if attn is not None else 128
        return document_attention_mask(self.attention, doc_ids, cu_seqlens,
                                       dtype=self.tok_embeddings.weight.dtype, head_dim=head_dim)

    # ---- forward ------------------------------------------------------------------------

    def forward_hidden(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states.

        Args:
            tokens: ``[b, s]`` token ids.
            mask: bool ``[b, s, s]`` (``[b, s, cache_len]`` with caches), True = may attend.
                ``None``: causal (with caches: causal over the cache, from ``input_pos``).
            input_pos: ``[b, s]`` positions; required with caches, needed for packing.
            doc_ids: packed rows without a dense mask: ``[b, s]`` document index of each
                position (block-causal attention within documents, as ``self.attention``
                says); ignored when ``mask`` is given.
            cu_seqlens: optional int32 document offsets in the flattened batch (from
                ``packed_collate``), saving the ``varlen`` path a host sync.

        Returns:
            ``[b, s, embed_dim]``.
        """
        if mask is None and doc_ids is not None:
            mask = self._document_mask(doc_ids, cu_seqlens)
        if self._cache_len is not None:
            if input_pos is None:
                raise ValueError("with KV caches enabled, forward needs input_pos [b, s]")
            if mask is None:
                # Query at position p sees cache slots 0..p: [b, s, cache_len].
                slots = torch.arange(self._cache_len, device=tokens.device)
                mask = input_pos.unsqueeze(-1) >= slots
        h = self.tok_embeddings(tokens)  # [b, s, dim]
        for layer in self.layers:
            h = layer(h, mask=mask, input_pos=input_pos)
        return self.norm(h)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]``; arguments as in :meth:`forward_hidden`."""
        return self.output(self.forward_hidden(tokens, mask=mask, input_pos=input_pos, doc_ids=doc_ids,
                                               cu_seqlens=cu_seqlens))
