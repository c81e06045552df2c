"""Sharded step checkpoints under FSDP2 (``torch.distributed.checkpoint``), loadable on any world size.

Layout of ``RUN/step_N/`` (see ``_layout.py``)::

    state/dcp/            the DCP files: model + optimizer, each rank writing its own shards
    state/recipe_state.pt lr_scheduler, recipe_state (+ sharded_checkpoint: the dcp path)
    checkpoint.json       {"format": "dcp", ...}
    COMPLETE              written last by rank 0, then the directory is renamed into place

``output_dir`` must be on a file system every rank sees.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tunekit.checkpointing._checkpointer import RECIPE_STATE_FILE
from tunekit.checkpointing._io import COMPLETE_MARKER, atomic_checkpoint_dir
from tunekit.checkpointing._layout import INFO_FILE, STATE_SUBDIR, state_dir
from tunekit.distributed import barrier, broadcast_object, get_world_size, is_rank_zero
from tunekit.modules.peft import is_nf4, is_sharded_nf4

__all__ = [
    "SHARDED_DIR",
    "holds_nf4_base",
    "sharded_dir",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "sharded_model_shapes",
]

SHARDED_DIR = "dcp"  # under state/: the DCP files of a sharded step checkpoint


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The model's and optimizer's sharded state, without QLoRA's frozen NF4 base weights (a
    resume reads them again from the base checkpoint, as one process does)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = {k: v for k, v in get_model_state_dict(model).items() if not _is_nf4_weight(v)}
    return {"model": weights, "optimizer": get_optimizer_state_dict(model, optimizer)}


def _is_nf4_weight(t: Any) -> bool:
    return is_nf4(t) or is_sharded_nf4(t)


def holds_nf4_base(model: nn.Module) -> bool:
    """Whether a model has NF4 base weights (QLoRA), which sharded step checkpoints leave out
    (sharded over several ranks, or one process resuming such a checkpoint)."""
    return any(_is_nf4_weight(p) for p in model.parameters())


def _prune_steps(output_dir: Path, keep_last_n: int | None) -> None:
    if keep_last_n is None:
        return
    steps = sorted(
        (int(d.name.split("_", 1)[1]), d) for d in output_dir.glob("step_*")
        if d.name.split("_", 1)[1].isdigit() and (d / COMPLETE_MARKER).is_file()
    )
    for _, d in steps[: max(0, len(steps) - keep_last_n)]:
        shutil.rmtree(d, ignore_errors=True)


def save_sharded_checkpoint(output_dir: str | Path, name: str, *, model: nn.Module,
                            optimizer: torch.optim.Optimizer, extra: Mapping[str, Any],
                            info: Mapping[str, Any], keep_last_n: int | None = None) -> Path:
    """Write ``output_dir/name/`` with every rank's shards (a collective), atomically.

    Args:
        extra: the training state for ``state/recipe_state.pt`` (lr_scheduler, recipe_state).
        info: recorded in ``checkpoint.json`` and the ``COMPLETE`` marker (epoch, step, ...).
    """
    from torch.distributed import checkpoint as dcp

    output_dir = Path(output_dir)
    final = output_dir / name
    state = _dcp_state(model, optimizer)
    extra = {**extra, "sharded_checkpoint": str((final / STATE_SUBDIR / SHARDED_DIR).resolve())}
    marker = {**info, "format": "dcp", "world_size": get_world_size()}
    if holds_nf4_base(model):
        marker["base_weights"] = "base checkpoint"  # the NF4 base is not saved: read it again
    if is_rank_zero():
        with atomic_checkpoint_dir(output_dir, name, marker) as tmp:
            # made before the other ranks learn the path: their dcp.save creates it too, and a
            # rank that got there first made this mkdir fail (FileExistsError, seen under load)
            (tmp / STATE_SUBDIR / SHARDED_DIR).mkdir(parents=True)
            broadcast_object(str(tmp))
            dcp.save(state, checkpoint_id=str(tmp / STATE_SUBDIR / SHARDED_DIR))
            torch.save(extra, tmp / STATE_SUBDIR / RECIPE_STATE_FILE)
            (tmp / INFO_FILE).write_text(json.dumps({**marker, "merged_adapter": None}, indent=2) + "\n")
        _prune_steps(output_dir, keep_last_n)
    else:
        tmp = broadcast_object(None)
        dcp.save(state, checkpoint_id=str(Path(tmp) / STATE_SUBDIR / SHARDED_DIR))
    barrier()
    return final


def load_sharded_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a ``dcp/`` directory into ``model`` and ``optimizer``, resharding to this world size."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"resume: {path} is not a sharded checkpoint (no .metadata): the step directory may have "
            "been moved or copied only in part; resume from the step directory itself"
        )
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    state = _dcp_state(model, optimizer)  # templates: this run's shapes and shards
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=not holds_nf4_base(model)))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"])


def sharded_dir(checkpoint_dir: str | Path) -> Path:
    """The ``dcp/`` directory of a step checkpoint (new layout ``state/dcp``, old ``dcp``)."""
    return state_dir(Path(checkpoint_dir).expanduser()) / SHARDED_DIR


def is_sharded_checkpoint(checkpoint_dir: str | Path) -> bool:
    """True for a step checkpoint written by :func:`save_sharded_checkpoint`."""
    return sharded_dir(checkpoint_dir).is_dir()


def sharded_model_shapes(checkpoint_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """``{model key: shape}`` of a sharded checkpoint, read from its DCP metadata (no tensors)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(sharded_dir(checkpoint_dir))).read_metadata()
    out = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(md, "size"):
            out[key[len("model."):]] = tuple(md.size)
    return out
