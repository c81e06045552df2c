"""Bad input in a ``-m`` sweep: a failing job is reported, the others keep their results.

``summary.md`` / ``summary.json`` are always written (a failed job has status ``failed`` and
its one-paragraph reason), the sweep ends with one paragraph naming the failed jobs, and the
exit status is 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.reliability._harness import (
    FAST,
    REPO,
    _env,
    assert_user_error,
    output,
)


def run_sweep(sweep_dir: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m recipes.lora_finetune -m hydra.sweep.dir=... overrides...``."""
    args = [sys.executable, "-m", "recipes.lora_finetune", "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_env(None))


def _summary(sweep_dir: Path) -> list[dict]:
    assert (sweep_dir / "summary.md").is_file()
    return json.loads((sweep_dir / "summary.json").read_text())


def test_one_failing_job_is_reported_and_the_other_keeps_its_result(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, "optimizer.lr=1e-4,-1", *FAST)
    text = assert_user_error(proc, "1 of 2 sweep job(s) failed", "job 1 (optimizer.lr=-1",
                             "`optimizer.lr`=-1", "`optimizer.lr=0.001`", "summary.md")
    last = [line for line in text.strip().splitlines() if line.startswith("tunekit lora_finetune: 1 of 2")]
    assert len(last) == 1  # the closing paragraph is one line
    ok, failed = _summary(sweep)
    assert ok["status"] == "ok" and ok["final_train_loss"] is not None
    assert failed["status"] == "failed" and "`optimizer.lr`=-1" in failed["error"]
    assert "optimizer.lr=-1" in failed["overrides"]
    md = (sweep / "summary.md").read_text()
    assert "| ok |" in md and "failed: `optimizer.lr`=-1" in md
    assert (sweep / "0" / "result.json").is_file() and list((sweep / "0").glob("epoch_*"))
    assert not (sweep / "1" / "result.json").exists()


def test_every_job_failing_its_config_check_still_writes_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, "lora.rank=0,-1")
    assert_user_error(proc, "2 of 2 sweep job(s) failed", "job 0 (lora.rank=0)", "`lora.rank`=0: must be >= 1",
                      "job 1 (lora.rank=-1)", "`lora.rank`=-1: must be >= 1")
    assert [r["status"] for r in _summary(sweep)] == ["failed", "failed"]


def test_a_sweep_point_that_does_not_compose_is_summarised(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, "lora.rank=4,abc")
    assert_user_error(proc, "sweep job(s) failed", "does not compose", "`lora.rank=abc`",
                      "expects a value of type int")
    (record,) = _summary(sweep)
    assert record["status"] == "failed" and "lora.rank=abc" in record["error"]


def test_a_token_in_a_sweep_is_refused_before_anything_is_printed_or_written(tmp_path):
    token = "hf_" + "Zq8" * 12
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, f"+hf_token={token}", "lora.rank=4,8")
    assert_user_error(proc, "`+hf_token`", "access token", "HF_TOKEN")
    assert token not in output(proc)
    assert not sweep.exists()
