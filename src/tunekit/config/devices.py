"""The ``device`` setting: its syntax (no torch) and whether this machine has it (torch, lazily)."""

from __future__ import annotations

import re

__all__ = ["DEVICE_CHOICES", "check_device", "device_syntax_problem"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (a GPU index) or mps"
_SYNTAX = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def device_syntax_problem(value: object) -> str | None:
    """Why ``value`` is not a device name (``must be ...``), or None. Imports nothing."""
    if isinstance(value, str) and _SYNTAX.match(value):
        return None
    return f"is not a device: use {DEVICE_CHOICES}"


def check_device(value: str) -> str | None:
    """Whether this machine can run on ``device=value``: a one-paragraph problem, or None.

    ``auto`` and ``cpu`` always work (no torch import); ``cuda``/``cuda:N`` need a CUDA build of
    torch and a visible GPU (N below the number of GPUs); ``mps`` needs Apple's Metal backend.
    """
    problem = device_syntax_problem(value)
    if problem is not None:
        return f"`device`={value!r} {problem}; `auto` picks a CUDA GPU when there is one, else the CPU."
    if value in ("auto", "cpu"):
        return None
    import torch  # lazy: only a GPU/MPS device needs it

    fix = "use `device=cpu` (or `device=auto`, which picks a GPU only when there is one)"
    if value.startswith("cuda"):
        if torch.version.cuda is None:
            return (f"`device`={value!r}, but this torch ({torch.__version__}) is built without CUDA;"
                    f" {fix}, or install a CUDA build of torch.")
        if not torch.cuda.is_available():
            return (f"`device`={value!r}, but no CUDA GPU is visible on this machine"
                    f" (CUDA_VISIBLE_DEVICES, driver); {fix}.")
        index = int(value.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            return (f"`device`={value!r}, but this machine has {count} CUDA GPU(s) (cuda:0 to"
                    f" cuda:{count - 1}); pick one of those or use `device=cuda`.")
        return None
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        return f"`device`='mps', but Apple's Metal (MPS) backend is not available on this machine; {fix}."
    return None
