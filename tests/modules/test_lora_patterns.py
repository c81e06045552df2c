"""``lora.rank_pattern`` / ``alpha_pattern`` keys: the config check (torch-free) accepts exactly
the keys that reach a module of a real LoRA model, as ``LoRASpec`` matches them (PEFT's rule)."""

from __future__ import annotations

import pytest
import torch

from tunekit.config._lora_patterns import pattern_matches
from tunekit.models.llama2 import llama2
from tunekit.modules.peft import LoRALinear, LoRASpec


@pytest.mark.parametrize("targets, pattern", [
    (["q_proj", "v_proj"], "q_proj"), (["q_proj", "v_proj"], "layers.1.attn.q_proj"),
    (["q_proj", "v_proj"], r"layers\.[01]\.attn\.v_proj"), (["w2", "output"], "output"), (["w2"], "mlp.w2"),
    (["q_proj"], "v_proj"), (["q_proj"], "layers.1.mlp.q_proj"), (["w1"], "layers.2.mlp.w1"),
    (["q_proj"], "lm_head"), (["q_proj"], "q_proj("),
])
def test_pattern_check_agrees_with_the_model(targets, pattern):
    with torch.device("meta"):
        model = llama2(vocab_size=32, num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=16, intermediate_dim=32,
                       max_seq_len=16, lora=LoRASpec(rank=2, targets=targets))
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    try:
        spec = LoRASpec(rank=2, targets=targets, rank_pattern={pattern: 5})
    except ValueError:  # not a regex: refused by both
        assert not pattern_matches(pattern, targets)
        return
    reached = any(spec.rank_for(n) == 5 for n in names)
    # the model has 2 layers; the check knows no depth, so a path past it is accepted (the model then ignores it)
    assert pattern_matches(pattern, targets) == (reached or pattern == "layers.2.mlp.w1")
