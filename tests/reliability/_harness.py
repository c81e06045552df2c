"""The bad-input suite's harness: run the real entry points, check the paragraph, check nothing moved.

Every case in ``tests/reliability`` goes through a real entry point (``python -m recipes.<name>``
or the ``tunekit`` command) in a subprocess, exactly as a user types it, and asserts:

- the exit status (1 for a user error unless the case says otherwise);
- that no Python traceback reaches the user (``HYDRA_FULL_ERROR`` is removed from the env);
- the words that name the key / file / row and the fix;
- for cases that touch saved files, that every byte saved before is still there afterwards
  (``snapshot`` before, ``assert_unchanged`` after).

Files are named by class (``test_config_cli.py``, ``test_data.py``, ``test_checkpoints.py``,
``test_resuming.py``, ``test_faults.py``, ``test_download.py``, ``test_generation.py``) so the
count per class is ``pytest --collect-only -q tests/reliability/test_<class>.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A few optimizer steps of short samples: enough to reach every code path a run has.
FAST = ["epochs=1", "max_steps_per_epoch=2", "batch_size=4", "log_every_n_steps=1", "plots=false",
        "metric_logger.also_stdout=false",
        "examples.show=0", "examples.score=0"]  # the default task's before/after answers: tests/run

_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s+File \".*\", line \d+", re.M)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_recipe(recipe: str, run_dir: Path | None, *overrides: str, timeout: float = 240,
               env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m recipes.<recipe> [hydra.run.dir=run_dir] overrides...``; never raises on failure."""
    args = [sys.executable, "-m", f"recipes.{recipe}"]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    args += list(overrides)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(env))


def run_tunekit(*args: str, timeout: float = 240, env: dict[str, str] | None = None,
                cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``tunekit <args>`` (the console script's module, so it runs from any checkout)."""
    return subprocess.run([sys.executable, "-m", "tunekit.cli.main", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=_env(env))


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout or "") + (proc.stderr or "")


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str, status: int = 1) -> str:
    """Exit ``status``, no traceback, and every needle (case-insensitive) in the output."""
    text = output(proc)
    assert proc.returncode == status, f"exit {proc.returncode}, wanted {status}:\n{text[-4000:]}"
    assert not _TRACEBACK.search(text), f"traceback shown to the user:\n{text[-4000:]}"
    low = text.lower()
    missing = [n for n in needles if n.lower() not in low]
    assert not missing, f"missing {missing} in:\n{text[-4000:]}"
    return text


def assert_ok(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 0 and every needle (case-insensitive) in the output (warnings, notes)."""
    return assert_user_error(proc, *needles, status=0)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (mode, sha256)}`` of every file under ``root`` (dirs by mode only)."""
    root = Path(root)
    out: dict[str, tuple[int, str]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = (0, "link:" + os.readlink(p))
        elif p.is_file():
            out[rel] = (p.stat().st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = (p.stat().st_mode & 0o7777, "dir")
    return out


def assert_unchanged(before: dict[str, tuple[int, str]], root: Path, *, allow_new: bool = False) -> None:
    """Every file recorded in ``before`` is byte-identical; no new file unless ``allow_new``."""
    after = snapshot(root)
    lost = [k for k in before if k not in after]
    changed = [k for k in before if k in after and after[k] != before[k]]
    assert not lost, f"lost under {root}: {lost}"
    assert not changed, f"changed under {root}: {changed}"
    if not allow_new:
        new = [k for k in after if k not in before]
        assert not new, f"written under {root}: {new}"
