"""LoRA outputs (merged model + PEFT adapter), training state, atomic saves, pruning and resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest
import torch
from _ckpt_helpers import tiny_tk_model

import tunekit.checkpointing._io as ckpt_io
from tunekit.checkpointing import (
    CheckpointError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    find_resume_dir,
    list_checkpoints,
    load_resume_state,
    load_training_state,
)

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output"]


def _lora_model(sd, spec):
    model = tiny_tk_model(lora=spec)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(".lora_" in k for k in missing)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.copy_(0.1 * torch.randn_like(p))  # non-zero B: the adapter changes the output
    return model.eval()


def _train_state(model, spec):
    from tunekit.modules.peft import get_adapter_state_dict, get_merged_state_dict

    return {"model": get_merged_state_dict(model), "adapter": get_adapter_state_dict(model),
            "adapter_config": dataclasses.asdict(spec)}  # fmt: skip


def test_peft_adapter_and_merged_model_match_tunekit_lora(hf_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunekit.modules.peft import LoRASpec

    spec = LoRASpec(rank=4, alpha=8.0, targets=ALL_TARGETS, rank_pattern={"layers.1.attn.q_proj": 2},
                    alpha_pattern={"w2": 2.0})  # fmt: skip
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "out")
    model = _lora_model(ckpt.load_checkpoint()["model"], spec)
    out = ckpt.save_checkpoint(_train_state(model, spec), epoch=0)

    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = model(tokens)
        base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
        torch.testing.assert_close(peft_model(tokens).logits, want, atol=1e-5, rtol=1e-5)
        merged = AutoModelForCausalLM.from_pretrained(out / "model", attn_implementation="eager", dtype=torch.float32)
        torch.testing.assert_close(merged.eval()(tokens).logits, want, atol=1e-5, rtol=1e-5)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {"layers.1.self_attn.q_proj": 2} and cfg["base_model_name_or_path"] == str(hf_dir)
    adapter_file = out / "state" / "adapter_0.pt"
    assert torch.load(adapter_file, weights_only=True).keys() == _train_state(model, spec)["adapter"].keys()
    # checkpoint.json records that model/ holds merged weights, and of which adapter file
    info = json.loads((out / "checkpoint.json").read_text())
    assert info["merged_adapter"] == {"sha256": hashlib.sha256(adapter_file.read_bytes()).hexdigest(),
                                      "file": "state/adapter_0.pt"}
    assert info["format"] == "hf" and info["epoch"] == 0 and info["step"] is None


def _state(sd, step):
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.ones(3)
    opt = torch.optim.AdamW([param])
    opt.step()
    return {"model": sd, "optimizer": opt.state_dict(), "lr_scheduler": {"last_epoch": step},
            "recipe_state": {"epoch": 0, "step": step, "seed": 7, "torch_rng": torch.get_rng_state(),
                             "python_rng": random.getstate(), "dataloader": {"batches_seen": step}}}  # fmt: skip


def test_training_state_and_resume_via_fields(hf_dir, tmp_path):
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "run")
    sd = ckpt.load_checkpoint()["model"]
    saved = _state(sd, 5)
    out = ckpt.save_checkpoint({**saved, "adapter": {"layers.0.attn.q_proj.lora_a.weight": torch.ones(2, 32)}},
                               epoch=0, intermediate_checkpoint=True, step=5)  # fmt: skip
    assert out.name == "step_5"
    assert json.loads((out / "COMPLETE").read_text())["intermediate"] is True
    # torchtune-style fields: paths relative to checkpoint_dir (here the saved step dir); the
    # files live in its state/ directory, found from the bare names as from the old flat layout.
    resumed = FullModelHFCheckpointer(out, tmp_path / "run", adapter_checkpoint="adapter_0.pt",
                                      recipe_checkpoint="recipe_state.pt", resume_from_checkpoint=True)  # fmt: skip
    state = resumed.load_checkpoint()
    assert state["recipe_state"]["step"] == 5 and state["recipe_state"]["dataloader"] == {"batches_seen": 5}
    assert torch.equal(state["recipe_state"]["torch_rng"], saved["recipe_state"]["torch_rng"])
    assert state["optimizer"]["state"][0]["step"] == 1
    assert torch.equal(state["adapter"]["layers.0.attn.q_proj.lora_a.weight"], torch.ones(2, 32))
    assert all(torch.equal(state["model"][k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match="needs checkpointer.recipe_checkpoint"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "run", resume_from_checkpoint=True)


def test_find_resume_dir_and_load_resume_state(meta_dir, tmp_path):
    run = tmp_path / "run"
    ckpt = FullModelMetaCheckpointer(meta_dir, run)
    sd = ckpt.load_checkpoint()["model"]
    assert find_resume_dir("auto", run) is None  # fresh run: nothing to resume
    ckpt.save_checkpoint(_state(sd, 10), epoch=0, step=10, intermediate_checkpoint=True)
    ckpt.save_checkpoint(_state(sd, 20), epoch=0, intermediate_checkpoint=True)
    (run / "step_30").mkdir()  # an interrupted save (no COMPLETE marker) with a higher number
    (run / "step_30" / "consolidated.00.pth").write_bytes(b"partial")
    assert find_resume_dir("auto", run) == run / "epoch_0"
    assert find_resume_dir(run) == run / "epoch_0"
    assert find_resume_dir(run / "step_10") == run / "step_10"
    with pytest.raises(CheckpointError, match="no COMPLETE marker"):
        find_resume_dir(run / "step_30")
    state = load_resume_state(run / "step_10")
    assert state["recipe_state"]["step"] == 10 and set(state["model"]) == set(sd)
    assert load_training_state(run / "epoch_0")["lr_scheduler"] == {"last_epoch": 20}


def test_interrupted_save_keeps_previous_checkpoint(hf_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    ckpt = FullModelHFCheckpointer(hf_dir, run, max_shard_size="30KB")
    sd = ckpt.load_checkpoint()["model"]
    first = ckpt.save_checkpoint(_state(sd, 1), epoch=0, step=1, intermediate_checkpoint=True)
    before = sorted(p.name for p in first.iterdir())

    real_save = ckpt_io.save_file
    calls = {"n": 0}

    def dying_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # crash after the first shard of the new save is on disk
            raise OSError("No space left on device (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt_io, "save_file", dying_save)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(_state(sd, 2), epoch=0, step=2, intermediate_checkpoint=True)
    with pytest.raises(OSError, match="simulated"):  # re-saving the same name keeps the old one too
        calls["n"] = 0
        ckpt.save_checkpoint(_state(sd, 1), epoch=0, step=1, intermediate_checkpoint=True)
    monkeypatch.setattr(ckpt_io, "save_file", real_save)
    assert not (run / "step_2").exists() and not list(run.glob(".tmp-*"))
    assert sorted(p.name for p in first.iterdir()) == before
    assert find_resume_dir("auto", run) == first
    assert load_resume_state(first)["recipe_state"]["step"] == 1


def test_keep_last_n_prunes_step_dirs_only(meta_dir, tmp_path):
    run = tmp_path / "run"
    ckpt = FullModelMetaCheckpointer(meta_dir, run, keep_last_n=2)
    sd = ckpt.load_checkpoint()["model"]
    for step in (1, 2, 3):
        ckpt.save_checkpoint({"model": sd}, epoch=0, step=step)
    ckpt.save_checkpoint({"model": sd}, epoch=0)
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0", "step_2", "step_3"]
    assert [p.name for p in list_checkpoints(run)] == ["step_2", "step_3", "epoch_0"]
