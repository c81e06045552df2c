"""Hydra callbacks shipped with tunekit (configured in the primary YAMLs' ``hydra.callbacks``).

``SweepSummary`` runs after a ``-m`` sweep and writes, into the sweep directory,

- ``summary.json``: one record per job: ``job`` (number), ``dir``, ``overrides``,
  ``final_train_loss``, ``final_val_loss``, ``global_step``, ``interrupted``, ``status``;
- ``summary.md``: the same as a table, best validation loss marked.

It reads each job's ``result.json`` (written by the recipes) and ``.hydra/overrides.yaml``,
so it works for any launcher whose jobs write into ``<sweep dir>/<subdir>`` (basic, submitit).
A job that failed is listed with ``status: "failed"`` and ``error`` (its one-paragraph reason,
from the ``failure.json`` that ``recipe_main`` leaves in the job dir); a job without either file
(killed, still running) with ``status: "no result"``. The summary is written whatever the jobs
did, and the records of the last sweep stay in :data:`LAST_SWEEP` so the entrypoint can end a
sweep with failed jobs with one paragraph and status 1. No torch import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tunekit.config.secrets import redact_override

__all__ = ["FAILURE_FILE", "LAST_SWEEP", "SweepSummary", "failed_jobs_paragraph",
           "summarize_sweep", "write_job_failure"]

RESULT_FILE = "result.json"  # tunekit.training.setup.RESULT_FILE (kept torch-free here)
FAILURE_FILE = "failure.json"

#: ``{"dir": sweep dir, "records": [...]}`` of the last sweep summarised in this process.
LAST_SWEEP: dict[str, Any] = {}


def write_job_failure(job_dir: str | Path, reason: str) -> None:
    """Leave a sweep job's one-paragraph failure in ``<job_dir>/failure.json``."""
    d = Path(job_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (FAILURE_FILE + ".tmp")
    tmp.write_text(json.dumps({"status": "failed", "error": reason}, indent=2) + "\n")
    tmp.replace(d / FAILURE_FILE)


def failed_jobs_paragraph(sweep: dict[str, Any]) -> str:
    """One paragraph naming every failed job of a summarised sweep, its overrides and reason."""
    records = sweep["records"]
    failed = [r for r in records if r["status"] == "failed"]
    parts = [
        ("" if r["job"] == "-" else f"job {r['job']} ({' '.join(r['overrides']) or 'no overrides'}): ")
        + " ".join(str(r.get("error") or "").split()).rstrip(".")
        for r in failed
    ]
    return (
        f"{len(failed)} of {len(records)} sweep job(s) failed: " + "; ".join(parts)
        + f". The other jobs' results are in {Path(sweep['dir']) / 'summary.md'}; fix the"
        " failed settings and run those points again."
    )


def _job_number(d: Path) -> tuple[int, str]:
    return (int(d.name), d.name) if d.name.isdigit() else (10**9, d.name)


def _overrides(job_dir: Path) -> list[str]:
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    try:
        return [redact_override(str(o)) for o in OmegaConf.load(f)]
    except Exception:
        return []


def summarize_sweep(sweep_dir: str | Path, not_started: str | None = None) -> list[dict[str, Any]]:
    """Collect every job of ``sweep_dir`` and write ``summary.json`` and ``summary.md`` there.

    Args:
        sweep_dir: the sweep directory (``hydra.sweep.dir``).
        not_started: the reason a sweep point could not even be composed (the sweep stopped
            there); it is listed as one more failed job.

    Returns:
        The records, in job order.
    """
    root = Path(sweep_dir)
    records: list[dict[str, Any]] = []
    jobs = [d for d in (root.iterdir() if root.is_dir() else []) if d.is_dir() and (
        (d / ".hydra").is_dir() or (d / RESULT_FILE).is_file() or (d / FAILURE_FILE).is_file())]
    for d in sorted(jobs, key=_job_number):
        rec: dict[str, Any] = {"job": d.name, "dir": str(d), "overrides": _overrides(d)}
        try:
            failure = json.loads((d / FAILURE_FILE).read_text())
        except (OSError, ValueError):
            failure = None
        try:
            result = json.loads((d / RESULT_FILE).read_text())
        except (OSError, ValueError):
            result = None
        if failure is not None:
            rec.update(status="failed", error=str(failure.get("error", "")),
                       final_train_loss=None, final_val_loss=None, global_step=None)
        elif result is None:
            rec.update(status="no result", final_train_loss=None, final_val_loss=None)
        else:
            rec.update(
                status="interrupted" if result.get("interrupted") else "ok",
                final_train_loss=result.get("final_train_loss"),
                final_val_loss=result.get("final_val_loss"),
                global_step=result.get("global_step"),
            )
            rec["overrides"] = rec["overrides"] or result.get("overrides", [])
        records.append(rec)
    if not_started is not None:
        records.append({"job": "-", "dir": None, "overrides": [], "status": "failed",
                        "error": "a sweep point does not compose, so Hydra started no (further)"
                                 f" job: {not_started}", "final_train_loss": None,
                        "final_val_loss": None, "global_step": None})
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary.json", json.dumps(records, indent=2) + "\n"),
                       ("summary.md", _table(records))):
        tmp = root / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(root / name)
    LAST_SWEEP.clear()
    LAST_SWEEP.update(dir=str(root), records=records)
    return records


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _table(records: list[dict[str, Any]]) -> str:
    vals = [r["final_val_loss"] for r in records if r.get("final_val_loss") is not None]
    best = min(vals) if vals else None
    lines = ["| job | overrides | final train loss | final val loss | status |",
             "|---|---|---|---|---|"]
    for r in records:
        mark = " (best)" if best is not None and r.get("final_val_loss") == best else ""
        status = r["status"]
        if r.get("error"):
            status += ": " + " ".join(str(r["error"]).split()).replace("|", "\\|")
        lines.append(f"| {r['job']} | {' '.join(r['overrides']) or '-'} | {_fmt(r.get('final_train_loss'))} "
                     f"| {_fmt(r.get('final_val_loss'))}{mark} | {status} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """After a multirun, summarise the jobs into the sweep directory (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        LAST_SWEEP.clear()
        LAST_SWEEP["dir"] = str(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        records = summarize_sweep(sweep_dir)
        print(f"tunekit: sweep summary of {len(records)} job(s) in {sweep_dir / 'summary.md'}", flush=True)
