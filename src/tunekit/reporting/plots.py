"""Loss curves as pictures: a run's metrics file drawn as PNGs, and several runs overlaid.

A run's metric logger (``metric_logger=jsonl``, the default) writes ``RUN/logs/metrics.jsonl``:
one ``{"step": n, "loss", "lr", "grad_norm", "tokens_per_second", "epoch", ...}`` record per log
step and ``{"step": n, "val_loss"}`` per evaluation. :func:`plot_run` draws
``RUN/plots/{loss,lr,grad_norm,tokens_per_second}.png`` against the optimizer step (training and
validation loss share ``loss.png``); :func:`plot_runs` overlays several runs in one figure (one
colour per run). A resumed run appends to the same file: the last record of a step wins.

matplotlib is the optional ``plot`` extra, imported only here and only when drawing (the Agg
canvas: no display needed); recipes call :func:`plots_after_run`, which never fails a run.
No torch import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "PlotError", "find_metrics_file", "plot_run", "plot_runs", "plots_after_run",
           "read_metrics", "require_matplotlib"]

#: what is drawn: file stem -> (metrics on it, y-axis label, log scale)
METRICS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "loss": (("loss", "val_loss"), "loss", False),
    "lr": (("lr",), "learning rate", False),
    "grad_norm": (("grad_norm",), "gradient norm (before clipping)", True),
    "tokens_per_second": (("tokens_per_second",), "tokens/s", False),
}
_LABELS = {"loss": "training loss", "val_loss": "validation loss"}
METRICS_FILE = Path("logs") / "metrics.jsonl"
PLOTS_DIR = "plots"


class PlotError(ValueError):
    """A run without metrics, an unreadable metrics file, or matplotlib missing; says which and the fix."""


def require_matplotlib() -> Any:
    """``matplotlib.figure.Figure``; :class:`PlotError` naming the ``plot`` extra when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotError(
            f"Drawing plots needs matplotlib, which is not installed ({err}). Install it with: "
            "pip install \"tunekit[plot]\" (training never needs it; the metrics stay in "
            "logs/metrics.jsonl and can be plotted later with `tunekit plot RUN`).") from err
    return Figure


def find_metrics_file(run: str | Path) -> Path:
    """``run``'s metrics file: ``run`` itself when it is a ``.jsonl`` file, else ``run/logs/metrics.jsonl``.

    Raises:
        PlotError: naming what ``run`` is and where metrics come from.
    """
    p = Path(run).expanduser()
    if p.is_file() and p.suffix == ".jsonl":
        return p
    if (p / METRICS_FILE).is_file():
        return p / METRICS_FILE
    if not p.exists():
        raise PlotError(f"`{run}`: no such run directory. Give a run directory (it holds logs/metrics.jsonl) "
                        "or a metrics .jsonl file.")
    raise PlotError(
        f"`{run}` holds no logs/metrics.jsonl, so there is nothing to plot. Runs write it with the default "
        "metric_logger=jsonl (tensorboard/wandb runs: use their own viewers); give a run directory of such "
        "a run, a sweep directory (its jobs are overlaid) or the .jsonl file itself.")


