"""Int8 weight-only quantization for generation: half the bytes each decode step reads.

Batch-1 decoding reads every weight once per token, so its speed is bounded by memory
bandwidth / weight bytes; int8 weights halve the bytes of bf16 ones. Each ``nn.Linear`` of
the decoder (and the output projection, tied or not) becomes an :class:`Int8WeightOnlyLinear`:
per-output-channel symmetric scales ``s = max|W_row| / 127`` and ``q = round(W / s)`` in
[-127, 127]; activations stay in the model dtype and ``y = (x @ q.T) * s``. The matmul is
``torch._weight_int8pack_mm`` (int8 weights read as they are, on CUDA and CPU) where it runs
(probed once per device and dtype), else a dequantizing ``F.linear``. The token embedding stays as it is (a lookup reads
one row per token). Quality cost: one rounding of each weight to 8 bits (relative error per
weight <= 1/254 of its row's largest); ``benchmarks/generate_7b.py`` measures perplexity vs bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.modules import TiedLinear

__all__ = ["QUANTIZE_MODES", "Int8WeightOnlyLinear", "QuantizeReport", "quantize_int8_", "quantize_model_"]

QUANTIZE_MODES = ("int8",)


def quantize_per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [out, in], scale fp32 [out])`` with ``weight ~= q * scale[:, None]`` (symmetric, per row)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]; an all-zero row keeps q = 0
    q = torch.round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


_PACK_MM_OK: dict[tuple[str, torch.dtype], bool] = {}


def pack_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._weight_int8pack_mm`` runs for ``dtype`` activations on ``device``
    (probed once on a small matmul: its CUDA kernel came later than the CPU one)."""
    key = (str(device), dtype)
    if key not in _PACK_MM_OK:
        ok = hasattr(torch, "_weight_int8pack_mm")
        if ok:
            try:
                x = torch.ones(2, 64, dtype=dtype, device=device)
                w = torch.ones(32, 64, dtype=torch.int8, device=device)
                y = torch._weight_int8pack_mm(x, w, torch.full((32,), 0.5, dtype=dtype, device=device))
                ok = bool((y.float() == 32.0).all())
            except (RuntimeError, NotImplementedError):
                ok = False
        _PACK_MM_OK[key] = ok
    return _PACK_MM_OK[key]


class Int8WeightOnlyLinear(nn.Module):
    """A bias-free linear with int8 weights and per-output-channel scales (inference only).

    Args:
        weight_int8: ``[out, in]`` int8.
        scale: ``[out]`` scales; kept in ``dtype`` (the activations' dtype).
        dtype: compute dtype of the activations (the model's).
    """

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight", weight_int8)
        self.register_buffer("scale", scale.to(dtype))
        # decided once (a static branch for torch.compile): int8 GEMM kernel, else dequantize
        self.use_pack_mm = pack_mm_works(weight_int8.device, dtype)

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Int8WeightOnlyLinear:
        """Quantizes a ``[out, in]`` float weight (its dtype becomes the compute dtype)."""
        q, scale = quantize_per_channel_int8(weight)
        return cls(q, scale, weight.dtype)

    def dequantized(self) -> torch.Tensor:
        """``q * scale`` as a float weight ``[out, in]`` (tests, reference)."""
        return self.weight.to(self.scale.dtype) * self.scale.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [n, in]
        scale = self.scale if self.scale.dtype == x.dtype else self.scale.to(x.dtype)
        if self.use_pack_mm and x.dtype == self.scale.dtype:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.weight, scale)  # [n, out]
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * scale
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


@dataclass
class QuantizeReport:
    """What :func:`quantize_int8_` changed."""

    quantized: list[str]
    bytes_before: int
    bytes_after: int

    def describe(self) -> str:
        return (f"int8 weight-only: {len(self.quantized)} linear layers quantized, weights read per token "
                f"{self.bytes_before / 1e9:.3g} GB -> {self.bytes_after / 1e9:.3g} GB")


def _weights_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads: parameters and int8 weights; the embedding only when the
    output projection reads it (tied), as the lookup reads one row."""
    emb = getattr(model, "tok_embeddings", None)
    tied = isinstance(getattr(model, "output", None), TiedLinear)
    skip = {id(emb.weight)} if emb is not None and not tied else set()
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    for m in model.modules():
        if isinstance(m, Int8WeightOnlyLinear):
            total += m.weight.numel() + m.scale.numel() * m.scale.element_size()
    return total


@torch.no_grad()
def quantize_int8_(model: nn.Module) -> QuantizeReport:
    """Replaces every bias-free ``nn.Linear`` (and a ``TiedLinear`` output) with int8 weight-only.

    In place; the float weights of the replaced layers are released (a tied output keeps its
    embedding, which the lookup still needs). Linears with a bias, and LoRA layers (merge
    adapters first: generation loads merged weights), are left as they are.

    Raises:
        ValueError: the model has no linear layer to quantize, or is on the meta device.
    """
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("quantize_int8_ needs a model with its weights loaded (not on the meta device)")
    before = _weights_bytes(model)
    done: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            plain = type(child) is nn.Linear and child.bias is None
            if plain or isinstance(child, TiedLinear):
                setattr(module, child_name, Int8WeightOnlyLinear.from_weight(child.weight))
                done.append(f"{name}.{child_name}" if name else child_name)
    if not done:
        raise ValueError("the model has no bias-free nn.Linear layer to quantize")
    return QuantizeReport(quantized=done, bytes_before=before, bytes_after=_weights_bytes(model))


def quantize_model_(model: nn.Module, mode: str | None) -> QuantizeReport | None:
    """``quantize=<mode>`` of the generate recipe: None leaves the model as it is."""
    if mode is None:
        return None
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize={mode!r} is not one of {', '.join(QUANTIZE_MODES)} (or null)")
    return quantize_int8_(model)
