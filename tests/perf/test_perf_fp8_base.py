"""FP8 base weights (LoRA, Hopper): the quantize/dequantize math, scales, and the GEMM arithmetic
emulated on the CPU; refused clearly where it cannot run; a GPU check that skips without Hopper."""

from __future__ import annotations

import pytest
import torch

from tunekit.models.llama2 import init_on_device, llama2
from tunekit.modules.peft import LoRALinear, LoRASpec, set_trainable_params
from tunekit.run.settings import train_settings
from tunekit.training import prepare_model
from tunekit.training.fp8 import FP8_MAX, apply_fp8_base_, fp8_base_problems, quantize_rowwise
from tunekit.training.losses import CrossEntropyLoss

E4M3_REL = 2.0**-4  # e4m3: 3 mantissa bits, round to nearest -> relative error <= 1/16


def _lora_model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = LoRASpec(rank=4, alpha=8.0, dropout=dropout, targets=["q_proj", "v_proj", "w2"])
    with torch.device("meta"):
        m = llama2(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                   intermediate_dim=64, max_seq_len=32, lora=spec)
    init_on_device(m, "cpu", dtype=torch.float32)
    set_trainable_params(m)
    for n, p in m.named_parameters():
        if "lora_b" in n:
            torch.nn.init.normal_(p, std=0.05)
    return m


def test_rowwise_quantization_scales_and_error() -> None:
    x = torch.tensor([[1.0, -448.0, 0.5], [0.0, 0.0, 0.0], [2.0, 3.0, -1e-3]])
    q, s = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 1)
    torch.testing.assert_close(s[:, 0], torch.tensor([1.0, 1e-12 / FP8_MAX, 3.0 / FP8_MAX]))
    assert q[0].float().tolist() == [1.0, -448.0, 0.5] and q[1].float().abs().sum() == 0
    assert q.float().abs().amax() <= FP8_MAX  # the row maximum maps onto 448 exactly
    w = torch.randn(64, 48) * torch.logspace(-2, 2, 64).unsqueeze(1)  # rows of very different ranges
    q, s = quantize_rowwise(w)
    back = q.float() * s
    big = w.abs() > s * 2.0**-6  # e4m3 normal range (below it the step is absolute, not relative)
    assert ((back - w).abs()[big] <= E4M3_REL * w.abs()[big] + 1e-12).all()


