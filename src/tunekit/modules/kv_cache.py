"""Static key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Preallocated ``[batch, num_kv_heads, max_seq_len, head_dim]`` key and value buffers.

    Static shapes keep decoding ``torch.compile``-friendly: attention always runs over the
    whole cache and a mask hides the positions not yet written.

    Args:
        batch_size: largest batch the cache serves.
        max_seq_len: number of positions it holds.
        num_kv_heads: key/value heads.
        head_dim: per-head dimension.
        dtype: storage dtype.
        device: storage device.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        self.max_seq_len = max_seq_len
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def reset(self) -> None:
        """Zeroes both buffers."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes ``k, v`` (``[b, n_kv, s, hd]``) at positions ``input_pos`` (``[b, s]``).

        Returns:
            The cached keys and values for the first ``b`` rows, ``[b, n_kv, max_seq_len, hd]``.
        """
        b = k.shape[0]
        rows = torch.arange(b, device=input_pos.device).unsqueeze(1)  # [b, 1]
        k_cache, v_cache = self.k_cache[:b], self.v_cache[:b]
        # Advanced indices around a slice put their dims first: the target is [b, s, n_kv, hd].
        k_cache[rows, :, input_pos] = k.transpose(1, 2).to(k_cache.dtype)
        v_cache[rows, :, input_pos] = v.transpose(1, 2).to(v_cache.dtype)
        return k_cache, v_cache
