"""The DPO recipes through their real entry points: metrics under TRL's names, the epoch_N/
layout, exact resume (interrupted + resumed == uninterrupted, on the CPU) and full DPO with
precomputed reference log-probabilities. Three short subprocess runs, shared by the tests."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.reliability._harness import assert_unchanged, assert_user_error, snapshot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from _recipe_helpers import run_recipe  # noqa: E402

SHORT = ["epochs=1", "batch_size=2", "max_seq_len=64", "dataset.template=plain", "dataset.val_fraction=0",
         "metric_logger.also_stdout=false"]
NAMES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
         "logps/chosen", "logps/rejected")


def _records(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec
    return out


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory) -> dict[str, Path]:
    """4 steps saving at step 2 (logging every 4: the interval spans the save), then the same
    run resumed from step_2 in another directory."""
    base = tmp_path_factory.mktemp("lora_dpo")
    full, resumed = base / "full", base / "resumed"
    args = [*SHORT, "max_steps_per_epoch=4", "save_every_n_steps=2", "log_every_n_steps=4"]
    run_recipe("lora_dpo", full, *args)
    run_recipe("lora_dpo", resumed, *args, f"resume={full / 'step_2'}")
    return {"full": full, "resumed": resumed}


def test_lora_dpo_logs_trl_metrics_and_writes_the_checkpoint_layout(lora_runs):
    full = lora_runs["full"]
    rec = _records(full)[4]
    assert all(isinstance(rec[n], float) and math.isfinite(rec[n]) for n in NAMES), rec
    assert 0.0 <= rec["rewards/accuracies"] <= 1.0
    assert math.isclose(rec["rewards/margins"], rec["rewards/chosen"] - rec["rewards/rejected"], abs_tol=1e-6)
    ckpt = full / "epoch_0"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "adapter" / "adapter_config.json").is_file()
    assert (ckpt / "model" / "config.json").is_file() and (ckpt / "state" / "adapter_0.pt").is_file()
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["format"] == "hf" and info["merged_adapter"] is not None
    assert info["trained_with"]["recipe"] == "lora_dpo"
    assert info["trained_with"]["objective"] == {"loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.0,
                                                 "reference": "model"}


def test_lora_dpo_resumed_equals_uninterrupted_bit_for_bit(lora_runs):
    full, resumed = _records(lora_runs["full"]), _records(lora_runs["resumed"])
    assert sorted(resumed) == [4]
    assert {n: resumed[4][n] for n in NAMES} == {n: full[4][n] for n in NAMES}  # interval sums resumed too
    a = (lora_runs["full"] / "epoch_0" / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (lora_runs["resumed"] / "epoch_0" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_resume_with_other_dpo_settings_is_refused_and_nothing_moves(lora_runs, tmp_path):
    full = lora_runs["full"]
    before = snapshot(full)
    proc = run_recipe("lora_dpo", tmp_path / "other", *SHORT, "max_steps_per_epoch=4", "save_every_n_steps=2",
                      "log_every_n_steps=4", f"resume={full / 'step_2'}", "dpo.beta=0.5", check=False)
    assert_user_error(proc, "objective", "dpo.*", "resume_accept")
    assert_unchanged(before, full)


def test_the_other_kind_of_checkpoint_names_the_recipe_that_saved_it(lora_runs):
    from tunekit.checkpointing import CheckpointError
    from tunekit.run.resume import _check_recipe

    with pytest.raises(CheckpointError, match=r"saved by lora_dpo .*`python -m recipes.lora_dpo resume=...`"):
        _check_recipe(lora_runs["full"] / "epoch_0", lora=False)  # what full_dpo resume=<it> says


def test_full_dpo_with_precomputed_reference(tmp_path):
    # with the optimizer stepped in backward (the low-memory option the SFT recipes share)
    run = tmp_path / "full"
    proc = run_recipe("full_dpo", run, *SHORT, "max_steps_per_epoch=2", "log_every_n_steps=1",
                      "dpo.reference=precomputed", "optimizer_in_backward=true")
    assert "reference: precomputed" in proc.stdout + proc.stderr
    recs = _records(run)
    assert math.isclose(recs[1]["loss"], math.log(2), rel_tol=1e-5)  # policy == reference at step 1
    assert recs[1]["rewards/accuracies"] == 0.0 and all(n in recs[2] for n in NAMES)
    ckpt = run / "epoch_0"
    assert list((ckpt / "model").glob("*.safetensors")) and not (ckpt / "adapter").exists()
    assert json.loads((ckpt / "checkpoint.json").read_text())["trained_with"]["recipe"] == "full_dpo"
    import torch

    state = torch.load(ckpt / "state" / "recipe_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]  # one optimizer per parameter: stepped in backward
    assert len(groups) == len(state["optimizer"]["state"]) > 1