def test_emulated_fp8_linear_arithmetic_forward_and_grads() -> None:
    torch.manual_seed(1)
    lin = LoRALinear(32, 48, rank=4, alpha=8.0)
    torch.nn.init.normal_(lin.lora_b.weight, std=0.1)
    lin.weight.requires_grad_(False)
    ref_lin = LoRALinear(32, 48, rank=4, alpha=8.0)
    ref_lin.load_state_dict(lin.state_dict())
    ref_lin.weight.requires_grad_(False)
    apply_fp8_base_(lin, emulate=True)
    assert lin.fp8_weight.dtype == torch.float8_e4m3fn and lin.fp8_weight_t.shape == (32, 48)
    assert "fp8_weight" not in lin.state_dict()  # never saved: checkpoints keep the bf16 weight
    x = torch.randn(3, 5, 32, requires_grad=True)
    g = torch.randn(3, 5, 48)
    out = lin(x)
    # forward = (x_q s_x)(W_q s_w)^T + the bf16 adapter
    x_q, s_x = quantize_rowwise(x.detach().reshape(-1, 32))
    w_deq = lin.fp8_weight.float() * lin.fp8_scale.unsqueeze(1)
    adapter = ref_lin.scaling * (x.detach() @ ref_lin.lora_a.weight.t()) @ ref_lin.lora_b.weight.t()
    expected = ((x_q.float() * s_x) @ w_deq.t()).view(3, 5, 48) + adapter
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.backward(g)
    # input gradient = quantize(g * s_w) @ W_q, plus the adapter's
    g2 = g.reshape(-1, 48)
    g_q, s_g = quantize_rowwise(g2 * lin.fp8_scale.unsqueeze(0))
    da = (g2 @ ref_lin.lora_b.weight) * ref_lin.scaling
    dx = (g_q.float() * s_g) @ lin.fp8_weight.float() + da @ ref_lin.lora_a.weight
    torch.testing.assert_close(x.grad, dx.view(3, 5, 32), rtol=1e-5, atol=1e-5)
    # adapter gradients do not depend on the FP8 base: equal to the plain layer's
    ref_lin(x.detach()).backward(g)
    torch.testing.assert_close(lin.lora_a.weight.grad, ref_lin.lora_a.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lin.lora_b.weight.grad, ref_lin.lora_b.weight.grad, rtol=1e-5, atol=1e-6)
    assert lin.weight.grad is None


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_emulated_fp8_model_close_to_full_precision(dropout) -> None:
    model, ref = _lora_model(dropout), _lora_model(dropout)
    names = apply_fp8_base_(model, emulate=True)
    assert "output" not in names and any(n.endswith("attn.k_proj") for n in names)  # frozen plain linears too
    assert any(n.endswith("attn.q_proj") for n in names) and len(names) == 2 * 7
    g = torch.Generator().manual_seed(2)
    batch = {"tokens": torch.randint(0, 64, (2, 16), generator=g), "labels": torch.randint(0, 64, (2, 16), generator=g)}
    results = []
    for m in (model, ref):
        torch.manual_seed(5)  # same dropout masks
        loss, n = CrossEntropyLoss()(m, batch)
        loss.backward()
        results.append((loss.detach() / n, {k: p.grad for k, p in m.named_parameters() if p.grad is not None}))
    (loss8, g8), (loss32, g32) = results
    assert g8.keys() == g32.keys() and all("lora" in k for k in g8)
    assert abs(loss8 - loss32) / loss32 < 0.01
    for k in g32:
        cos = torch.nn.functional.cosine_similarity(g8[k].flatten(), g32[k].flatten(), dim=0)
        assert cos > 0.98, (k, cos)
    assert model.state_dict().keys() == ref.state_dict().keys()


def test_fp8_base_refused_where_it_cannot_run() -> None:
    problems = fp8_base_problems(torch.device("cpu"), _lora_model())
    assert len(problems) == 1 and "needs an NVIDIA Hopper GPU" in problems[0] and "fp8_base=false" in problems[0]
    with torch.device("meta"):
        full = llama2(vocab_size=64, num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=32,
                      intermediate_dim=32, max_seq_len=8)
    assert any("no LoRA layers" in p for p in fp8_base_problems(torch.device("cpu"), full))
    with pytest.raises(ValueError, match="`fp8_base`: fp8_base=true needs an NVIDIA Hopper GPU"):
        prepare_model(_lora_model(), train_settings(device="cpu", fp8_base=True))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs a Hopper GPU (row-wise FP8 _scaled_mm)")
def test_cuda_fp8_gemms_equal_the_emulation() -> None:
    torch.manual_seed(0)
    lin = LoRALinear(256, 512, rank=8, alpha=16.0).cuda().to(torch.bfloat16)
    lin.weight.requires_grad_(False)
    twin = LoRALinear(256, 512, rank=8, alpha=16.0).cuda().to(torch.bfloat16)
    twin.load_state_dict(lin.state_dict())
    twin.weight.requires_grad_(False)
    apply_fp8_base_(lin)
    apply_fp8_base_(twin, emulate=True)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    out, ref = lin(x), twin(x2)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=2e-2, atol=2e-2)


def test_fp8_linear_traces_in_one_graph() -> None:
    """The recipe compiles each decoder layer: the FP8 path must trace without a graph break."""
    lin = LoRALinear(32, 48, rank=4, alpha=8.0)
    lin.weight.requires_grad_(False)
    apply_fp8_base_(lin, emulate=True)
    x = torch.randn(4, 32, requires_grad=True)
    ref = lin(x)
    out = torch.compile(lin, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and lin.lora_a.weight.grad is not None
