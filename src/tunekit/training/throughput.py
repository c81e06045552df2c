"""Throughput figures for the training log: tokens/s, model FLOPs utilisation (MFU), peak memory.

MFU = achieved model FLOP/s per device / the device's peak dense FLOP/s. The model FLOPs per
token follow the usual counting rule (PaLM, appendix B), stated in every log's first record:

- full fine-tuning: ``6 N`` (forward 2N, input gradients 2N, weight gradients 2N);
- LoRA (frozen base): ``4 N + 6 A`` (no weight gradients for the N base parameters; A = the
  trainable adapter parameters get all three);
- plus attention's score and value matmuls, ``12 L d_q T`` (forward ``4 L d_q T``, backward
  twice that; no weights, so the same for LoRA), with L layers, ``d_q = heads x head_dim``
  and T the row length (as PaLM, no discount for the causal or per-document mask).

N counts every base parameter (embeddings included, as the issue's 6.74e9 for Llama-2-7B);
activation checkpointing's recompute is not model FLOPs. The peak is the dense bf16/fp16
tensor-core rate of the device (table below, from the vendors' datasheets), ``mfu_peak_tflops``
overrides it; unknown devices, the CPU and fp32 runs get no MFU unless given a peak.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch
from torch import nn

from tunekit.modules.peft import is_adapter_key

__all__ = ["PEAK_DENSE_TFLOPS", "FlopsRule", "ThroughputMeter", "device_peak_tflops", "flops_rule"]

# Dense bf16/fp16 tensor-core TFLOP/s (no sparsity), datasheet figures; first match of the
# device name wins, so the more specific names come first.
PEAK_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)


@dataclass(frozen=True)
class FlopsRule:
    """Model FLOPs per token of one training step (see the module docstring).

    Attributes:
        base_params: N, the parameters of the model without adapters.
        adapter_params: A, trainable adapter parameters (0 for full fine-tuning).
        full: every base parameter trains (6N) rather than a frozen base (4N).
        attn_layers: L. q_width: ``heads x head_dim`` of the attention.
    """

    base_params: int
    adapter_params: int
    full: bool
    attn_layers: int
    q_width: int

    @property
    def dense_per_token(self) -> float:
        """FLOPs per token of the weight matmuls."""
        return 6.0 * self.base_params if self.full else 4.0 * self.base_params + 6.0 * self.adapter_params

    @property
    def attn_per_token_per_position(self) -> float:
        """Attention FLOPs per token per position of the row (times T gives the term)."""
        return 12.0 * self.attn_layers * self.q_width

    def flops(self, tokens: float, tokens_x_row_len: float) -> float:
        """Model FLOPs of ``tokens`` trained tokens whose rows sum ``tokens x row length``."""
        return self.dense_per_token * tokens + self.attn_per_token_per_position * tokens_x_row_len

    def describe(self) -> str:
        dense = (f"6N (N={self.base_params:.3g})" if self.full
                 else f"4N + 6A (N={self.base_params:.3g} frozen, A={self.adapter_params:.3g} adapter)")
        return f"FLOPs/token = {dense} + 12*L*d_q*T (L={self.attn_layers}, d_q={self.q_width}, T=row length)"


def flops_rule(model: nn.Module) -> FlopsRule:
    """The FLOPs rule for ``model`` from its parameters (LoRA when the base is frozen)."""
    base = adapter = 0
    full = True
    for name, p in model.named_parameters():
        n = p.numel()  # DTensor: the global count
        if is_adapter_key(name):
            adapter += n if p.requires_grad else 0
        else:
            base += n
            full = full and p.requires_grad
    tied = getattr(model, "tie_word_embeddings", False)
    emb = getattr(model, "tok_embeddings", None)
    if tied and emb is not None:  # the output projection reads the embedding: its matmul counts too
        base += emb.weight.numel()
    layers = list(getattr(model, "layers", []))
    attn = getattr(layers[0], "attn", None) if layers else None
    q_width = attn.num_heads * attn.head_dim if attn is not None else 0
    return FlopsRule(base_params=base, adapter_params=adapter, full=full and adapter == 0,
                     attn_layers=len(layers) if attn is not None else 0, q_width=q_width)


def device_peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None = None
                       ) -> tuple[float | None, str]:
    """``(peak dense TFLOP/s or None, where it came from)`` for MFU on ``device`` in ``dtype``."""
    if override is not None:
        return float(override), f"{override:g} TFLOP/s (mfu_peak_tflops)"
    if device.type != "cuda":
        return None, f"MFU omitted: no known peak for the {device.type} device; set mfu_peak_tflops=<TFLOP/s>"
    name = torch.cuda.get_device_name(device)
    if dtype not in (torch.bfloat16, torch.float16):
        return None, (f"MFU omitted: the table holds bf16/fp16 tensor-core peaks and this run is {dtype}; "
                      "set mfu_peak_tflops=<TFLOP/s> for this dtype")
    for key, tflops in PEAK_DENSE_TFLOPS:
        if key.lower() in name.lower():
            return tflops, f"{tflops:g} TFLOP/s dense bf16 ({name}, datasheet)"
    return None, f"MFU omitted: no known peak for {name}; set mfu_peak_tflops=<TFLOP/s>"


def _peak_rss_gib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class ThroughputMeter:
    """Turns the tokens and seconds of a log interval into the throughput metrics.

    Args:
        model: the prepared model (its parameters give the FLOPs rule).
        device: the training device.
        dtype: the parameters' dtype (which peak applies).
        peak_tflops: override of the device's peak dense TFLOP/s (``mfu_peak_tflops``).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype,
                 peak_tflops: float | None = None) -> None:
        self.rule = flops_rule(model)
        self.device = device
        self.peak_tflops, self.peak_source = device_peak_tflops(device, dtype, peak_tflops)
        self._described = False

    def metrics(self, tokens: int, tokens_x_row_len: int, seconds: float, world_size: int = 1) -> dict:
        """Metrics of one interval: ``tokens`` and ``tokens_x_row_len`` on this rank in ``seconds``.

        Keys: ``tokens_per_second`` (all ranks), ``tflops_per_second`` (per device), ``mfu``
        (fraction of the peak, when one is known), ``peak_memory_rss_gib`` off CUDA; the first
        call adds ``mfu_rule`` (the FLOPs rule and the peak assumed) or ``mfu_note``.
        """
        seconds = max(seconds, 1e-9)
        tflops = self.rule.flops(tokens, tokens_x_row_len) / seconds / 1e12
        out: dict = {"tokens_per_second": tokens * world_size / seconds, "tflops_per_second": tflops}
        if self.peak_tflops is not None:
            out["mfu"] = tflops / self.peak_tflops
        if self.device.type != "cuda":
            out["peak_memory_rss_gib"] = _peak_rss_gib()
        if not self._described:
            self._described = True
            if self.peak_tflops is not None:
                out["mfu_rule"] = f"MFU = model FLOP/s per device / {self.peak_source}; {self.rule.describe()}"
            else:
                out["mfu_note"] = f"{self.peak_source}; {self.rule.describe()}"
        return out
