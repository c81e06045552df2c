"""GPU memory statistics for the metric logs (empty on CPU)."""

from __future__ import annotations

import torch

__all__ = ["memory_stats", "reset_peak_memory_stats"]

_GIB = 1024**3


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak allocated/reserved and currently active memory in GiB; ``{}`` off CUDA."""
    if device.type != "cuda":
        return {}
    return {
        "peak_memory_alloc_gib": torch.cuda.max_memory_allocated(device) / _GIB,
        "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / _GIB,
        "memory_active_gib": torch.cuda.memory_allocated(device) / _GIB,
    }


def reset_peak_memory_stats(device: torch.device) -> None:
    """Start a new peak-memory window (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
