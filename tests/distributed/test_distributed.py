"""Two-rank FSDP2 training on the CPU (gloo) against one process, sharded resume, run dirs.

One ``torchrun --nproc-per-node 2`` launch (tests/distributed/_worker.py, ~10 s on 2 cores)
runs every two-rank scenario; the one-process references run in this process.
Tolerance: per-step losses agree to rtol 1e-5 (fp32; the two runs sum the same tokens in a
different order: per-rank partial sums, then an all-reduce).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import _worker as W

REPO = Path(__file__).resolve().parents[2]
RTOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         str(REPO / "tests/distributed/_worker.py"), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _record(out: Path, name: str, rank: int = 0) -> dict:
    return json.loads((out / f"{name}.rank{rank}.json").read_text())


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    torch.set_num_threads(1)


def test_ranks_agree(two_ranks):
    for name in ("full", "lora", "sigterm"):
        assert _record(two_ranks, name, 0) == _record(two_ranks, name, 1)


def test_full_two_ranks_match_one_process(two_ranks, tmp_path):
    two = _record(two_ranks, "full")
    one = W.run("full_ref", tmp_path, batch_size=4, steps=4, save_every=2)  # same global batch
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["losses"] == pytest.approx(one["losses"], rel=RTOL)
    # End-of-epoch checkpoint: a full HF checkpoint written by rank 0, the same weights.
    from safetensors.torch import load_file

    a = {k: v for f in sorted((two_ranks / "full/epoch_0/model").glob("*.safetensors")) for k, v in load_file(f).items()}
    b = {k: v for f in sorted((tmp_path / "full_ref/epoch_0/model").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_lora_two_ranks_match_one_process(two_ranks, tmp_path):
    # 2 ranks x batch 1 x accumulation 2 (gradient sync skipped on the first micro-batch)
    # against 1 process x batch 2 x accumulation 2.
    two = _record(two_ranks, "lora")
    one = W.run("lora_ref", tmp_path, lora=True, batch_size=2, ga=2, steps=3)
    assert two["losses"] == pytest.approx(one["losses"], rel=RTOL)
    merged = two_ranks / "lora/epoch_0"
    assert (merged / "state/adapter_0.pt").is_file() and (merged / "adapter/adapter_config.json").is_file()


def test_sharded_step_checkpoint_resumes_on_one_process(two_ranks, tmp_path):
    step2 = two_ranks / "full/step_2"
    assert (step2 / "COMPLETE").is_file() and (step2 / "state/dcp/.metadata").is_file()
    assert len(list((step2 / "state" / "dcp").glob("*.distcp"))) == 2  # one file of shards per rank
    two = _record(two_ranks, "full")
    resumed = W.run("resumed", tmp_path, batch_size=4, steps=4, resume_from=str(step2))
    assert resumed["world_size"] == 1 and resumed["global_step"] == 4
    assert resumed["losses"] == pytest.approx(two["losses"][2:], rel=RTOL)


def _safetensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_qlora_two_ranks_match_one_process(two_ranks, tmp_path):
    # QLoRA under FSDP2: NF4 base weights sharded as 4-bit data, adapters trained; the same
    # losses, adapter and merged weights as one process holding the same NF4 weights.
    pytest.importorskip("torchao")
    two = _record(two_ranks, "qlora")
    assert two["world_size"] == 2 and _record(two_ranks, "qlora", 1)["losses"] == two["losses"]
    one = W.run("qlora_ref", tmp_path, qlora=True, batch_size=2, ga=2, steps=3, save_every=2)
    assert two["losses"] == pytest.approx(one["losses"], rel=RTOL)
    a, b = two_ranks / "qlora/epoch_0", tmp_path / "qlora_ref/epoch_0"
    merged_two, merged_one = _safetensors(a / "model"), _safetensors(b / "model")
    assert merged_two.keys() == merged_one.keys() and "model.layers.0.self_attn.q_proj.weight" in merged_two
    for k in merged_one:
        torch.testing.assert_close(merged_two[k], merged_one[k], rtol=1e-4, atol=1e-5)
    adapter_two, adapter_one = _safetensors(a / "adapter"), _safetensors(b / "adapter")
    assert adapter_two.keys() == adapter_one.keys() and len(adapter_one) == 2 * 4 * 2 + 2
    for k in adapter_one:
        torch.testing.assert_close(adapter_two[k], adapter_one[k], rtol=1e-4, atol=1e-6)


def test_qlora_sharded_step_checkpoint_leaves_the_nf4_base_out_and_resumes_exactly(two_ranks):
    from tunekit.checkpointing import read_checkpoint_info, sharded_model_shapes

    step2 = two_ranks / "qlora/step_2"
    assert read_checkpoint_info(step2)["base_weights"] == "base checkpoint"
    saved = sharded_model_shapes(step2)
    assert "layers.0.attn.q_proj.lora_a.weight" in saved and "tok_embeddings.weight" in saved
    assert not any(k.endswith(("q_proj.weight", "v_proj.weight", "k_proj.weight", "w1.weight", "output.weight"))
                   for k in saved)  # the 4-bit base is read again from the base checkpoint
    resumed, full = _record(two_ranks, "qlora_resumed"), _record(two_ranks, "qlora")
    assert resumed["global_step"] == 3 and resumed["losses"] == full["losses"][2:]  # bit-exact


def test_qlora_sharded_step_checkpoint_resumes_on_one_process(two_ranks, tmp_path):
    one = W.run("qlora_one", tmp_path, qlora=True, batch_size=2, ga=2, steps=3,
                resume_from=str(two_ranks / "qlora/step_2"))
    assert one["world_size"] == 1 and one["global_step"] == 3
    assert one["losses"] == pytest.approx(_record(two_ranks, "qlora")["losses"][2:], rel=RTOL)


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(two_ranks):
    for rank in (0, 1):
        rec = _record(two_ranks, "sigterm", rank)
        assert rec["interrupted"] and rec["global_step"] == 2 and rec["checkpoints"] == [[0, 2]]
    assert (two_ranks / "sigterm/step_2/COMPLETE").is_file()


# ----------------------------------------------------------------------------- launch environment


def test_launcher_env_torchrun_submitit_slurm():
    from tunekit.distributed import launcher_env

    assert launcher_env({}) is None
    assert launcher_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # single process: no group
    tr = launcher_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert tr == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    sub = [launcher_env({"SUBMITIT_LOCAL_GLOBALID": str(r), "SUBMITIT_LOCAL_LOCALID": str(r),
                         "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "77"}) for r in (0, 1)]
    assert [s["RANK"] for s in sub] == ["0", "1"] and sub[0]["MASTER_PORT"] == sub[1]["MASTER_PORT"]
    slurm = launcher_env({"SLURM_PROCID": "9", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
                          "SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "gpu[007-008]"})
    assert (slurm["RANK"], slurm["WORLD_SIZE"], slurm["LOCAL_RANK"]) == ("9", "16", "1")
    assert slurm["MASTER_ADDR"] == "gpu007"  # no scontrol here: the fallback parser
    # A batch script's own shell (no srun step) is not rank 0 of SLURM_NTASKS.
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}) is None


def test_init_distributed_single_process_is_a_noop():
    from tunekit.distributed import init_distributed, is_distributed

    assert init_distributed("cpu") == (0, 1) and not is_distributed()


# ----------------------------------------------------------------------------- run dirs, multirun


def _compose_dir(monkeypatch, env: dict[str, str]) -> str:
    from tunekit.config import compose

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return compose("full_finetune").output_dir


def test_run_dir_is_the_same_for_the_same_torchelastic_run_id(monkeypatch):
    a = _compose_dir(monkeypatch, {"TORCHELASTIC_RUN_ID": "job42", "RANK": "0"})
    b = _compose_dir(monkeypatch, {"TORCHELASTIC_RUN_ID": "job42", "RANK": "1"})
    assert a == b and a.endswith("outputs/full_finetune/job42")
    assert _compose_dir(monkeypatch, {"TORCHELASTIC_RUN_ID": "job43"}) != a


def test_run_id_rules():
    from tunekit.config.resolvers import run_id

    none = run_id({"TORCHELASTIC_RUN_ID": "none"})  # torchrun without --rdzv-id: the agent's start
    assert none == run_id({"TORCHELASTIC_RUN_ID": "none"}) and none.endswith(f"-p{os.getppid()}")
    assert run_id({"SLURM_JOB_ID": "5", "SLURM_STEP_NUM_TASKS": "8"}) == "slurm-5"
    assert run_id({"SLURM_JOB_ID": "6", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3",
                   "SLURM_STEP_NUM_TASKS": "2"}) == "slurm-5_3"
    assert run_id({"SUBMITIT_LOCAL_JOB_ID": "99", "SUBMITIT_LOCAL_NTASKS": "2"}) == "local-99"
    assert len(run_id({})) == len("2024-01-01_00-00-00")  # one process: the timestamp


def test_multirun_inside_torchrun_is_refused():
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "TORCHELASTIC_RUN_ID": "x"}
    proc = subprocess.run([sys.executable, "-m", "recipes.full_finetune", "-m", "optimizer.lr=1e-5,2e-5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "multirun (-m) sweep cannot run inside torchrun" in proc.stderr
    assert "hydra/launcher=slurm" in proc.stderr


def test_check_not_multirun_in_torchrun(monkeypatch):
    from tunekit.run.errors import MultirunInTorchrunError, check_not_multirun_in_torchrun

    check_not_multirun_in_torchrun("MULTIRUN")  # one process: fine
    check_not_multirun_in_torchrun("RUN")
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_not_multirun_in_torchrun("RUN")
    with pytest.raises(MultirunInTorchrunError, match="submitit|hydra/launcher"):
        check_not_multirun_in_torchrun("MULTIRUN")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # a job of a submitit sweep
    check_not_multirun_in_torchrun("MULTIRUN")


def test_submitit_local_launcher_runs_a_two_rank_job(tmp_path):
    """`-m hydra/launcher=local`: one submitit job of 2 local tasks (gloo) per sweep point."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.full_finetune", "-m", "hydra/launcher=local", "device=cpu",
         "dtype=fp32", "epochs=1", "max_steps_per_epoch=2", "batch_size=2", "optimizer.lr=1e-5",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert "global_rank=0(2)" in logs and "global_rank=1(2)" in logs
    state = torch.load(sweep / "0/epoch_0/state/recipe_state.pt", weights_only=True)
    assert state["recipe_state"]["world_size"] == 2
    assert json.loads((sweep / "0/result.json").read_text())["global_step"] == 2
    assert [d.name for d in sweep.iterdir() if not d.name.startswith(".") and d.is_dir()] == ["0"]


