"""Decoder-only transformer: token embedding, pre-norm layers, final norm, output head."""

from __future__ import annotations

import torch
from torch import nn

from tunekit.modules.attention import MultiHeadAttention
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
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attn(self.sa_norm(x), mask=mask, input_pos=input_pos)
        return h + self.mlp(self.mlp_norm(h))


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
        output: ``dim -> vocab`` projection (``nn.Linear`` or LoRA).
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

    # ---- forward ------------------------------------------------------------------------

    def forward_hidden(
        self,
        tokens: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states.

        Args:
            tokens: ``[b, s]`` token ids.
            mask: bool ``[b, s, s]`` (``[b, s, cache_len]`` with caches), True = may attend.
                ``None``: causal (with caches: causal over the cache, from ``input_pos``).
            input_pos: ``[b, s]`` positions; required with caches, needed for packing.

        Returns:
            ``[b, s, embed_dim]``.
        """
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
    ) -> torch.Tensor:
        """Logits ``[b, s, vocab]``; arguments as in :meth:`forward_hidden`."""
        return self.output(self.forward_hidden(tokens, mask=mask, input_pos=input_pos))
