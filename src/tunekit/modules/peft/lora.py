"""Low-rank adapters (Hu et al., 2021) with PEFT-compatible initialisation and scaling."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output")
"""Valid ``LoRASpec.targets`` (tunekit linear names)."""


def _pattern_matches(pattern: str, module_name: str) -> bool:
    # PEFT semantics: a pattern matches a module path or any dotted suffix of it.
    return re.fullmatch(rf"(.*\.)?(?:{pattern})", module_name) is not None


@dataclass
class LoRASpec:
    """What to adapt and how.

    Args:
        rank: default adapter rank ``r``.
        alpha: default scaling numerator; the adapter output is scaled by ``alpha / r``.
        dropout: dropout probability on the adapter input.
        targets: linear names to adapt, among ``LORA_TARGETS``.
        rank_pattern: per-module rank overrides; keys are regexes matched (as in PEFT)
            against a module path such as ``layers.3.attn.q_proj`` or any dotted suffix of
            it (``q_proj`` matches every layer's).
        alpha_pattern: per-module alpha overrides, same matching.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets = list(self.targets)
        self.rank_pattern = dict(self.rank_pattern)
        self.alpha_pattern = dict(self.alpha_pattern)
        problems = []
        if self.rank < 1:
            problems.append(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            problems.append(f"lora.targets has unknown names {bad}; valid: {list(LORA_TARGETS)}")
        if not self.targets:
            problems.append(f"lora.targets is empty; choose from {list(LORA_TARGETS)}")
        for key, r in self.rank_pattern.items():
            if int(r) < 1:
                problems.append(f"lora.rank_pattern[{key!r}] must be >= 1, got {r}")
        for key in [*self.rank_pattern, *self.alpha_pattern]:
            try:
                re.compile(key)
            except re.error as e:
                problems.append(f"lora pattern {key!r} is not a valid regex: {e}")
        if problems:
            raise ValueError("invalid LoRA settings:\n  " + "\n  ".join(problems))

    def rank_for(self, module_name: str) -> int:
        """Rank for the module at ``module_name`` (first matching ``rank_pattern`` wins)."""
        for pattern, r in self.rank_pattern.items():
            if _pattern_matches(pattern, module_name):
                return int(r)
        return self.rank

    def alpha_for(self, module_name: str) -> float:
        """Alpha for the module at ``module_name`` (first matching ``alpha_pattern`` wins)."""
        for pattern, a in self.alpha_pattern.items():
            if _pattern_matches(pattern, module_name):
                return float(a)
        return self.alpha


class LoRALinear(nn.Module):
    """``y = x W^T + b + (alpha / r) * B(A(dropout(x)))``.

    ``weight`` (and ``bias``) keep the plain ``nn.Linear`` keys, so a plain checkpoint
    loads with ``strict=False`` missing only ``lora_a.weight`` / ``lora_b.weight``. ``A`` is
    Kaiming-uniform with ``a=sqrt(5)`` and ``B`` zero, as in PEFT, so a fresh adapter is a
    no-op.

    Args:
        in_dim: input features.
        out_dim: output features.
        rank: adapter rank ``r``.
        alpha: scaling numerator.
        dropout: dropout on the adapter input only.
        bias: whether the base layer has a bias.
    """

    def __init__(
        self, in_dim: int, out_dim: int, rank: int, alpha: float, dropout: float = 0.0, bias: bool = False
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim)) if bias else None
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False  # set by disable_adapters()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Base weight as ``nn.Linear``; ``A`` Kaiming-uniform(a=sqrt(5)); ``B`` zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_dim)
            nn.init.uniform_(self.bias, -bound, bound)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """Re-initialises only the adapter (``A`` Kaiming-uniform, ``B`` zero)."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) * B @ A`` in fp32, shape ``[out_dim, in_dim]``."""
        return self.scaling * (self.lora_b.weight.float() @ self.lora_a.weight.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.disabled:
            return out
        # In place on the fresh base output: no extra [.., out_dim] activation is kept, and
        # linear's backward needs only x and W, so autograd allows it.
        return out.add_(self.lora_b(self.lora_a(self.dropout(x))), alpha=self.scaling)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, alpha={self.alpha}"
