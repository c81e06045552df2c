"""Bad-input suite, class "faults": kills, full and read-only disks never lose what was saved.

The disk cases mount a small tmpfs (root only; skipped with the reason elsewhere). Each asserts
that every checkpoint saved before the fault is byte-identical afterwards, and that the run
continues from it with ``resume=auto``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _harness import FAST, REPO, _env, assert_ok, assert_unchanged, assert_user_error, run_recipe, snapshot


def _mount_tmpfs(path: Path, size: str, *, read_only: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


@pytest.fixture()
def small_disk(tmp_path):
    mounts: list[Path] = []

    def make(size: str, *, read_only: bool = False) -> Path:
        d = tmp_path / f"disk{len(mounts)}"
        _mount_tmpfs(d, size, read_only=read_only)
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def test_full_disk_keeps_the_previous_checkpoint_and_resume_continues(small_disk, tmp_path):
    # One LoRA checkpoint of the tiny model is ~4.6 MB: the disk holds the first, not the second.
    disk = small_disk("7m")
    run = disk / "run"
    proc = run_recipe("lora_finetune", run, *FAST, "max_steps_per_epoch=3", "save_every_n_steps=1")
    assert_user_error(proc, "disk is full", "intact", "resume=auto", "hydra.run.dir")
    saved = sorted(p.name for p in run.glob("step_*"))
    assert saved and all((run / s / "COMPLETE").is_file() for s in saved)
    assert not list(run.glob(".tmp-*")), "a partial save was left behind"
    before = {s: snapshot(run / s) for s in saved}
    # Same run moved to a roomy disk: it continues from the newest complete checkpoint.
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(run), str(moved)], check=True)
    for s, snap in before.items():
        assert_unchanged(snap, moved / s)
    proc = run_recipe("lora_finetune", moved, *FAST, "max_steps_per_epoch=3", "save_every_n_steps=1",
                      "resume=auto")
    assert_ok(proc, "resuming from", saved[-1])


def test_read_only_output_directory_is_one_paragraph(small_disk):
    disk = small_disk("1m", read_only=True)
    proc = run_recipe("lora_finetune", disk / "run", *FAST)
    assert_user_error(proc, str(disk), "read-only", "hydra.run.dir")
    assert not (disk / "run").exists()


def test_read_only_existing_run_directory_is_one_paragraph(small_disk, tmp_path):
    disk = small_disk("8m")
    run = disk / "run"
    assert_ok(run_recipe("lora_finetune", run, *FAST))
    before = snapshot(run)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    proc = run_recipe("lora_finetune", run, *FAST, "epochs=2", "resume=auto")
    assert_user_error(proc, "read-only", "hydra.run.dir")
    assert_unchanged(before, run)


def test_kill_9_during_a_save_then_resume_auto_is_bit_identical(tmp_path):
    """SIGKILL the moment a save's temporary directory appears; resume=auto equals a clean run."""
    cfg = [*FAST[:1], "max_steps_per_epoch=8", *FAST[2:], "save_every_n_steps=2", "lora.dropout=0.1"]
    ref = tmp_path / "ref"
    assert_ok(run_recipe("lora_finetune", ref, *cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", *cfg],
                            cwd=REPO, env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    killed_mid_save = False
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in run.glob(".tmp-step_*")] if run.is_dir() else []
        if tmp and (run / "step_2").is_dir():  # the second save is being written
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_save = True
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    if not killed_mid_save:
        pytest.skip("the run finished before a save could be interrupted (machine too fast to catch it)")
    assert proc.returncode == -signal.SIGKILL
    complete = sorted(p.name for p in run.glob("step_*") if (p / "COMPLETE").is_file())
    assert "step_2" in complete
    before = {s: snapshot(run / s) for s in complete}
    assert_ok(run_recipe("lora_finetune", run, *cfg, "resume=auto"), "resuming from")
    for s, snap in before.items():
        if (run / s).is_dir():  # not pruned: byte-identical
            assert_unchanged(snap, run / s)
    want, got = _losses(ref), _losses(run)
    assert {k: got[k] for k in want if k > 2} == {k: v for k, v in want.items() if k > 2}
    assert json.loads((run / "result.json").read_text())["final_train_loss"] == \
        json.loads((ref / "result.json").read_text())["final_train_loss"]


def test_sigterm_saves_and_exits_0(tmp_path):
    run = tmp_path / "run"
    cfg = [*FAST[:1], "max_steps_per_epoch=60", *FAST[2:], "batch_size=2"]
    proc = subprocess.Popen([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", *cfg],
                            cwd=REPO, env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "logs" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"loss"') >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "received SIGTERM" in err and "resume=" in out
    step = json.loads((run / "result.json").read_text())["global_step"]
    assert (run / f"step_{step}" / "COMPLETE").is_file()


def test_ctrl_c_while_the_data_is_tokenized_is_one_paragraph(tmp_path):
    """Ctrl-C before the loop's own handler is installed (here: tokenizing a large file)."""
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say something about llama number {i}.",
                                        "output": f"Llama number {i} likes grass and hay."}) + "\n"
                            for i in range(150_000)))
    data_before = snapshot(tmp_path)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", *FAST,
                             "dataset=alpaca", f"dataset.source={data}"],
                            cwd=REPO, env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (run / "lora_finetune.log").exists():
        time.sleep(0.01)
    time.sleep(1.0)  # into the imports / tokenizing; training cannot have started on 150k rows yet
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if "received SIGINT" in err:
        pytest.skip("the data was tokenized before the signal arrived (machine too fast)")
    # 130, or ended by SIGINT itself after the paragraph (-2; a shell shows both as 130): seen once in
    # ~10 runs when the signal lands inside the data loader's native reading code.
    assert proc.returncode in (130, -signal.SIGINT), err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert "interrupted (Ctrl-C)" in err and "resume=auto" in err
    assert not list(run.glob("epoch_*")) and not list(run.glob(".tmp-*"))
    assert_unchanged({k: v for k, v in data_before.items() if k == "big.jsonl"}, tmp_path, allow_new=True)


