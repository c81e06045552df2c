"""Hydra callbacks shipped with tunekit (configured in the primary YAMLs' ``hydra.callbacks``).

``SweepSummary`` runs after a ``-m`` sweep and writes, into the sweep directory,

- ``summary.json``: one record per job: ``job`` (number), ``dir``, ``overrides``,
  ``final_train_loss``, ``final_val_loss``, ``global_step``, ``interrupted``, ``status``;
- ``summary.md``: the same as a table, best validation loss marked.

It reads each job's ``result.json`` (written by the recipes) and ``.hydra/overrides.yaml``,
so it works for any launcher whose jobs write into ``<sweep dir>/<subdir>`` (basic, submitit).
A job that failed or is still missing its ``result.json`` is listed with ``status: "no result"``.
No torch import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["SweepSummary", "summarize_sweep"]

RESULT_FILE = "result.json"  # tunekit.training.setup.RESULT_FILE (kept torch-free here)


def _job_number(d: Path) -> tuple[int, str]:
    return (int(d.name), d.name) if d.name.isdigit() else (10**9, d.name)


def _overrides(job_dir: Path) -> list[str]:
    f = job_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    try:
        return [str(o) for o in OmegaConf.load(f)]
    except Exception:
        return []


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Collect every job of ``sweep_dir`` and write ``summary.json`` and ``summary.md`` there.

    Returns:
        The records, in job order.
    """
    root = Path(sweep_dir)
    records: list[dict[str, Any]] = []
    jobs = [d for d in root.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / RESULT_FILE).is_file())]
    for d in sorted(jobs, key=_job_number):
        rec: dict[str, Any] = {"job": d.name, "dir": str(d), "overrides": _overrides(d)}
        try:
            result = json.loads((d / RESULT_FILE).read_text())
        except (OSError, ValueError):
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
    (root / "summary.json").write_text(json.dumps(records, indent=2) + "\n")
    (root / "summary.md").write_text(_table(records))
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
        lines.append(f"| {r['job']} | {' '.join(r['overrides']) or '-'} | {_fmt(r.get('final_train_loss'))} "
                     f"| {_fmt(r.get('final_val_loss'))}{mark} | {r['status']} |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """After a multirun, summarise the jobs into the sweep directory (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        records = summarize_sweep(sweep_dir)
        print(f"tunekit: sweep summary of {len(records)} job(s) in {sweep_dir / 'summary.md'}", flush=True)
