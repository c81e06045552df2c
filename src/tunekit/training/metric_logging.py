"""Metric loggers: stdout, JSONL on disk, TensorBoard and Weights & Biases (optional extras).

All loggers share one shape (:class:`MetricLogger`): ``log_dict(metrics, step)``,
``log_config(cfg_dict)``, ``close()``. Only rank 0 writes; on other ranks every call is a
no-op, so the loop can call them unconditionally.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from tunekit.distributed import is_rank_zero

__all__ = [
    "MetricLogger",
    "StdoutLogger",
    "JsonlLogger",
    "TensorBoardLogger",
    "WandBLogger",
]


@runtime_checkable
class MetricLogger(Protocol):
    """What the loop and recipes call on a metric logger."""

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def log_config(self, cfg_dict: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalar(v: Any) -> Any:
    """Plain Python value for a metric (tensors -> float/int; non-finite -> 'nan'/'inf')."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # 'nan', 'inf', '-inf': valid JSON, unlike bare NaN
    return v


def _format(metrics: Mapping[str, Any], step: int) -> str:
    parts = [f"step {step}"]
    for k, v in metrics.items():
        v = _scalar(v)
        parts.append(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    return " | ".join(parts)


class StdoutLogger:
    """Prints one line per ``log_dict`` call (rank 0 only)."""

    def __init__(self) -> None:
        self._enabled = is_rank_zero()

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._enabled:
            # tqdm.write keeps an active progress bar intact.
            from tqdm import tqdm

            tqdm.write(_format(metrics, step), file=sys.stdout)

    def log_config(self, cfg_dict: Mapping[str, Any]) -> None:
        if self._enabled:
            print(json.dumps(dict(cfg_dict), indent=2, default=str), file=sys.stdout)

    def close(self) -> None:
        if self._enabled:
            sys.stdout.flush()


class JsonlLogger:
    """One JSON record per ``log_dict`` call in ``log_dir/filename``: ``{"step": n, ...}``.

    Appends (a resumed run continues the same file) and flushes every record, so a crash
    loses nothing already logged. ``log_config`` writes ``log_dir/config.json``.

    Args:
        log_dir: directory for the files (created).
        filename: name of the JSONL file.
        also_stdout: also print each record as one line.
    """

    def __init__(self, log_dir: str | os.PathLike, filename: str = "metrics.jsonl",
                 also_stdout: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / filename
        self._enabled = is_rank_zero()
        self._stdout = StdoutLogger() if also_stdout else None
        self._file = None
        if self._enabled:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._file is None:
            return
        record = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._stdout is not None:
            self._stdout.log_dict(metrics, step)

    def log_config(self, cfg_dict: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        tmp = self.log_dir / "config.json.tmp"
        tmp.write_text(json.dumps(dict(cfg_dict), indent=2, default=str), encoding="utf-8")
        tmp.replace(self.log_dir / "config.json")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class MissingExtraError(ImportError):
    """A component needs an optional dependency that is not installed (the message names the extra)."""


def _missing_extra(what: str, extra: str, err: ImportError) -> ImportError:
    return MissingExtraError(
        f"{what} needs the optional dependency '{extra}', which is not installed "
        f"({err}). Install it with: pip install \"tunekit[{extra}]\" "
        f"(or choose metric_logger=jsonl or metric_logger=stdout)."
    )


class TensorBoardLogger:
    """Scalars to a TensorBoard event file in ``log_dir`` (needs ``tunekit[tensorboard]``)."""

    def __init__(self, log_dir: str | os.PathLike, **kwargs: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise _missing_extra("TensorBoardLogger", "tensorboard", err) from err
        self._writer = SummaryWriter(log_dir=str(log_dir), **kwargs) if is_rank_zero() else None

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for k, v in metrics.items():
            v = _scalar(v)
            if isinstance(v, (int, float)):
                self._writer.add_scalar(k, v, global_step=step)
        self._writer.flush()

    def log_config(self, cfg_dict: Mapping[str, Any]) -> None:
        if self._writer is not None:
            text = json.dumps(dict(cfg_dict), indent=2, default=str)
            self._writer.add_text("config", f"```\n{text}\n```")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandBLogger:
    """Logs to Weights & Biases (needs ``tunekit[wandb]``); extra kwargs go to ``wandb.init``."""

    def __init__(self, project: str, log_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        try:
            import wandb
        except ImportError as err:
            raise _missing_extra("WandBLogger", "wandb", err) from err
        self._wandb = wandb
        self._run = None
        if is_rank_zero():
            if log_dir is not None:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(project=project, dir=None if log_dir is None else str(log_dir),
                                   **kwargs)

    def log_dict(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._run is not None:
            self._run.log({k: _scalar(v) for k, v in metrics.items()}, step=step)

    def log_config(self, cfg_dict: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.config.update(dict(cfg_dict), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
