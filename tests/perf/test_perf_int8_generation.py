"""Int8 weight-only generation: per-channel symmetric quantization, logits close to fp32, decoding runs."""

from __future__ import annotations

import pytest
import torch

from tunekit.generation import TokenGenerator
from tunekit.generation.quantize import (
    Int8WeightOnlyLinear,
    quantize_int8_,
    quantize_model_,
    quantize_per_channel_int8,
)
from tunekit.models.llama2 import init_on_device, llama2
from tunekit.modules import TiedLinear


def _model(tied: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        m = llama2(vocab_size=128, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                   intermediate_dim=96, max_seq_len=64)
    init_on_device(m, "cpu", dtype=torch.float32)
    if tied:
        m.output = TiedLinear(m.tok_embeddings)
    return m.eval()


def test_per_channel_symmetric_math() -> None:
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.03]])
    q, scale = quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (3,)
    torch.testing.assert_close(scale[[0, 2]], torch.tensor([1.0 / 127, 3.0 / 127]))
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0] and q[2].tolist() == [127, 64, -1]
    w = torch.randn(48, 40)
    q, scale = quantize_per_channel_int8(w)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()  # at most half a step per weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_equals_its_dequantized_matmul(dtype) -> None:
    torch.manual_seed(0)
    lin = Int8WeightOnlyLinear.from_weight(torch.randn(24, 32, dtype=dtype))
    x = torch.randn(2, 5, 32, dtype=dtype)
    ref = torch.nn.functional.linear(x.float(), lin.dequantized().float())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    for pack_mm in (True, False):  # the int8 GEMM kernel, and the dequantizing fallback
        lin.use_pack_mm = pack_mm
        out = lin(x)
        assert out.shape == (2, 5, 24) and out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, **tol)


@pytest.mark.parametrize("tied", [False, True])
def test_int8_model_logits_close_to_fp32_and_generation_runs(tied) -> None:
    model, tokens = _model(tied), torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(tokens)
    report = quantize_int8_(model)
    assert len(report.quantized) == 2 * 7 + 1 and report.bytes_after < 0.3 * report.bytes_before
    assert isinstance(model.output, Int8WeightOnlyLinear)
    assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.no_grad():
        out = model(tokens)
    cos = torch.nn.functional.cosine_similarity(out.flatten(0, 1), ref.flatten(0, 1), dim=-1)
    assert cos.min() > 0.999, cos.min()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    with TokenGenerator(model) as gen:
        res = gen.generate(tokens[0, :5], max_new_tokens=6, temperature=0.0)
    assert res.steps == 6 and len(res.tokens[0]) == 6
    with torch.no_grad():  # KV-cached greedy decoding equals greedy over the full recompute
        seq = tokens[0, :5].tolist()
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert res.tokens[0] == seq[5:]


def test_quantize_modes_refused_clearly() -> None:
    assert quantize_model_(_model(), None) is None
    with pytest.raises(ValueError, match="quantize='int4' is not one of int8"):
        quantize_model_(_model(), "int4")
    with torch.device("meta"):
        meta = llama2(vocab_size=32, num_layers=1, num_heads=2, num_kv_heads=2, embed_dim=16,
                      intermediate_dim=16, max_seq_len=8)
    with pytest.raises(ValueError, match="meta device"):
        quantize_int8_(meta)
