"""Rank awareness for the loop. No process-group setup here (FSDP work plugs in later).

Everything works without ``torch.distributed`` being initialised: rank 0 of world size 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["get_rank", "get_world_size", "is_rank_zero", "all_reduce_sum", "barrier"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (``RANK`` env var before init; 0 when single-process)."""
    if _initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """Number of processes (``WORLD_SIZE`` env var before init; 1 when single-process)."""
    if _initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """True on the process that logs, prints and writes files."""
    return get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op when single-process); returns ``t``."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    """Wait for all ranks (no-op when single-process)."""
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()
