"""Rank awareness and process-group setup.

Everything works without ``torch.distributed`` being initialised: rank 0 of world size 1.

Launchers understood by :func:`init_distributed` (first match wins):

1. ``torchrun`` (or anything that sets ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR``): ``env://``.
2. submitit's local executor (``hydra/launcher=local``): ``SUBMITIT_LOCAL_*`` variables.
3. Slurm ``srun`` steps (``hydra/launcher=slurm`` runs every task through srun):
   ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``; the master is ``MASTER_ADDR``
   if set, else the first host of the step's node list (``scontrol show hostnames``).

The FSDP2 state-dict helpers are in ``tunekit.distributed._state_dict``; sharding a model is
``tunekit.training.prepare.shard_model`` and sharded (DCP) checkpoints are in
``tunekit.checkpointing``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_rank_zero",
    "is_distributed",
    "all_reduce_sum",
    "any_rank_true",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "destroy_distributed",
    "launcher_env",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group of more than one rank is running."""
    return _initialized() and dist.get_world_size() > 1


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


def get_local_rank() -> int:
    """Rank on this node (``LOCAL_RANK``; 0 when single-process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    """True on the process that logs, prints and writes files."""
    return get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op when single-process); returns ``t``."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is True on any rank (a collective: every rank must call it).

    Used for the stop signal: SIGTERM delivered to one rank makes every rank save and stop
    at the same step.
    """
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    """Wait for all ranks (no-op when single-process)."""
    if _initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; no-op when single-process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------- launch environment


def _first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list: ``scontrol show hostnames``, else a small parser."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # "gpu[003-005,007],cpu01" -> "gpu003"; "node1,node2" -> "node1"
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _port_from(job_id: str) -> int:
    # Same rule as submitit: a port in [20000, 60000] that every task of the job derives alike.
    return random.Random(job_id).randint(20000, 60000)


def launcher_env(environ: os._Environ | dict | None = None) -> dict[str, str] | None:
    """The torch ``env://`` variables this process was launched with, or None (single process).

    Returns ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` derived
    from torchrun, submitit's local executor or a Slurm srun step (see the module docstring).
    A world size of 1 also returns None.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {
            "RANK": env["RANK"], "WORLD_SIZE": env["WORLD_SIZE"],
            "LOCAL_RANK": env.get("LOCAL_RANK", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": env.get("MASTER_PORT", "29500"),
        }
    elif "SUBMITIT_LOCAL_GLOBALID" in env and "SUBMITIT_LOCAL_NTASKS" in env:
        job = env.get("SUBMITIT_LOCAL_JOB_ID", "0")
        out = {
            "RANK": env["SUBMITIT_LOCAL_GLOBALID"], "WORLD_SIZE": env["SUBMITIT_LOCAL_NTASKS"],
            "LOCAL_RANK": env.get("SUBMITIT_LOCAL_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": env.get("MASTER_PORT", str(_port_from(job))),
        }
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        # SLURM_STEP_NUM_TASKS is set by srun only: a batch script's own shell (where
        # SLURM_NTASKS may be 8 but only one process runs) is not mistaken for rank 0 of 8.
        job = env.get("SLURM_JOB_ID", "0")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        out = {
            "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _first_slurm_host(nodelist),
            "MASTER_PORT": env.get("MASTER_PORT", str(_port_from(job))),
        }
    else:
        return None
    if int(out["WORLD_SIZE"]) <= 1:
        return None
    return out


def init_distributed(device: str | torch.device = "auto", *, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from the launcher's environment; returns (rank, world_size).

    Backend ``nccl`` for CUDA tensors (plus ``gloo`` for CPU tensors: ``cpu:gloo,cuda:nccl``),
    ``gloo`` for a CPU run. On CUDA the current device becomes ``LOCAL_RANK``'s GPU.
    Single-process runs (no launcher, or a world size of 1) return ``(0, 1)`` and start
    nothing. Idempotent: a second call returns the running group's rank and size.
    """
    if _initialized():
        return dist.get_rank(), dist.get_world_size()
    env = launcher_env()
    if env is None:
        return 0, 1
    for k, v in env.items():  # env:// reads these; torchrun already set them
        os.environ.setdefault(k, v)
    name = str(device)
    use_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"init_distributed: device={name!r} but CUDA is not available")
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
        # NCCL for the model; gloo for small CPU collectives (the stop flag) without a
        # GPU sync.
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    kwargs = {}
    if use_cuda:
        kwargs["device_id"] = torch.device("cuda", int(env["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, init_method="env://", rank=int(env["RANK"]),
                            world_size=int(env["WORLD_SIZE"]), timeout=timedelta(seconds=timeout_s),
                            **kwargs)
    return dist.get_rank(), dist.get_world_size()


def destroy_distributed() -> None:
    """Tear the process group down (no-op when none is running)."""
    if _initialized():
        dist.destroy_process_group()
