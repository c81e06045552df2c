"""Device resolution."""

from __future__ import annotations

import os

import torch

from tunekit.distributed import get_rank, get_world_size
from tunekit.training.precision import get_dtype

__all__ = ["get_device", "get_dtype"]


def get_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Under several ranks, a bare ``"cuda"``/``"auto"`` picks ``LOCAL_RANK``'s GPU.
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is None:
            local = int(os.environ.get("LOCAL_RANK", get_rank() if get_world_size() > 1 else 0))
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return device
