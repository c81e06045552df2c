"""One LoRA step of the real recipe with ``model=auto`` on each family's tiny checkpoint: the output
loads in transformers (merged model) and PEFT (adapter) with the logits tunekit computes.

Qwen2.5 and Qwen3 train from HF directories; Llama 3 from a Meta directory (``params.json`` with
``use_scaled_rope``), whose Meta output is converted to HF (``tunekit convert``) for transformers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _family_ref import FAMILIES, builder, save_hf_dir
from safetensors import safe_open

from tunekit.checkpointing import FullModelHFCheckpointer, convert_checkpoint
from tunekit.tokenizers import TINY_TOKENIZER_PATH

REPO = Path(__file__).resolve().parents[2]
# Meta's params.json fixes original_max_position_embeddings=8192 (the tiny HF family uses 32)
_META_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _family(name: str):
    fam = FAMILIES[name]
    if name != "llama3":
        return fam, "hf"
    fam = replace(fam, hf={**fam.hf, "rope_parameters": _META_ROPE, "tie_word_embeddings": False},
                  tk={**fam.tk, "rope_original_max_position_embeddings": 8192, "tie_word_embeddings": False})
    return fam, "meta"


# Mistral is Llama 2's layout with other numbers (its parity and round trip are in test_mistral.py).
@pytest.mark.parametrize("name", ["llama3", "qwen2", "qwen3"])
def test_one_lora_step_output_loads_in_transformers_and_peft(tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fam, fmt = _family(name)
    src = save_hf_dir(fam, tmp_path / "tiny_hf")
    shutil.copy(TINY_TOKENIZER_PATH, src / "tokenizer.model")
    train_from = src if fmt == "hf" else convert_checkpoint(src, tmp_path / "tiny_meta", to="meta")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", "model=auto",
            f"checkpointer={fmt}", f"checkpointer.checkpoint_dir={train_from}",
            "epochs=1", "max_steps_per_epoch=1", "batch_size=2", "max_seq_len=256", "metric_logger.also_stdout=false",
            "dtype=fp32", "lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-2", "examples.show=0",
            "examples.score=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = run / "epoch_0"
    model_dir = out / "model" if fmt == "hf" else convert_checkpoint(out, tmp_path / "out_hf", to="hf",
                                                                      max_position_embeddings=256)
    if fmt == "meta":
        assert sorted(p.name for p in (out / "model").iterdir()) == ["consolidated.00.pth", "params.json",
                                                                     "tokenizer.model"]
    keys = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            keys.update(h.keys())
    assert ("lm_head.weight" in keys) == (not fam.hf.get("tie_word_embeddings"))  # HF writes none when tied

    ckpt = FullModelHFCheckpointer(model_dir, tmp_path / "unused", model_type="auto")
    with torch.device("meta"):
        ours = builder(fam)(**fam.tk)
    ours.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
    ours.init_buffers()
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), out / "adapter").eval()
    tokens = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ours.eval()(tokens)
        torch.testing.assert_close(merged(tokens).logits, logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapted(tokens).logits, logits, atol=1e-5, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(src).eval()(tokens).logits
    assert not torch.allclose(base, logits, atol=1e-6)  # the step changed the model
