"""The fused LoRA autograd path equals the plain formula, values and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunekit.modules.peft import LoRALinear


def _reference(x, w, b, a, bb, s):
    return F.linear(x, w, b) + s * F.linear(F.linear(x, a), bb)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("train_base", [False, True])
def test_fused_lora_matches_formula_and_grads(bias, train_base):
    torch.manual_seed(0)
    lin = LoRALinear(24, 20, rank=4, alpha=8.0, bias=bias).double()
    with torch.no_grad():
        lin.lora_b.weight.normal_()
    lin.weight.requires_grad_(train_base)
    if bias:
        lin.bias.requires_grad_(train_base)
    x = torch.randn(3, 5, 24, dtype=torch.float64, requires_grad=True)
    out = lin(x)
    params = [lin.weight, lin.bias, lin.lora_a.weight, lin.lora_b.weight]
    ref_params = [p.detach().clone().requires_grad_(p.requires_grad) if p is not None else None for p in params]
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _reference(x_ref, *ref_params, lin.scaling)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, r in zip(params, ref_params):
        if p is None:
            continue
        assert (p.grad is None) == (not r.requires_grad)
        if r.requires_grad:
            torch.testing.assert_close(p.grad, r.grad)


def test_fused_lora_gradcheck():
    torch.manual_seed(1)
    lin = LoRALinear(6, 5, rank=2, alpha=3.0, bias=True).double()
    with torch.no_grad():
        lin.lora_b.weight.normal_()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    from tunekit.modules.peft.lora import _lora_linear

    assert torch.autograd.gradcheck(
        lambda x, w, b, a, bb: _lora_linear(x, w, b, a, bb, lin.scaling),
        (x, lin.weight, lin.bias, lin.lora_a.weight, lin.lora_b.weight),
    )


def test_dropout_in_training_uses_unfused_path_and_eval_fused():
    torch.manual_seed(2)
    lin = LoRALinear(8, 8, rank=2, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        lin.lora_b.weight.normal_()
    x = torch.randn(10, 8)
    lin.eval()
    torch.testing.assert_close(lin(x), _reference(x, lin.weight, None, lin.lora_a.weight, lin.lora_b.weight, 2.0))
    lin.train()
    assert not torch.allclose(lin(x), lin(x))  # dropout active on the adapter path
