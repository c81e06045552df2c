"""The one merge function and the one adapter-key predicate of ``tunekit.modules.peft``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunekit.modules.peft import LoRALinear, get_adapter_state_dict, is_adapter_key, merged_weight


def _trained(lin: LoRALinear) -> LoRALinear:
    with torch.no_grad():
        lin.lora_b.weight.normal_()
        if lin.use_dora:
            lin.lora_magnitude.uniform_(0.5, 2.0)
    return lin


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_weight_is_the_formula_in_fp32_and_keeps_the_dtype(use_dora, dtype):
    torch.manual_seed(0)
    lin = _trained(LoRALinear(12, 10, rank=3, alpha=6.0, use_dora=use_dora)).to(dtype)
    w, a, b = lin.weight, lin.lora_a.weight, lin.lora_b.weight
    mag = lin.lora_magnitude if use_dora else None
    got = merged_weight(w, a, b, scaling=2.0, magnitude=mag)
    want = w.double() + 2.0 * (b.double() @ a.double())
    if use_dora:
        want = want * (mag.double() / want.norm(dim=1)).unsqueeze(1)
    assert got.dtype == dtype and got.shape == w.shape
    torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                               atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    # The layer's own merge is this function, bit for bit.
    assert torch.equal(lin.merged_weight(), got)


def test_merged_weight_of_a_fresh_adapter_is_the_base_weight():
    lin = LoRALinear(8, 6, rank=2, alpha=4.0)  # B = 0
    assert torch.equal(merged_weight(lin.weight, lin.lora_a.weight, lin.lora_b.weight, scaling=lin.scaling),
                       lin.weight.detach())


def test_merged_weight_computes_what_the_layer_computes():
    torch.manual_seed(1)
    lin = _trained(LoRALinear(16, 7, rank=4, alpha=8.0, bias=True, use_dora=True)).double()
    plain = nn.Linear(16, 7, bias=True).double()
    with torch.no_grad():
        plain.weight.copy_(merged_weight(lin.weight, lin.lora_a.weight, lin.lora_b.weight, scaling=lin.scaling,
                                         magnitude=lin.lora_magnitude))
        plain.bias.copy_(lin.bias)
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(plain(x), lin(x), rtol=1e-5, atol=1e-5)  # the merge's math is fp32


@pytest.mark.parametrize("shapes", [
    ((6, 8), (2, 9), (6, 2), None),      # A's input width differs from W's
    ((6, 8), (2, 8), (5, 2), None),      # B's output rows differ from W's
    ((6, 8), (2, 8), (6, 3), None),      # rank of A and B differ
    ((6, 8), (2, 8), (6, 2), (5,)),      # DoRA magnitude of the wrong length
    ((48,), (2, 8), (6, 2), None),       # not a matrix
])  # fmt: skip
def test_merged_weight_names_every_shape_when_they_do_not_fit(shapes):
    w, a, b, m = (None if s is None else torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=r"weight \(.*lora_a \(.*lora_b \("):
        merged_weight(w, a, b, scaling=1.0, magnitude=m)


@pytest.mark.parametrize("key", [
    "layers.0.attn.q_proj.lora_a.weight", "layers.3.mlp.w2.lora_b.weight", "output.lora_a.weight",
    "layers.0.attn.v_proj.lora_magnitude", "lora_a.weight", "lora_b.weight", "lora_magnitude",
    "_orig_mod.layers.0._checkpoint_wrapped_module.attn.q_proj.lora_b.weight",
])  # fmt: skip
def test_adapter_keys(key):
    assert is_adapter_key(key)


@pytest.mark.parametrize("key", [
    "layers.0.attn.q_proj.weight", "tok_embeddings.weight", "norm.scale", "output.weight", "weight", "bias",
    "layers.0.attn.lora_a_proj.weight", "layers.0.mlp.w1.lora_magnitude_vector.weight", "lora_magnitudes",
])  # fmt: skip
def test_base_keys_are_not_adapter_keys(key):
    assert not is_adapter_key(key)


def test_predicate_picks_exactly_the_lora_parameters_of_a_model():
    from tunekit.models.llama2 import llama2
    from tunekit.modules.peft import LoRASpec

    model = llama2(vocab_size=32, num_layers=2, num_heads=2, num_kv_heads=1, embed_dim=16, intermediate_dim=24,
                   max_seq_len=8, lora=LoRASpec(rank=2, targets=["q_proj", "w2", "output"], use_dora=True))
    lora_params = {n for n, p in model.named_parameters()
                   if n.rpartition(".")[0].endswith(("lora_a", "lora_b")) or n.endswith("lora_magnitude")}
    assert {k for k in model.state_dict() if is_adapter_key(k)} == lora_params
    assert set(get_adapter_state_dict(model)) == lora_params
    assert len(lora_params) == 5 * 3  # q_proj and w2 of 2 layers + output; A, B, magnitude each
