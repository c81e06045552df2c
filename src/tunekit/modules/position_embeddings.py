"""Rotary position embeddings (Su et al., 2021) in the interleaved (Meta) layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Llama3RopeScaling:
    """RoPE scaling of type ``llama3`` (Llama 3.1 / 3.2), as HF's ``rope_scaling`` declares it.

    Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` keep their
    frequency, longer than ``original_max_position_embeddings / low_freq_factor`` are divided by
    ``factor``, and those between are interpolated smoothly (transformers'
    ``_compute_llama3_parameters``, the same fp32 arithmetic).
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    rope_type = "llama3"

    def __post_init__(self) -> None:
        problems = []
        if not self.factor > 0:
            problems.append(f"factor must be > 0, got {self.factor!r}")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            problems.append(f"need 0 < low_freq_factor < high_freq_factor, got {self.low_freq_factor!r} "
                            f"and {self.high_freq_factor!r}")
        if not self.original_max_position_embeddings > 0:
            problems.append(f"original_max_position_embeddings must be > 0, got "
                            f"{self.original_max_position_embeddings!r}")
        if problems:
            raise ValueError("invalid llama3 RoPE scaling: " + "; ".join(problems))

    def describe(self) -> str:
        """One canonical string (what ``check_model_matches`` compares with a config.json)."""
        return describe_llama3_scaling(self.factor, self.low_freq_factor, self.high_freq_factor,
                                       self.original_max_position_embeddings)

    def apply(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """Scaled inverse frequencies (fp32 ``[dim/2]`` in, same out)."""
        old_len = self.original_max_position_embeddings
        low_freq_wavelen = old_len / self.low_freq_factor
        high_freq_wavelen = old_len / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (old_len / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)


def describe_llama3_scaling(factor: float, low_freq_factor: float, high_freq_factor: float,
                            original_max_position_embeddings: int) -> str:
    """``llama3(factor=8, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=8192)``."""
    return (f"llama3(factor={float(factor):g}, low_freq_factor={float(low_freq_factor):g}, "
            f"high_freq_factor={float(high_freq_factor):g}, "
            f"original_max_position_embeddings={int(original_max_position_embeddings)})")


class RotaryPositionalEmbeddings(nn.Module):
    """Rotates consecutive pairs ``(x[2i], x[2i+1])`` of each head by ``pos * base^(-2i/d)``.

    This is Meta's interleaved layout; HF checkpoints store q/k for the rotate-half layout
    and the HF checkpointer permutes them. With ``x'`` = ``x`` with each pair swapped::

        out = x * cos + x' * sin_signed,   cos = (c0, c0, c1, c1, ..),  sin_signed = (-s0, s0, -s1, s1, ..)

    The tables for positions ``0..max_seq_len-1`` are built once in fp32 and kept as a
    non-persistent buffer ``cache`` of shape ``[max_seq_len, 2, dim]`` (cos, sin_signed).
    They are rounded to the input dtype at use, so the arithmetic matches HF's (bf16 in,
    bf16 math) and stays three elementwise kernels in eager mode.

    Meta-device models: the buffer is created on the meta device with the rest of the
    model. After materialising (``to_empty`` or ``load_state_dict(assign=True)``) call
    :meth:`reset_parameters` (``TransformerDecoder.init_buffers()`` does it for every layer).

    Args:
        dim: head dimension (even).
        max_seq_len: number of positions in the table.
        base: RoPE base (``theta``).
        scaling: frequency scaling (``Llama3RopeScaling``), or None for plain RoPE.
    """

    def __init__(self, dim: int, max_seq_len: int = 4096, base: float = 10_000.0,
                 scaling: Llama3RopeScaling | None = None) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE head dim must be even, got {dim}")
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.base = base
        self.scaling = scaling
        #: what ``check_model_matches`` compares with the checkpoint's declared RoPE scaling
        self.scaling_type = None if scaling is None else scaling.describe()
        self.register_buffer("cache", self._build_cache(device=None), persistent=False)

    def _build_cache(self, device: torch.device | str | None) -> torch.Tensor:
        # Same arithmetic as HF (fp32 inv_freq, fp32 outer product) so tables agree exactly.
        inv_freq = 1.0 / (
            self.base
            ** (torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim)
        )
        if self.scaling is not None:
            inv_freq = self.scaling.apply(inv_freq)
        pos = torch.arange(self.max_seq_len, dtype=torch.int64, device=device).float()
        angles = torch.outer(pos, inv_freq)  # [max_seq_len, dim/2]
        cos = angles.cos().repeat_interleave(2, dim=-1)  # [max_seq_len, dim]
        sin = torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(-2)  # [max_seq_len, dim]
        return torch.stack([cos, sin], dim=1)  # [max_seq_len, 2, dim]

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        """(Re)builds the fp32 tables on ``device`` (default: where they are now, or CPU if
        that is the meta device)."""
        if device is None:
            device = self.cache.device if self.cache.device.type != "meta" else "cpu"
        self.cache = self._build_cache(device=device)

    def forward(self, x: torch.Tensor, *, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Applies RoPE.

        Args:
            x: ``[b, s, n_heads, head_dim]``.
            input_pos: optional ``[b, s]`` positions; default ``0..s-1``.

        Returns:
            Tensor of the same shape and dtype as ``x``.
        """
        s, d = x.shape[1], x.shape[-1]
        rope = self.cache[:s] if input_pos is None else self.cache[input_pos]  # [(b,) s, 2, d]
        rope = rope.to(x.dtype).unsqueeze(-3)  # [(b,) s, 1, 2, d]: broadcast over heads
        cos, sin = rope[..., 0, :], rope[..., 1, :]
        x_swapped = x.unflatten(-1, (d // 2, 2)).flip(-1).flatten(-2)  # pairs (x1, x0)
        return torch.addcmul(x * cos, x_swapped, sin)
