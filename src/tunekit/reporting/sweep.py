"""After a ``-m`` sweep: every job's curves overlaid in ``<sweep dir>/comparison.png``.

``SweepPlots`` is a Hydra callback listed after ``SweepSummary`` in the fine-tuning YAMLs'
``hydra.callbacks``, so the picture lands next to ``summary.md``. Jobs are labelled by their
overrides (secrets redacted); jobs without a metrics file (failed before training) are left out.
Without matplotlib it prints one line and the sweep is unaffected; ``plots=false`` given to the
whole sweep skips it. No torch import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tunekit.config.secrets import redact_override
from tunekit.reporting.plots import METRICS_FILE, PlotError, plot_runs

__all__ = ["COMPARISON_FILE", "SweepPlots", "job_label", "plot_sweep", "sweep_jobs"]

COMPARISON_FILE = "comparison.png"


def job_label(job: Path) -> str:
    f = job / ".hydra" / "overrides.yaml"
    try:
        overrides = [redact_override(str(o)) for o in OmegaConf.load(f)] if f.is_file() else []
    except Exception:  # noqa: BLE001 - an unreadable record only costs the label
        overrides = []
    return f"job {job.name}" + (f" ({' '.join(overrides)})" if overrides else "")


def sweep_jobs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of ``sweep_dir`` that logged metrics, in job order."""
    root = Path(sweep_dir)
    jobs = [d for d in root.iterdir() if d.is_dir() and (d / METRICS_FILE).is_file()] if root.is_dir() else []
    return sorted(jobs, key=lambda d: (int(d.name), d.name) if d.name.isdigit() else (10**9, d.name))


def plot_sweep(sweep_dir: str | Path) -> Path | None:
    """Write ``sweep_dir/comparison.png`` overlaying its jobs; None when no job logged metrics."""
    jobs = sweep_jobs(sweep_dir)
    if not jobs:
        return None
    return plot_runs(jobs, Path(sweep_dir) / COMPARISON_FILE, labels=[job_label(j) for j in jobs],
                     title=f"sweep {Path(sweep_dir).name}: {len(jobs)} job(s)")


class SweepPlots(Callback):
    """After a multirun, overlay the jobs' curves next to ``summary.md`` (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "plots", default=True) is False:  # plots=false for the whole sweep
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            out = plot_sweep(sweep_dir)
        except PlotError as err:
            print(f"tunekit: no sweep comparison plot: {' '.join(str(err).split())}", flush=True)
            return
        except Exception as err:  # noqa: BLE001 - a picture never fails a finished sweep
            print(f"tunekit: no sweep comparison plot: drawing it failed ({type(err).__name__}: {err}).", flush=True)
            return
        if out is not None:
            print(f"tunekit: sweep comparison plot in {out}", flush=True)
