"""Helpers for the recipe tests: run the real entrypoints in subprocesses, read their records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Small and fast everywhere: a few optimizer steps of short samples, no per-step stdout lines.
FAST = ["epochs=1", "max_steps_per_epoch=3", "batch_size=4", "log_every_n_steps=1", "plots=false",
        "metric_logger.also_stdout=false",
        "examples.show=0", "examples.score=0"]  # the default task's before/after answers: tests/run


def run_recipe(recipe: str, run_dir: Path | None, *overrides: str, check: bool = True,
               timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m recipes.<recipe> [hydra.run.dir=run_dir] overrides...`` from the repo root."""
    args = [sys.executable, "-m", f"recipes.{recipe}"]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    args += list(overrides)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{global step: loss}`` from the run's ``logs/metrics.jsonl``."""
    out = {}
    for line in (Path(run_dir) / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def val_losses(run_dir: Path) -> dict[int, float]:
    """``{global step: val_loss}`` from the run's ``logs/metrics.jsonl``."""
    out = {}
    for line in (Path(run_dir) / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            out[rec["step"]] = rec["val_loss"]
    return out


def result(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "result.json").read_text())
