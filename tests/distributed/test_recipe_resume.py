"""`torchrun --nproc-per-node 2 -m recipes.lora_finetune` (FSDP2, gloo), resumed in one process.

The two-rank run (2 ranks x batch 2, fp32) writes a sharded `step_2/` (DCP); one process
(batch 4: the same global batch) resumes from it with `resume=<step dir>`. Both are compared
with one uninterrupted process at batch 4. Tolerance: rtol 1e-5 on every step's loss and the
final validation loss (fp32; the ranks sum the same tokens in a different order, and their
matmuls see differently padded batches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RTOL = 1e-5
COMMON = ["device=cpu", "dtype=fp32", "epochs=1", "max_steps_per_epoch=4", "log_every_n_steps=1",
          "metric_logger.also_stdout=false", "optimizer.lr=3e-3", "lr_scheduler.num_warmup_steps=1"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "HYDRA_FULL_ERROR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], run_dir: Path) -> None:
    proc = subprocess.run([*args, f"hydra.run.dir={run_dir}"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _val(run_dir: Path) -> float:
    return json.loads((run_dir / "result.json").read_text())["final_val_loss"]


def test_torchrun_lora_sharded_step_resumes_in_one_process(tmp_path):
    one = [sys.executable, "-m", "recipes.lora_finetune", *COMMON]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), "-m", "recipes.lora_finetune", *COMMON]
    ref, sharded, resumed = tmp_path / "ref", tmp_path / "two_ranks", tmp_path / "resumed"
    _run([*one, "batch_size=4"], ref)
    _run([*two, "batch_size=2", "save_every_n_steps=2"], sharded)
    step2 = sharded / "step_2"
    assert (step2 / "COMPLETE").is_file() and len(list((step2 / "state" / "dcp").glob("*.distcp"))) == 2
    assert (sharded / "epoch_0/adapter/adapter_model.safetensors").is_file()  # full, by rank 0
    _run([*one, "batch_size=4", f"resume={step2}"], resumed)

    a, b, c = _losses(ref), _losses(sharded), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and sorted(c) == [3, 4]
    assert a[4] < a[1] - 0.05  # the adapters learn: a real comparison, not a flat line
    for s in (1, 2, 3, 4):  # fp32 on 2 ranks (a bf16 policy would be off by ~1e-3)
        assert b[s] == pytest.approx(a[s], rel=RTOL), (s, a, b)
    for s in (3, 4):
        assert c[s] == pytest.approx(a[s], rel=RTOL), (s, a, c)
    assert _val(resumed) == pytest.approx(_val(ref), rel=RTOL)
    info = json.loads((resumed / "run_info.json").read_text())
    assert info["resumed_from"] == str(step2)
