"""What the loop hands in and out around checkpoints: where to start, and how to save.

The loop never reads or writes files: a resumed run's state is restored before
:func:`~tunekit.training.loop.train` is called (``tunekit.run.resume``), which gets only the
:class:`ResumePoint`; and the loop saves through a :class:`Saver` (``tunekit.run.saver``: the
format checkpointer for full checkpoints, DCP shards for step checkpoints under FSDP2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ResumePoint", "Saver"]


@dataclass(frozen=True)
class ResumePoint:
    """A position in a run: the next optimizer step to run and what it needs to be exact.

    Attributes:
        epoch: the epoch the next step belongs to.
        step_in_epoch: optimizer steps of that epoch already done.
        global_step: optimizer steps done in total.
        rng: the RNG states (``tunekit.training.seed.get_rng_state``) at that point; the loop
            restores them where an uninterrupted run stood.
        log_loss_sum: the running sum of token losses of the current log interval.
        log_tokens: the running token count of the current log interval (an objective's
            count, e.g. preference pairs).
        log_metric_sums: an objective's running metric sums of the current log interval
            (empty for cross-entropy).
    """

    epoch: int
    step_in_epoch: int
    global_step: int
    rng: Any = None
    log_loss_sum: float = 0.0
    log_tokens: int = 0
    log_metric_sums: dict[str, float] = field(default_factory=dict)


class Saver(Protocol):
    """How the loop saves: every rank calls :meth:`save` at the same step (a collective)."""

    def save(self, point: ResumePoint, *, epoch: int, step: int | None, final: bool) -> None:
        """Save the run so that it resumes at ``point``.

        Args:
            point: where a run resumed from this checkpoint continues.
            epoch: the epoch being trained (names ``epoch_{epoch}/`` when ``step`` is None).
            step: the global step of a step checkpoint (``step_{step}/``), None at an epoch end.
            final: the last checkpoint of the run.
        """
        ...
