"""One LoRA step of the real recipe on each family's tiny HF checkpoint: the output loads in
transformers (merged model) and PEFT (adapter) with the logits tunekit computes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _family_ref import FAMILIES, builder, save_hf_dir
from safetensors import safe_open

from tunekit.checkpointing import FullModelHFCheckpointer
from tunekit.tokenizers import TINY_TOKENIZER_PATH

REPO = Path(__file__).resolve().parents[2]


def _overrides(name: str) -> list[str]:
    fam = FAMILIES[name]
    return [f"model._component_=tunekit.models.{fam.name}.{fam.name}", f"model_info.model_type={fam.model_type}",
            *(f"+model.{k}={v}" for k, v in fam.tk.items())]


# Mistral is Llama 2's layout with other numbers (its parity and round trip are in test_mistral.py).
@pytest.mark.parametrize("name", ["llama3", "qwen2", "qwen3"])
def test_one_lora_step_output_loads_in_transformers_and_peft(tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fam = FAMILIES[name]
    src = save_hf_dir(fam, tmp_path / "tiny_hf")
    shutil.copy(TINY_TOKENIZER_PATH, src / "tokenizer.model")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", f"checkpointer.checkpoint_dir={src}",
            "epochs=1", "max_steps_per_epoch=1", "batch_size=2", "max_seq_len=256", "metric_logger.also_stdout=false",
            "dtype=fp32", "lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-2", "examples.show=0",
            "examples.score=0", *_overrides(name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = run / "epoch_0"
    keys = set()
    for f in (out / "model").glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            keys.update(h.keys())
    assert ("lm_head.weight" in keys) == (not fam.hf.get("tie_word_embeddings"))  # HF writes none when tied

    ckpt = FullModelHFCheckpointer(out / "model", tmp_path / "unused", model_type=fam.model_type)
    with torch.device("meta"):
        ours = builder(fam)(**fam.tk)
    ours.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
    ours.init_buffers()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(src), out / "adapter").eval()
    tokens = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ours.eval()(tokens)
        torch.testing.assert_close(merged(tokens).logits, logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapted(tokens).logits, logits, atol=1e-5, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(src).eval()(tokens).logits
    assert not torch.allclose(base, logits, atol=1e-6)  # the step changed the model