def read_metrics(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` sorted by step, from ``run``'s metrics file.

    Raises:
        PlotError: a line that is not a JSON object with an integer ``step`` (naming file and line).
    """
    path = find_metrics_file(run)
    series: dict[str, dict[int, float]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PlotError(f"`{path}` cannot be read ({err}); is it a metrics file of a tunekit run?") from err
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):  # a run killed while writing its last line: keep what came before
                break
            raise PlotError(f"`{path}` line {n} is not JSON ({err.msg}); each line of a metrics file is one "
                            "{\"step\": n, ...} record. Fix or remove that line.") from err
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise PlotError(f"`{path}` line {n} has no integer \"step\" (it reads {line[:80]!r}); each line of a "
                            "metrics file is one {\"step\": n, ...} record. Fix or remove that line.")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                series.setdefault(key, {})[step] = float(value)  # a resumed run's repeat wins
    return {k: sorted(v.items()) for k, v in series.items()}


def _draw(ax: Any, series: Mapping[str, list[tuple[int, float]]], names: Sequence[str], *, label: str = "",
          color: Any = None) -> bool:
    drew = False
    for name in names:
        points = series.get(name)
        if not points:
            continue
        steps, values = zip(*points)
        style = "--" if name == "val_loss" else "-"
        marker = "o" if name == "val_loss" or len(points) == 1 else None
        text = _LABELS.get(name, name)
        ax.plot(steps, values, linestyle=style, marker=marker, markersize=3, color=color,
                label=f"{label}: {text}" if label else text)
        drew = True
    return drew


def _finish(ax: Any, ylabel: str, log: bool, values: Sequence[float]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no "1.5" ticks
    ax.set_ylabel(ylabel)
    if log and values and min(values) > 0:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw ``run``'s metrics into ``out_dir`` (default ``run/plots/``); returns the PNGs written.

    One PNG per entry of :data:`METRICS` that the run logged (``loss.png`` also holds the
    validation loss). The files are this function's own output and are redrawn each time.
    """
    Figure = require_matplotlib()
    series = read_metrics(run)
    base = Path(run)
    out = Path(out_dir) if out_dir is not None else (base.parent.parent if base.is_file() else base) / PLOTS_DIR
    written = []
    for stem, (names, ylabel, log) in METRICS.items():
        if not any(series.get(n) for n in names):
            continue
        fig = Figure(figsize=(7, 4), dpi=100)
        ax = fig.add_subplot()
        _draw(ax, series, names)
        _finish(ax, ylabel, log, [v for n in names for _, v in series.get(n, [])])
        ax.set_title(f"{ylabel} — {base.name or base}")
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{stem}.png"
        tmp = out / f".{stem}.png.tmp"
        fig.savefig(tmp, format="png")
        tmp.replace(target)
        written.append(target)
    if not written:
        names = ", ".join(n for v in METRICS.values() for n in v[0])
        raise PlotError(f"`{find_metrics_file(run)}` holds none of {names} (a run logs them every "
                        "log_every_n_steps steps): nothing to plot yet.")
    return written


def plot_runs(runs: Sequence[str | Path], out_path: str | Path, *, labels: Sequence[str] | None = None,
              title: str | None = None) -> Path:
    """Overlay ``runs`` in one PNG at ``out_path`` (one panel per metric, one colour per run).

    Raises:
        PlotError: a run without metrics (naming it), or matplotlib missing.
    """
    Figure = require_matplotlib()
    labels = list(labels) if labels is not None else [Path(r).name or str(r) for r in runs]
    data = [read_metrics(r) for r in runs]
    panels = [(stem, spec) for stem, spec in METRICS.items() if any(d.get(n) for d in data for n in spec[0])]
    if not panels:
        raise PlotError(f"None of {', '.join(map(str, runs))} logged a metric to plot yet.")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.5 * cols, 3.8 * rows), dpi=100)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for k, (_, (names, ylabel, log)) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for series, label, color in zip(data, labels, colors):
            _draw(ax, series, names, label=label, color=color)
        _finish(ax, ylabel, log, [v for d in data for n in names for _, v in d.get(n, [])])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(out)
    return out


def plots_after_run(run_dir: str | Path) -> str:
    """The recipes' end-of-run plots: ``run_dir/plots/*.png``; returns a one-line note to print.

    Never raises: a run that trained is not failed by its pictures (no matplotlib, no metrics
    file with another metric logger, a plotting error each become the note).
    """
    try:
        written = plot_run(run_dir)
    except PlotError as err:
        return f"no plots: {' '.join(str(err).split())}"
    except Exception as err:  # noqa: BLE001 - a drawing failure must not fail a finished run
        return f"no plots: drawing them failed ({type(err).__name__}: {err}); try `tunekit plot {run_dir}`."
    return f"plots of loss, learning rate, grad norm and tokens/s in {Path(run_dir) / PLOTS_DIR}/ " \
           f"({', '.join(p.name for p in written)})"
