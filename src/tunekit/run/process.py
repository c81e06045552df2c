"""Process setup of a run: the process group, its teardown, the device the run asked for."""

from __future__ import annotations

import contextlib
from typing import Iterator

from tunekit import distributed
from tunekit.run.errors import RunError, check_not_multirun_in_torchrun
from tunekit.training.device import get_device

__all__ = ["check_device", "init_distributed", "pin_memory_for", "process_group_teardown"]


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is built.

    Raises:
        RunError: naming the device, what this machine has and the override that works.
    """
    import torch

    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(
            f"device={name}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}). Run with device=cpu (or device=auto), or "
            "install a CUDA build of torch on a GPU machine."
        )
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise RunError(
                f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered 0..{torch.cuda.device_count() - 1}. Pick one of them, or device=cuda."
            )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError(f"device={name}: MPS is not available on this machine. Run with device=cpu or device=auto.")


def init_distributed(device: str) -> tuple[int, int]:
    """``(rank, world_size)``; starts a process group only when a launcher started several ranks.

    Also refuses a device the machine lacks and a Hydra ``-m`` sweep inside a multi-rank launch.
    """
    check_device(device)
    check_not_multirun_in_torchrun()
    return distributed.init_distributed(device)


@contextlib.contextmanager
def process_group_teardown() -> Iterator[None]:
    """Destroy the process group a recipe started, when the recipe ends (no-op for one process).

    Without it the interpreter tears gloo/NCCL down during finalisation, where gloo's worker
    threads can abort the process ("terminate called without an active exception", SIGABRT)
    after a run that otherwise succeeded. On success the ranks meet at a barrier first, so no
    rank leaves while another still writes; after an error there is no barrier (the other
    ranks may never arrive).
    """
    try:
        yield
    except BaseException:
        distributed.destroy_distributed()
        raise
    distributed.barrier()
    distributed.destroy_distributed()


def pin_memory_for(device: str) -> bool:
    """Page-locked host batches when training on CUDA (the loop copies with non_blocking)."""
    return get_device(device).type == "cuda"
