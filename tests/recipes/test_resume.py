"""Exact resume through the recipes: SIGTERM + resume=auto (LoRA), explicit step dir (full)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from _recipe_helpers import FAST, REPO, result, run_recipe, step_losses, val_losses


def test_sigterm_saves_exits_0_and_resume_auto_reproduces_losses(tmp_path):
    cfg = [*FAST, "max_steps_per_epoch=60", "batch_size=2", "lora.dropout=0.1"]
    ref = tmp_path / "reference_root" / "ref"
    run_recipe("lora_finetune", ref, *cfg)

    root = tmp_path / "outputs"
    first = root / "a"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={first}", *cfg],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = first / "logs" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"loss"') >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    res = result(first)
    assert res["interrupted"], (out[-2000:], err[-2000:])
    k = res["global_step"]
    assert 3 <= k < 60 and "received SIGTERM" in err
    assert (first / f"step_{k}" / "COMPLETE").is_file()

    # resume=auto from a new run dir beside it: picks the newest complete checkpoint of the
    # same recipe under the same output root (run a's step_k).
    second = root / "b"
    proc2 = run_recipe("lora_finetune", second, *cfg, "resume=auto")
    assert f"resuming from {first / f'step_{k}'}" in proc2.stdout
    expected, resumed = step_losses(ref), step_losses(second)
    assert sorted(resumed) == list(range(k + 1, 61))
    assert {s: expected[s] for s in resumed} == resumed  # bit for bit
    assert val_losses(second)[60] == val_losses(ref)[60]


def test_full_finetune_resume_from_step_dir_across_epoch_boundary(tmp_path):
    cfg = [*FAST, "max_steps_per_epoch=4", "epochs=2", "save_every_n_steps=3", "optimizer.lr=1e-3"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    run_recipe("full_finetune", ref, *cfg)
    assert {p.name for p in ref.iterdir() if (p / "COMPLETE").is_file()} == {"step_3", "epoch_0", "step_6", "epoch_1"}
    run_recipe("full_finetune", resumed, *cfg, f"resume={ref / 'step_3'}")
    a, b = step_losses(ref), step_losses(resumed)
    assert sorted(b) == [4, 5, 6, 7, 8]
    assert {s: a[s] for s in b} == b
    assert result(resumed)["final_val_loss"] == result(ref)["final_val_loss"]


def test_resume_mismatch_is_one_paragraph(tmp_path, lora_run):
    """A LoRA checkpoint given to full_finetune (and a wrong rank to lora) is refused clearly."""
    proc = run_recipe("full_finetune", tmp_path / "x", *FAST, f"resume={lora_run / 'epoch_0'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "saved by lora_finetune" in proc.stderr
    proc = run_recipe("lora_finetune", tmp_path / "y", *FAST, "lora.rank=4", f"resume={lora_run}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "trained with other settings" in proc.stderr and "resume_accept=[lora]" in proc.stderr
    # Accepting the change still cannot load an adapter of another shape.
    proc = run_recipe("lora_finetune", tmp_path / "z", *FAST, "lora.rank=4", "resume_accept=[lora]",
                      f"resume={lora_run}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not match this run's `lora` settings" in proc.stderr
