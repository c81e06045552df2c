"""Seeding and capture/restore of every RNG the loop depends on.

RNG states are returned as plain Python data (ints and lists of ints) so a recipe state that
contains them saves as JSON or with ``torch.save`` and loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["set_seed", "get_rng_state", "set_rng_state", "generator_state", "set_generator_state"]


def set_seed(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def _bytes(t: torch.Tensor) -> list[int]:
    return t.tolist()


def _tensor(x: list[int]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.uint8)


def get_rng_state() -> dict[str, Any]:
    """States of python, numpy, torch CPU and all CUDA RNGs, as plain lists/ints."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [str(np_name), np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": _bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.array(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def generator_state(generator: torch.Generator) -> list[int]:
    """A torch.Generator's state as a list of ints."""
    return _bytes(generator.get_state())


def set_generator_state(generator: torch.Generator, state: list[int]) -> None:
    """Restore a state from :func:`generator_state`."""
    generator.set_state(_tensor(state))
