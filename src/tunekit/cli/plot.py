"""``tunekit plot RUN [RUN ...]``: loss curves as PNGs, one run's or several overlaid.

Examples::

    tunekit plot outputs/lora_finetune/2026-12-01_10-00-00          # -> that run's plots/*.png
    tunekit plot outputs/lora_finetune/run_a outputs/lora_finetune/run_b -o compare.png
    tunekit plot multirun/lora_finetune/2026-12-01_11-00-00         # a sweep: its jobs overlaid
    tunekit plot run_a run_b --labels "lr 1e-4" "lr 3e-4" -o compare.png

A RUN is a run directory (its logs/metrics.jsonl), a metrics .jsonl file, or a sweep directory
(its jobs). One run without -o redraws RUN/plots/ (loss, lr, grad_norm, tokens_per_second);
several runs (or -o) give one figure with a panel per metric, one colour per run. An existing
-o file is kept unless --force. Needs matplotlib: pip install "tunekit[plot]".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit plot",
        description="Draw training/validation loss, learning rate, grad norm and tokens/s against steps.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory, metrics .jsonl file or sweep directory")
    p.add_argument("-o", "--output", default=None,
                   help="the PNG to write (default: RUN/plots/ for one run, comparison.png for several)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: directory names)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    return p


def _expand(runs: list[str]) -> tuple[list[str], list[str] | None]:
    """Runs with sweep directories replaced by their jobs (labelled by their overrides)."""
    from tunekit.reporting import find_metrics_file, sweep_jobs
    from tunekit.reporting.sweep import job_label

    out, labels, swept = [], [], False
    for run in runs:
        jobs = [] if Path(run).suffix == ".jsonl" or (Path(run) / "logs" / "metrics.jsonl").is_file() \
            else sweep_jobs(run)
        if jobs:
            out += [str(j) for j in jobs]
            labels += [job_label(j) for j in jobs]
            swept = True
        else:
            find_metrics_file(run)  # refuses a run without metrics, naming it
            out.append(run)
            labels.append(Path(run).name or run)
    if not swept and len(set(labels)) < len(labels):  # a/run and b/run: both "run" in the legend
        return out, _distinct_labels(out)
    return out, labels if swept else None


def _distinct_labels(runs: list[str]) -> list[str]:
    """The shortest path tails that tell the runs apart (``a/run``, ``b/run``)."""
    parts = [Path(r).resolve().parts for r in runs]
    for k in range(1, max(map(len, parts)) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [str(r) for r in runs]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunekit plot``; returns the exit status."""
    args = _parser().parse_args(argv)
    from tunekit.reporting import PlotError, plot_run, plot_runs, require_matplotlib

    try:
        require_matplotlib()
        runs, sweep_labels = _expand(args.runs)
        labels = args.labels or sweep_labels
        if labels is not None and len(labels) != len(runs):
            raise PlotError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s) ({', '.join(runs)}); "
                            "give one label per run, or none (the directory names are used).")
        if len(runs) == 1 and args.output is None:
            for path in plot_run(runs[0]):
                print(path)
            return 0
        out = Path(args.output or "comparison.png")
        if out.exists() and not args.force:
            raise PlotError(f"`{out}` exists; pass --force to replace it, or choose another -o file.")
        if out.suffix.lower() != ".png":
            raise PlotError(f"-o {out}: plots are written as PNG; give a file name ending in .png.")
        print(plot_runs(runs, out, labels=labels))
    except PlotError as err:
        print(f"tunekit plot: error: {err}", file=sys.stderr)
        return 1
    return 0
