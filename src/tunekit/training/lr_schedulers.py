"""Learning-rate schedules (LambdaLR factories).

Configs use them with ``_partial_: true``; the recipe supplies ``optimizer`` and
``num_training_steps`` (number of optimizer steps of the whole run). The schedule is stepped
once per optimizer step. Step ``t`` (0-based) trains with ``base_lr * lambda(t)``; as in
``transformers.get_cosine_schedule_with_warmup``, warmup is linear from 0 at ``t = 0`` to 1
at ``t = num_warmup_steps``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["cosine_with_warmup", "constant_with_warmup"]


def _check(num_warmup_steps: int, num_training_steps: int | None) -> None:
    problems = []
    if num_warmup_steps < 0:
        problems.append(f"num_warmup_steps must be >= 0, got {num_warmup_steps}")
    if num_training_steps is not None and num_training_steps < 1:
        problems.append(f"num_training_steps must be >= 1, got {num_training_steps}")
    if problems:
        raise ValueError("; ".join(problems))


def cosine_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then cosine decay from ``base_lr`` to ``min_lr_ratio * base_lr``.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        num_warmup_steps: steps of linear warmup from 0.
        num_training_steps: total optimizer steps of the run.
        min_lr_ratio: floor of the decay, as a fraction of the base lr.
        num_cycles: number of cosine waves after warmup (0.5: one half-wave down to the floor).
        last_epoch: index of the last step when resuming (LambdaLR semantics).
    """
    _check(num_warmup_steps, num_training_steps)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        progress = min(progress, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * max(0.0, cosine)

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def constant_with_warmup(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int | None = None,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup from 0 to ``base_lr``, then constant.

    ``num_training_steps`` is accepted (and ignored) so every schedule takes the same
    arguments from the recipe.
    """
    _check(num_warmup_steps, num_training_steps)

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return 1.0

    return LambdaLR(optimizer, lr_lambda, last_epoch)
