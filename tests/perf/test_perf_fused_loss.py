"""Fused linear + cross-entropy equals the full-logits cross-entropy: loss and every gradient."""

from __future__ import annotations

import pytest
import torch

from tunekit.models.llama2 import init_on_device, llama2
from tunekit.modules import TiedLinear
from tunekit.modules.peft import LoRASpec, set_trainable_params
from tunekit.training.losses import CrossEntropyLoss, FusedLinearCrossEntropyLoss, _plain_output_weight

IGN = -100


def _model(lora_targets=None, tied=False) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = LoRASpec(rank=4, alpha=8.0, targets=lora_targets) if lora_targets else None
    with torch.device("meta"):
        m = llama2(vocab_size=96, num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=32,
                   intermediate_dim=48, max_seq_len=32, lora=spec)
    init_on_device(m, "cpu", dtype=torch.float32)
    if tied:
        m.output = TiedLinear(m.tok_embeddings)
    if spec is not None:
        set_trainable_params(m)
        for n, p in m.named_parameters():  # non-zero B so adapter gradients are informative
            if "lora_b" in n:
                torch.nn.init.normal_(p, std=0.1)
    return m


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 96, (3, 11), generator=g)
    labels = torch.randint(0, 96, (3, 11), generator=g)
    labels[0, :4] = IGN
    labels[2, :] = IGN  # a whole row (and so whole chunks) ignored
    return {"tokens": tokens, "labels": labels}


def _run(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss, n = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", ["full", "tied", "lora_qv", "lora_output"])
@pytest.mark.parametrize("num_chunks", [1, 5])
def test_fused_equals_cross_entropy(case, num_chunks) -> None:
    model = _model(lora_targets={"lora_qv": ["q_proj", "v_proj"], "lora_output": ["q_proj", "output"]}.get(case),
                   tied=case == "tied")
    assert (_plain_output_weight(model.output) is None) == (case == "lora_output")  # LoRA output: unfused path
    batch = _batch()
    ref_loss, ref_n, ref_grads = _run(model, CrossEntropyLoss(), batch)
    loss, n, grads = _run(model, FusedLinearCrossEntropyLoss(num_chunks=num_chunks), batch)
    assert n == ref_n and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6, msg=k)
    if case in ("full", "tied"):
        assert ("output.weight" in grads) == (case == "full") and "tok_embeddings.weight" in grads


def test_fused_no_grad_and_compiled_trace() -> None:
    model, batch = _model(), _batch()
    with torch.no_grad():
        ref = CrossEntropyLoss()(model, batch)[0]
        torch.testing.assert_close(FusedLinearCrossEntropyLoss(num_chunks=3)(model, batch)[0], ref)
    loss_fn = FusedLinearCrossEntropyLoss(num_chunks=3)
    loss_fn.compile(backend="eager")  # dynamo traces the per-chunk function (inductor not needed here)
    ref_loss, _, ref_grads = _run(model, CrossEntropyLoss(), batch)
    loss, _, grads = _run(model, loss_fn, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grads["output.weight"], ref_grads["output.weight"], rtol=1e-5, atol=1e-6)


def test_bad_num_chunks() -> None:
    with pytest.raises(ValueError, match="num_chunks must be >= 1"):
        FusedLinearCrossEntropyLoss(num_chunks=0)
