"""Reporting on finished runs: loss curves as PNGs (matplotlib, the ``plot`` extra), per run and
overlaid across runs and sweeps. Torch-free; matplotlib is imported only when drawing."""

from tunekit.reporting.plots import (
    METRICS,
    PlotError,
    find_metrics_file,
    plot_run,
    plot_runs,
    plots_after_run,
    read_metrics,
    require_matplotlib,
)
from tunekit.reporting.sweep import COMPARISON_FILE, SweepPlots, plot_sweep, sweep_jobs

__all__ = [
    "COMPARISON_FILE",
    "METRICS",
    "PlotError",
    "SweepPlots",
    "find_metrics_file",
    "plot_run",
    "plot_runs",
    "plot_sweep",
    "plots_after_run",
    "read_metrics",
    "require_matplotlib",
    "sweep_jobs",
]
