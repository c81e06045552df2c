"""Every training run logs tokens/s, TFLOP/s, MFU (rule + peak stated) and peak memory."""

from __future__ import annotations

import pytest
import torch

from tunekit.models.llama2 import init_on_device, llama2
from tunekit.modules.peft import LoRASpec, set_trainable_params
from tunekit.run.settings import train_settings
from tunekit.training import build_dataloader, prepare_model, train
from tunekit.training.losses import CrossEntropyLoss
from tunekit.training.lr_schedulers import constant_with_warmup
from tunekit.training.throughput import ThroughputMeter, device_peak_tflops, flops_rule

SHAPE = dict(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=48)


def _model(lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj"]) if lora else None
    with torch.device("meta"):
        m = llama2(**SHAPE, max_seq_len=32, lora=spec)
    init_on_device(m, "cpu", dtype=torch.float32)
    if lora:
        set_trainable_params(m)
    return m


def _base_params() -> int:
    d, f, v, L, hd = 32, 48, 64, 2, 8
    kv = 2 * hd
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # q, o; k, v; w1-3; two norms
    return L * per_layer + 2 * v * d + d


def test_flops_rule_full_and_lora() -> None:
    full = flops_rule(_model(lora=False))
    assert full.full and full.base_params == _base_params() and full.adapter_params == 0
    assert full.dense_per_token == 6 * _base_params()
    assert full.attn_per_token_per_position == 12 * 2 * 32
    lora = flops_rule(_model(lora=True))
    adapters = 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))
    assert not lora.full and lora.base_params == _base_params() and lora.adapter_params == adapters
    assert lora.dense_per_token == 4 * _base_params() + 6 * adapters
    assert lora.flops(10, 10 * 16) == lora.dense_per_token * 10 + 12 * 2 * 32 * 160
    assert "4N + 6A" in lora.describe() and "12*L*d_q*T" in lora.describe()


def test_device_peaks(monkeypatch) -> None:
    cuda = torch.device("cuda", 0)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None, n=name: n)
        assert device_peak_tflops(cuda, torch.bfloat16)[0] == peak, name
    got, why = device_peak_tflops(cuda, torch.float32)
    assert got is None and "mfu_peak_tflops" in why
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Mystery GPU 9000")
    assert device_peak_tflops(cuda, torch.bfloat16)[0] is None
    got, why = device_peak_tflops(torch.device("cpu"), torch.float32)
    assert got is None and "cpu" in why and "mfu_peak_tflops" in why
    assert device_peak_tflops(torch.device("cpu"), torch.float32, 2.5) == (2.5, "2.5 TFLOP/s (mfu_peak_tflops)")


def test_meter_arithmetic() -> None:
    meter = ThroughputMeter(_model(lora=False), torch.device("cpu"), torch.float32, peak_tflops=0.5)
    rule = meter.rule
    m = meter.metrics(1000, 1000 * 16, 2.0, world_size=4)
    assert m["tokens_per_second"] == 2000.0  # all ranks
    assert m["tflops_per_second"] == pytest.approx(rule.flops(1000, 16_000) / 2.0 / 1e12)  # per device
    assert m["mfu"] == pytest.approx(m["tflops_per_second"] / 0.5)
    assert "0.5 TFLOP/s" in m["mfu_rule"] and m["peak_memory_rss_gib"] > 0
    assert "mfu_rule" not in meter.metrics(1, 1, 1.0)  # stated once
    note = ThroughputMeter(_model(lora=False), torch.device("cpu"), torch.float32).metrics(1, 1, 1.0)
    assert "mfu" not in note and "MFU omitted" in note["mfu_note"]


class _Rec:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def log_dict(self, metrics, step) -> None:
        self.records.append(dict(metrics, step=step))


@pytest.mark.parametrize("peak", [None, 1e-3])
def test_training_log_has_throughput_mfu_and_memory(peak) -> None:
    model = _model(lora=True)
    g = torch.Generator().manual_seed(0)
    data = [{"tokens": (t := torch.randint(1, 64, (16,), generator=g)), "labels": torch.cat([t[1:], t.new_tensor([-100])])}
            for _ in range(8)]
    loader = build_dataloader(data, 2, lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]}, shuffle=False)
    settings = train_settings(epochs=1, max_steps_per_epoch=2, log_every_n_steps=1, device="cpu",
                              handle_signals=False, mfu_peak_tflops=peak)
    prepare_model(model, settings)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rec = _Rec()
    train(model, optimizer=opt, lr_scheduler=constant_with_warmup(opt, num_warmup_steps=0), loss_fn=CrossEntropyLoss(),
          train_loader=loader, settings=settings, metric_logger=rec, progress=False)
    first, second = (r for r in rec.records if "loss" in r)
    rule = flops_rule(model)
    for r in (first, second):
        assert r["tokens_per_second"] > 0 and r["peak_memory_rss_gib"] > 0
        per_token = r["tflops_per_second"] * 1e12 / r["tokens_per_second"]
        assert per_token == pytest.approx(rule.dense_per_token + rule.attn_per_token_per_position * 16)
        if peak is None:
            assert "mfu" not in r
        else:
            assert r["mfu"] == pytest.approx(r["tflops_per_second"] / peak)
    assert ("mfu_rule" if peak else "mfu_note") in first and "mfu_rule" not in second and "mfu_note" not in second
