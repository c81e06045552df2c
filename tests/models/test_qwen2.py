"""Qwen2.5 (q/k/v biases, tied embeddings): parity with transformers at tiny sizes, exact checkpoint round trips, published sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _family_checks import (
    check_hf_round_trip_is_bit_exact,
    check_kv_cache_decode_equals_recompute,
    check_logits_match_transformers,
    check_published_parameter_counts,
)
from _family_ref import FAMILIES, hf_to_tk, random_hf, tk_model
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

from tunekit.models import get_model_type
from tunekit.models.qwen2 import qwen2_5_0_5b
from tunekit.modules.peft import LoRASpec, get_adapter_state_dict, get_merged_state_dict, set_trainable_params

FAMILY = "qwen2"


def test_logits_match_transformers():
    check_logits_match_transformers(FAMILY)


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path):
    check_hf_round_trip_is_bit_exact(FAMILY, tmp_path)


def test_kv_cache_decode_equals_recompute():
    check_kv_cache_decode_equals_recompute(FAMILY)


@pytest.mark.parametrize("size", sorted(FAMILIES[FAMILY].published))
def test_published_size_has_transformers_parameter_count(size):
    check_published_parameter_counts(FAMILY, size)


# ---- LoRA on a family with biases: PEFT parity ------------------------------------------------
def _lora_pair():
    fam = FAMILIES[FAMILY]
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"])
    mt = get_model_type(fam.model_type)
    pm = get_peft_model(random_hf(fam), LoraConfig(r=4, lora_alpha=8.0, lora_dropout=0.0,
                                                   target_modules=[mt.peft_target_names[t] for t in spec.targets]))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    base = {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
            for k, v in pm.state_dict().items() if "lora_" not in k}
    peft_sd = get_peft_model_state_dict(pm)
    adapter = mt.peft_to_adapter(peft_sd, 4, 2, 64)
    tk = tk_model(fam, lora=spec)
    tk.load_state_dict({**hf_to_tk(fam, base), **adapter}, strict=True)
    return tk.eval(), pm.eval(), mt, peft_sd


def test_lora_forward_gradients_and_export_match_peft_with_qkv_biases():
    tk, pm, mt, peft_sd = _lora_pair()
    set_trainable_params(tk)
    assert not tk.layers[0].attn.q_proj.bias.requires_grad  # the bias stays frozen, as in PEFT
    tokens = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(4))
    ours, ref = tk(tokens), pm(tokens).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    F.cross_entropy(ours.flatten(0, 1), labels.flatten()).backward()
    F.cross_entropy(ref.flatten(0, 1), labels.flatten()).backward()
    for i in range(2):  # A's rows are rank, its columns the input: no RoPE permutation
        for tk_name, hf_name in (("attn.q_proj", "self_attn.q_proj"), ("attn.k_proj", "self_attn.k_proj"),
                                 ("mlp.w2", "mlp.down_proj")):
            ours_g = tk.get_submodule(f"layers.{i}.{tk_name}").lora_a.weight.grad
            ref_g = pm.get_submodule(f"base_model.model.model.layers.{i}.{hf_name}").lora_A["default"].weight.grad
            torch.testing.assert_close(ours_g, ref_g, atol=1e-5, rtol=1e-4)
    # export: the tunekit adapter in PEFT names is PEFT's own state dict, bit for bit
    exported = mt.adapter_to_peft(get_adapter_state_dict(tk), 4, 2, 64)
    assert sorted(exported) == sorted(peft_sd)
    assert all(torch.equal(exported[k], peft_sd[k]) for k in peft_sd)
    # merged (biases untouched) == unmerged
    plain = tk_model(FAMILIES[FAMILY])
    plain.load_state_dict(get_merged_state_dict(tk), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(tokens), tk(tokens), atol=1e-5, rtol=0)


def test_lora_on_a_tied_output_projection_is_refused():
    with pytest.raises(ValueError, match=r"lora.targets contains 'output', but this model ties its output "
                                         r"projection .* Remove 'output' from lora.targets"):
        qwen2_5_0_5b(lora=LoRASpec(targets=["q_proj", "output"]))