def test_ctrl_c_of_a_tunekit_command_is_one_line(tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say something about llama number {i}.",
                                        "output": f"Llama number {i} likes grass and hay."}) + "\n"
                            for i in range(150_000)))
    proc = subprocess.Popen([sys.executable, "-m", "tunekit.cli.main", "validate", "lora_finetune", "dataset=alpaca",
                             f"dataset.source={data}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(None))
    time.sleep(3.0)  # composing, importing torch or tokenizing the 150k rows
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("validate finished before the signal arrived (machine too fast)")
    assert proc.returncode in (130, -signal.SIGINT), err[-3000:]  # see the test above
    assert "Traceback" not in out + err and "tunekit validate: interrupted (Ctrl-C)" in err


def test_two_runs_started_at_once_into_one_new_directory(tmp_path):
    """Both used to train: one replaced the other's epoch_0 and the metrics file held both runs."""
    run = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", *FAST,
                               f"lora.rank={rank}"], cwd=REPO, env=_env(None), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (8, 4)]
    results = [(p, *p.communicate(timeout=240)) for p in procs]
    ok = [r for r in results if r[0].returncode == 0]
    refused = [r for r in results if r[0].returncode != 0]
    assert len(ok) == 1 and len(refused) == 1, [(r[0].returncode, r[2][-500:]) for r in results]
    p, out, err = refused[0]
    assert p.returncode == 1 and "Traceback" not in out + err and "Nothing was written" in err
    assert (f"writing into the run directory {run} right now" in err  # both started: the lock
            or f"{run} already holds another" in err), err[-2000:]  # the winner had already logged
    assert f"resume={run}" in err and "hydra.run.dir" in err
    steps = [json.loads(line)["step"] for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps)), f"two runs in one metrics file: {steps}"
    winner_rank = 8 if procs[0].returncode == 0 else 4
    saved = json.loads((run / "epoch_0" / "checkpoint.json").read_text())
    assert saved["trained_with"]["lora"]["rank"] == winner_rank  # the run that trained wrote the checkpoint
