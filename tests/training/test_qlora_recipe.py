"""QLoRA through the real recipe: outputs (PEFT adapter onto the full-precision base, merged
weights in the input's format, adapter state), the merge drift in the run's records, and a
bit-exact resume from a step checkpoint. Two short runs of the tiny model, shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")

REPO = Path(__file__).resolve().parents[2]
TINY_HF = REPO / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"
CFG = ["lora.quantize_base=nf4", "lora.merge_base=original", "epochs=1", "max_steps_per_epoch=3",
       "save_every_n_steps=2", "batch_size=2", "max_seq_len=128", "log_every_n_steps=1", "max_eval_batches=2",
       "dataset.val_fraction=0.05", "metric_logger.also_stdout=false", "lr_scheduler.num_warmup_steps=0",
       "lora.targets=[q_proj,v_proj,w2]"]


def _run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run_dir}", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    first, resumed = root / "first", root / "resumed"
    _run(first, *CFG)
    _run(resumed, *CFG, f"resume={first / 'step_2'}")
    return first, resumed


def test_resume_from_a_step_checkpoint_is_bit_exact(runs):
    first, resumed = runs
    losses = {r["step"]: r["loss"] for r in _records(first) if "loss" in r}
    again = {r["step"]: r["loss"] for r in _records(resumed) if "loss" in r}
    assert sorted(losses) == [1, 2, 3] and sorted(again) == [3]
    assert again[3] == losses[3]


def test_merge_drift_is_reported(runs):
    first, _ = runs
    drift = [r for r in _records(first) if "merge_drift" in r]
    assert len(drift) == 1
    d = drift[0]
    val = [r["val_loss"] for r in _records(first) if "val_loss" in r][-1]
    assert d["val_loss_trained"] == val
    assert abs(d["val_loss_merged_dequantized"] - val) < 1e-4  # the function that was trained
    assert d["merge_drift"] == pytest.approx(d["val_loss_merged_original"] - val)  # merge_base=original


def test_outputs_load_in_peft_and_transformers(runs):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    first, _ = runs
    ckpt = first / "epoch_0"
    assert (ckpt / "state" / "adapter_0.pt").is_file() and (ckpt / "COMPLETE").is_file()
    assert sorted(p.name for p in (ckpt / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["format"] == "hf" and info["trained_with"]["lora"]["quantize_base"] == "nf4"

    base = AutoModelForCausalLM.from_pretrained(TINY_HF, dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}  # PEFT merges in place
    peft_model = PeftModel.from_pretrained(base, ckpt / "adapter")  # the QLoRA user's way back
    merged_by_peft = peft_model.merge_and_unload().state_dict()
    saved = load_file(next((ckpt / "model").glob("*.safetensors")))
    # merge_base=original: the saved weights are the adapter merged onto the full-precision base,
    # which is what PEFT computes from the exported adapter.
    assert set(saved) <= set(merged_by_peft)
    for k, v in saved.items():
        torch.testing.assert_close(v.float(), merged_by_peft[k].float(), atol=1e-5, rtol=1e-5, msg=k)
    changed = [k for k in saved if "q_proj" in k and not torch.equal(saved[k], original[k])]
    assert changed  # the adapter did something
    tokens = torch.tensor([[1, 5, 9, 13]])
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=torch.float32)
    torch.testing.assert_close(reloaded(tokens).logits, peft_model(tokens).logits, atol=1e-4, rtol=1e-4)