def test_torchrun_recipe_full_finetune(tmp_path):
    """`torchrun --nproc-per-node 2 -m recipes.full_finetune`: one run dir, sharded step, full epoch."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
         "127.0.0.1", "--master-port", str(_free_port()), "-m", "recipes.full_finetune", "device=cpu",
         "dtype=fp32", "epochs=1", "max_steps_per_epoch=3", "save_every_n_steps=2", "batch_size=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "outputs/full_finetune").iterdir())
    assert len(runs) == 1  # both ranks agreed on the run dir
    assert (runs[0] / "step_2/state/dcp/.metadata").is_file() and (runs[0] / "step_2/COMPLETE").is_file()
    assert list((runs[0] / "epoch_0" / "model").glob("*.safetensors"))
    assert json.loads((runs[0] / "result.json").read_text())["global_step"] == 3


def test_torchrun_recipe_qlora_bf16(tmp_path):
    """`torchrun --nproc-per-node 2 -m recipes.lora_finetune lora.quantize_base=nf4 dtype=bf16`:
    the NF4 base sharded, a step checkpoint without it, the merged model and PEFT adapter, the
    merge drift logged."""
    pytest.importorskip("torchao")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
         "127.0.0.1", "--master-port", str(_free_port()), "-m", "recipes.lora_finetune", "device=cpu",
         "dtype=bf16", "lora.quantize_base=nf4", "epochs=1", "max_steps_per_epoch=2", "save_every_n_steps=1",
         "batch_size=4", "examples.show=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = list((tmp_path / "outputs/lora_finetune").iterdir())
    assert json.loads((run / "step_1/checkpoint.json").read_text())["base_weights"] == "base checkpoint"
    assert (run / "epoch_0/adapter/adapter_model.safetensors").is_file()
    merged = _safetensors(run / "epoch_0/model")
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    logged = [json.loads(line) for line in (run / "logs/metrics.jsonl").read_text().splitlines()]
    assert any("merge_drift" in row for row in logged)
    assert json.loads((run / "result.json").read_text())["global_step"] == 2


def _one_rank_group(store_file: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(store_file), 1), rank=0,
                            world_size=1)


def test_process_group_teardown_destroys_the_group_after_success_and_failure(tmp_path):
    """The recipes' teardown: gloo left to interpreter finalisation can SIGABRT a finished run."""
    import torch.distributed as dist

    from tunekit.run.process import process_group_teardown

    with process_group_teardown():  # no group: nothing to do
        pass
    assert not dist.is_initialized()

    _one_rank_group(tmp_path / "store_ok")
    with process_group_teardown():
        dist.all_reduce(torch.ones(1))
    assert not dist.is_initialized()

    _one_rank_group(tmp_path / "store_err")
    with pytest.raises(ValueError, match="boom"), process_group_teardown():
        raise ValueError("boom")
    assert not dist.is_initialized()
