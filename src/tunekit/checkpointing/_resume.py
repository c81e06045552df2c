"""Finding and loading the checkpoint to resume from."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunekit.checkpointing._auto import resolve_model_type
from tunekit.checkpointing._checkpointer import (
    ADAPTER_FILE,
    RECIPE_STATE_FILE,
    _discover_hf,
    _discover_meta,
    read_hf_model,
    read_meta_model,
)
from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.checkpointing._io import COMPLETE_MARKER, is_complete, load_pickle, load_state_file
from tunekit.checkpointing._layout import model_dir, state_dir

__all__ = ["find_resume_dir", "list_checkpoints", "load_resume_state", "load_training_state", "saved_at"]

_CKPT_RE = re.compile(r"^(epoch|step)_(\d+)$")


def saved_at(d: Path) -> int:
    """When the save of checkpoint ``d`` completed (ns; from its marker, else its mtime)."""
    try:
        return int(json.loads((d / COMPLETE_MARKER).read_text())["saved_at_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return (d / COMPLETE_MARKER).stat().st_mtime_ns


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete ``epoch_*`` / ``step_*`` directories under ``run_dir`` (or one level down), oldest first.

    A directory without the ``COMPLETE`` marker (an interrupted save) is never listed.
    """
    run_dir = Path(run_dir).expanduser()
    found = [d for d in run_dir.glob("*") if _CKPT_RE.match(d.name) and is_complete(d)]
    if not found:
        found = [d for d in run_dir.glob("*/*") if _CKPT_RE.match(d.name) and is_complete(d)]
    return sorted(found, key=saved_at)


def find_resume_dir(path_or_auto: str | Path, output_root: str | Path | None = None) -> Path | None:
    """The checkpoint directory to resume from.

    Args:
        path_or_auto: a checkpoint directory (returned as is if complete), a run directory (its
            newest complete checkpoint), or ``"auto"`` (the newest complete one in output_root).
        output_root: the run's output directory; required for ``"auto"``.

    Returns:
        The directory, or None for ``"auto"`` when nothing complete was saved yet (a fresh run).

    Raises:
        CheckpointError: an explicit path that is incomplete or holds no complete checkpoint.
    """
    if str(path_or_auto) == "auto":
        if output_root is None:
            raise CheckpointError("resume=auto needs the run's output directory to search.")
        root = Path(output_root).expanduser()
        found = list_checkpoints(root) if root.is_dir() else []
        return found[-1] if found else None
    path = Path(path_or_auto).expanduser()
    if not path.is_dir():
        raise CheckpointFileNotFoundError(f"resume: {path} does not exist or is not a directory.")
    if is_complete(path):
        return path
    if _CKPT_RE.match(path.name):
        raise CheckpointError(
            f"resume: {path} has no {COMPLETE_MARKER} marker, so its save was interrupted and it may be "
            f"partial. Resume from an older checkpoint in {path.parent} or use resume=auto."
        )
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"resume: no complete epoch_*/step_* checkpoint in {path} (directories without a "
            f"{COMPLETE_MARKER} marker are interrupted saves and are skipped)."
        )
    return found[-1]


def load_training_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """Adapter and training state saved in a checkpoint directory (no model weights).

    Returns:
        ``{"adapter": sd}`` if ``adapter_0.pt`` exists, plus the ``recipe_state.pt`` entries
        (``optimizer``, ``lr_scheduler``, ``recipe_state``, ... as saved).

    Raises:
        CheckpointError: the directory is incomplete or has no recipe_state.pt.
    """
    d = Path(checkpoint_dir).expanduser()
    if not is_complete(d):
        raise CheckpointError(f"{d} is not a complete checkpoint (no {COMPLETE_MARKER} marker).")
    sd = state_dir(d)
    if not (sd / RECIPE_STATE_FILE).is_file():
        raise CheckpointError(
            f"{d} has no {RECIPE_STATE_FILE}: it was saved without training state (optimizer, "
            f"epoch/step), so training cannot resume from it."
        )
    out: dict[str, Any] = {}
    if (sd / ADAPTER_FILE).is_file():
        out["adapter"] = load_state_file(sd / ADAPTER_FILE)
    state = load_pickle(sd / RECIPE_STATE_FILE)
    if not isinstance(state, dict):
        raise CheckpointError(f"{sd / RECIPE_STATE_FILE} does not hold a dict of training state.")
    out.update(state)
    return out


def load_resume_state(checkpoint_dir: str | Path, model_type: str = "LLAMA2") -> dict[str, Any]:
    """Everything to resume a full fine-tune: the saved model (tunekit names) plus training state.

    The model format is detected (``config.json`` -> HF, ``params.json`` -> Meta). For LoRA,
    the saved model is merged; resume from the base model plus ``load_training_state`` instead.

    Returns:
        ``{"model": sd, "adapter"?: sd, "optimizer": ..., "lr_scheduler": ..., "recipe_state": ...}``.
    """
    d = Path(checkpoint_dir).expanduser()
    out = load_training_state(d)
    md = model_dir(d)
    mt = resolve_model_type(model_type, md)  # "auto": the family the saved config.json / params.json declares
    if (md / "config.json").is_file():
        out["model"] = read_hf_model(md, _discover_hf(md), mt)
    elif (md / "params.json").is_file():
        out["model"] = read_meta_model(md, _discover_meta(md), mt)
    else:
        raise CheckpointError(f"{d} holds neither config.json (HF) nor params.json (Meta) weights.")
    return out
