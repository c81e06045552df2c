"""Root-mean-square layer norm (Zhang & Sennrich, 2019), as in Llama."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``y = scale * x / sqrt(mean(x^2) + eps)``.

    The normalisation runs in fp32 and is cast back to the input dtype before the scale is
    applied, exactly like HF ``LlamaRMSNorm`` (so bf16 results match it bit for bit).

    Args:
        dim: size of the last dimension.
        eps: added to the mean square for numerical stability.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        """Sets ``scale`` to ones (used after ``to_empty``)."""
        nn.init.ones_(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.scale * x_normed.to(x.dtype)
