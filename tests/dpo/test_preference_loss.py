"""DPO objective: loss, gradients and metrics equal the paper's formula written here, fp32 on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

from tunekit.models.llama2 import llama2
from tunekit.modules.peft import LoRASpec, disable_adapters, is_adapter_key, set_trainable_params
from tunekit.training.preference_losses import DPOLoss, dpo_loss, precompute_reference_logps

BETA = 0.2


def _model(lora: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "w2", "output"]) if lora else None
    model = llama2(vocab_size=64, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                   intermediate_dim=64, max_seq_len=64, lora=spec)
    for name, p in model.named_parameters():  # LoRA B is zero at init: give the adapters an effect
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.2)
    if lora:
        set_trainable_params(model)  # only the adapters train, as in the recipe
    return model


def _batch(seed: int = 1, pairs: int = 3) -> dict[str, torch.Tensor]:
    """``2 * pairs`` rows of random tokens; labels on a reply span after a prompt, padding at the end."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 64, (2 * pairs, 12), generator=g)
    labels = torch.full_like(tokens, -100)
    for i in range(2 * pairs):
        start, end = 2 + i % 3, 11 - i % 2  # different prompt and reply lengths per row
        labels[i, start:end] = tokens[i, start + 1:end + 1]
    return {"tokens": tokens, "labels": labels}


