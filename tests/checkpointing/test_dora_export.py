"""A DoRA adapter saved by the HF checkpointer loads in PEFT and gives tunekit's logits."""

from __future__ import annotations

import dataclasses
import json

import torch
from _ckpt_helpers import tiny_tk_model

from tunekit.checkpointing import FullModelHFCheckpointer

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output"]


def test_dora_adapter_loads_in_peft_and_matches(hf_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunekit.modules.peft import LoRASpec, get_adapter_state_dict, get_merged_state_dict
    from tunekit.run.model import build_model

    spec = LoRASpec(rank=4, alpha=8.0, targets=ALL_TARGETS, use_dora=True)
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "out")
    base_sd = ckpt.load_checkpoint()["model"]
    # the recipe's path: meta build, base weights assigned, fresh adapters (m = ||W||_row)
    model = build_model(lambda lora: tiny_tk_model(lora=lora), dict(base_sd), lora=spec).eval()
    q = model.layers[0].attn.q_proj
    torch.testing.assert_close(q.lora_magnitude, torch.linalg.norm(base_sd["layers.0.attn.q_proj.weight"], dim=1))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("lora_magnitude"):
                p.mul_(torch.empty_like(p).uniform_(0.8, 1.2))
    state = {"model": get_merged_state_dict(model), "adapter": get_adapter_state_dict(model),
             "adapter_config": dataclasses.asdict(spec)}  # fmt: skip
    out = ckpt.save_checkpoint(state, epoch=0)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True

    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = model(tokens)
        base = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
        # every magnitude was loaded (none left at its init)
        mags = [n for n, _ in peft_model.named_parameters() if "lora_magnitude_vector" in n]
        assert len(mags) == 2 * 7 + 1
        torch.testing.assert_close(peft_model(tokens).logits, want, atol=1e-5, rtol=1e-5)
        merged = AutoModelForCausalLM.from_pretrained(out / "model", attn_implementation="eager", dtype=torch.float32)
        torch.testing.assert_close(merged.eval()(tokens).logits, want, atol=1e-5, rtol=1e-5)