def _ref_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the reply positions of log p(next token), one row at a time."""
    out = []
    for tokens, labels in zip(batch["tokens"], batch["labels"]):
        logprobs = torch.log_softmax(model(tokens[None])[0].double(), dim=-1)  # [s, v]
        total = torch.zeros((), dtype=torch.float64)
        for pos, label in enumerate(labels.tolist()):
            if label != -100:
                total = total + logprobs[pos, label]
        out.append(total)
    return torch.stack(out)


def _ref_loss(pc, pr, rc, rr, loss_type: str, eps: float) -> torch.Tensor:
    """The objectives as their papers write them (Rafailov et al.; cDPO; Chowdhury et al.; Azar et al.)."""
    h = (pc - pr) - (rc - rr)
    sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
    if loss_type == "sigmoid":
        return -((1 - eps) * torch.log(sig(BETA * h)) + eps * torch.log(sig(-BETA * h)))
    if loss_type == "robust":
        return ((1 - eps) * -torch.log(sig(BETA * h)) - eps * -torch.log(sig(-BETA * h))) / (1 - 2 * eps)
    if loss_type == "ipo":
        return (h - 1 / (2 * BETA)) ** 2
    return torch.clamp(1 - BETA * h, min=0)


CASES = [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)]


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_lora_loss_and_gradients_equal_the_formula_with_the_base_model_as_reference(loss_type, eps):
    policy, batch = _model(lora=True), _batch()
    base = _model(lora=False)  # the reference: the same weights without the adapters
    base.load_state_dict({k: v for k, v in policy.state_dict().items() if not is_adapter_key(k)})
    n = batch["tokens"].shape[0] // 2

    loss_sum, pairs, metrics = DPOLoss(beta=BETA, loss_type=loss_type, label_smoothing=eps)(policy, batch)
    (loss_sum / pairs).backward()
    got = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad()

    with torch.no_grad():
        ref = _ref_logps(base, batch)
    pol = _ref_logps(policy, batch)
    counts = batch["labels"].ne(-100).sum(-1).double()
    p, r = (pol / counts, ref / counts) if loss_type == "ipo" else (pol, ref)
    want = _ref_loss(p[:n], p[n:], r[:n], r[n:], loss_type, eps)
    want.mean().backward()

    assert int(pairs) == n
    torch.testing.assert_close(loss_sum.double(), want.sum().detach(), rtol=1e-5, atol=1e-6)
    assert got.keys() == {k for k, p in policy.named_parameters() if p.grad is not None}
    assert got and all(is_adapter_key(k) for k in got)
    for k, g in got.items():
        torch.testing.assert_close(g.double(), policy.get_parameter(k).grad.double(), rtol=1e-4, atol=1e-6)
    # rewards and logps of what the loss compares (IPO: per-token means, as TRL reports them)
    cr, rr = BETA * (p[:n] - r[:n]).detach(), BETA * (p[n:] - r[n:]).detach()
    expected = {"rewards/chosen": cr.sum(), "rewards/rejected": rr.sum(), "rewards/margins": (cr - rr).sum(),
                "rewards/accuracies": (cr > rr).double().sum(), "logps/chosen": p[:n].sum().detach(),
                "logps/rejected": p[n:].sum().detach()}
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name].double(), value, rtol=1e-5, atol=1e-5, msg=name)


def test_full_dpo_reference_copy_and_precomputed_reference_give_the_same_loss_and_gradients():
    policy, batch = _model(lora=False, seed=3), _batch(seed=4)
    reference = _model(lora=False, seed=5).requires_grad_(False)
    by_copy = DPOLoss(beta=BETA, reference=reference)
    loss_a, _, metrics_a = by_copy(policy, batch)
    loss_a.backward()
    grads_a = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    assert all(p.grad is None for p in reference.parameters())

    pre = precompute_reference_logps(reference, [batch], device="cpu")  # [pairs, 2]
    n = pre.shape[0]
    loss_b, _, metrics_b = DPOLoss(beta=BETA)(policy, {**batch, "reference_logps": torch.cat([pre[:, 0], pre[:, 1]])})
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b)
    for a, p in zip(grads_a, policy.parameters()):
        torch.testing.assert_close(a, p.grad)
    torch.testing.assert_close(metrics_a["rewards/margins"], metrics_b["rewards/margins"])
    assert n == batch["tokens"].shape[0] // 2


def test_adapters_disabled_is_the_base_model_and_restores_the_adapters():
    policy = _model(lora=True)
    base = _model(lora=False)
    base.load_state_dict({k: v for k, v in policy.state_dict().items() if not is_adapter_key(k)})
    tokens = _batch()["tokens"]
    with torch.no_grad():
        adapted = policy(tokens)
        with disable_adapters(policy):
            torch.testing.assert_close(policy(tokens), base(tokens))
        torch.testing.assert_close(policy(tokens), adapted)
    assert not torch.allclose(adapted, base(tokens).detach())


def test_at_the_start_policy_equals_reference_so_the_loss_is_log_2():
    policy, batch = _model(lora=False), _batch()
    policy.requires_grad_(True)
    loss, pairs, metrics = DPOLoss(beta=0.1, reference=policy)(policy, batch)
    assert math.isclose(float(loss.detach() / pairs), math.log(2), rel_tol=1e-6)
    assert float(metrics["rewards/margins"]) == 0.0 and float(metrics["rewards/accuracies"]) == 0.0


def test_bad_settings_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="sigmoid, robust, ipo, hinge"):
        DPOLoss(loss_type="kto")
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        DPOLoss(beta=0.0)


def test_qlora_merge_drift_in_dpo_loss_keeps_the_base_as_reference():
    # lora_dpo lora.quantize_base=nf4 logs merge_drift with the DPO objective: inside the merged
    # view the reference is still the base with the adapters off (else every loss would be log 2)
    pytest.importorskip("torchao")
    from tunekit.modules.peft import quantize_base_
    from tunekit.run.saver import merge_drift
    from tunekit.training import evaluate

    torch.manual_seed(0)
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "w2"], quantize_base="nf4")
    model = llama2(vocab_size=64, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=64,
                   intermediate_dim=128, max_seq_len=64, lora=spec)
    original = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    for name, p in model.named_parameters():
        if "lora_b" in name:
            torch.nn.init.normal_(p, std=0.2)
    set_trainable_params(model)
    quantize_base_(model)
    loss_fn, loader = DPOLoss(beta=BETA), [_batch(1), _batch(2)]
    trained = evaluate(model, loss_fn, loader)
    assert abs(trained - math.log(2)) > 1e-3
    out = merge_drift(model, loss_fn=loss_fn, val_loader=loader, device=torch.device("cpu"), adapter_config=spec,
                      trained_val_loss=None, original=lambda: original)
    assert out["val_loss_trained"] == trained
    assert out["val_loss_merged_dequantized"] == pytest.approx(trained, abs=1e-6)
    assert out["val_loss_merged_original"] != pytest.approx(trained, abs=1e-6)  # another base, another reference
    assert out["merge_drift"] == pytest.approx(out["val_loss_merged_dequantized"] - trained)  # merge_base default


def test_low_memory_wrappers_keep_the_objectives_metric_sums():
    # optimizer_in_backward / a pre-scaling optimizer wrap the loss; DPO's metric sums pass through
    from tunekit.training.low_memory import OptimizerInBackward, prescaled_loss

    model = _model(lora=False)
    loss_fn = DPOLoss(beta=BETA, reference=_model(lora=False, seed=1))
    batch = _batch()
    want = loss_fn(model, batch)
    opt = OptimizerInBackward(list(model.parameters()), torch.optim.SGD)
    for wrapped in (prescaled_loss(loss_fn), opt.wrap_loss(loss_fn)):
        loss, pairs, metrics = wrapped(model, batch)
        assert torch.equal(loss.detach(), want[0].detach()) and torch.equal(pairs, want[1])
        assert metrics.keys() == want[2].keys()
