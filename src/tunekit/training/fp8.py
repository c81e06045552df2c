"""FP8 matmuls for the frozen base weights of a LoRA run (Hopper; opt-in: ``fp8_base=true``).

The base weights never change during LoRA training, so their FP8 (e4m3) copies and scales are
made once, at :func:`apply_fp8_base_`. Each frozen linear (``LoRALinear``'s base weight, and
the plain ``nn.Linear`` layers LoRA does not target; never the output projection) then runs:

- forward ``y = x W^T``: ``x`` quantized per row (``s_x = amax|x_row| / 448``), ``W`` per output
  row (``s_w``), ``y = _scaled_mm(x_q, W_q^T, s_x, s_w)`` in bf16;
- input gradient ``dx = dy W = (dy * s_w) W_q``: the weight's row scales are folded into
  ``dy`` (they sit on the contraction dimension), which is then quantized per row, against a
  transposed copy of ``W_q`` made once (Hopper's FP8 GEMM wants its second operand
  column-major);
- the adapter (``A``, ``B``, scaling, dropout) and everything else stay in bf16; no weight
  gradient is formed for the base.

Numerics differ from bf16 (e4m3 keeps 3 mantissa bits): this is opt-in and its effect is
measured by ``benchmarks/fp8_loss_curve.py`` (bf16 vs fp8 loss curves). Memory: the bf16
weight stays (checkpoints save merged bf16 weights, never the FP8 copies), plus two FP8 copies
(1 byte each per weight). ``emulate=True`` runs the same arithmetic with fp32 matmuls on FP8
values (any device): the CPU tests use it.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.modules.peft import LoRALinear

__all__ = ["FP8_MAX", "apply_fp8_base_", "fp8_base_problems", "fp8_linear", "quantize_rowwise"]

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_q fp8 [m, k], scale fp32 [m, 1])`` with ``x ~= x_q * scale`` (one scale per row)."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [m, 1]
    return (xf / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


def _mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
        out_dtype: torch.dtype, emulate: bool) -> torch.Tensor:
    """``(a @ b) * scale_a * scale_b`` for fp8 ``a [m, k]`` (row-major), ``b [k, n]`` (column-major)."""
    if emulate:
        return ((a.float() @ b.float()) * scale_a * scale_b).to(out_dtype)
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)


class _Fp8Linear(torch.autograd.Function):
    """``x W^T (+ bias) + scaling * B(A(xa))`` with the base GEMMs in FP8 (see the module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, xa: torch.Tensor | None, w_q: torch.Tensor, wt_q: torch.Tensor,
                w_scale: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor | None,
                lora_b: torch.Tensor | None, scaling: float, emulate: bool) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # [n, in]
        x_q, s_x = quantize_rowwise(x2)
        out = _mm(x_q, w_q.t(), s_x, w_scale.unsqueeze(0), x.dtype, emulate)  # [n, out]
        if bias is not None:
            out = out + bias
        a = None
        ctx.dropout = xa is not None  # the adapter's input (dropout(x)) when it is not x itself
        xa2 = x2 if xa is None else xa.reshape(-1, xa.shape[-1])
        if lora_a is not None:
            a = torch.mm(xa2, lora_a.t()).mul(scaling)  # [n, r]
            out = torch.addmm(out, a, lora_b.t())
        ctx.save_for_backward(xa2, wt_q, w_scale, lora_a, lora_b, a)
        ctx.scaling, ctx.emulate, ctx.x_shape, ctx.has_bias = scaling, emulate, x.shape, bias is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        xa2, wt_q, w_scale, lora_a, lora_b, a = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # [n, out]
        g_q, s_g = quantize_rowwise(g.float() * w_scale.unsqueeze(0))  # W's row scales folded into dy
        ones = torch.ones(1, wt_q.shape[0], dtype=torch.float32, device=g.device)
        dx = _mm(g_q, wt_q.t(), s_g, ones, grad.dtype, ctx.emulate)  # [n, in]
        d_a = d_b = dxa = None
        if lora_a is not None:
            d_b = torch.mm(g.t(), a)  # [out, r]
            da = torch.mm(g, lora_b).mul_(ctx.scaling)  # [n, r]
            d_a = torch.mm(da.t(), xa2)  # [r, in]
            if ctx.dropout:
                dxa = torch.mm(da, lora_a).view(ctx.x_shape)
            else:
                dx = dx.addmm_(da, lora_a)
        db = g.sum(0) if ctx.has_bias else None
        return dx.view(ctx.x_shape), dxa, None, None, None, db, d_a, d_b, None, None


def fp8_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of a linear prepared by :func:`apply_fp8_base_`."""
    if isinstance(module, LoRALinear) and not module.disabled:
        xa = module.dropout(x)  # Identity (no dropout) returns x itself: then passed as None
        # (one tensor given twice to a Function is something torch.compile cannot trace)
        return _Fp8Linear.apply(x, None if xa is x else xa, module.fp8_weight, module.fp8_weight_t,
                                module.fp8_scale, module.bias, module.lora_a.weight, module.lora_b.weight,
                                module.scaling, module.fp8_emulate)
    return _Fp8Linear.apply(x, None, module.fp8_weight, module.fp8_weight_t, module.fp8_scale, module.bias,
                            None, None, 1.0, module.fp8_emulate)


def fp8_base_problems(device: torch.device, model: nn.Module) -> list[str]:
    """Why ``fp8_base=true`` cannot run here (empty when it can)."""
    problems = []
    if device.type != "cuda":
        problems.append(f"fp8_base=true needs an NVIDIA Hopper GPU (FP8 row-wise GEMMs); this run is on "
                        f"{device.type}: set fp8_base=false")
    elif torch.cuda.get_device_capability(device) < (9, 0):
        name = torch.cuda.get_device_name(device)
        problems.append(f"fp8_base=true needs an NVIDIA Hopper GPU (compute capability 9.0+, e.g. H100/H200) "
                        f"for row-wise FP8 GEMMs; {name} is {torch.cuda.get_device_capability(device)}: set "
                        "fp8_base=false")
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        problems.append("fp8_base=true applies to the frozen base weights of a LoRA run; this model has no "
                        "LoRA layers (full fine-tuning updates every weight): set fp8_base=false")
    if any(getattr(m, "use_dora", False) for m in model.modules()):
        problems.append("fp8_base=true does not support DoRA (lora.use_dora=true): set one of them to false")
    return problems


def _fp8_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    output = getattr(model, "output", None)
    out = []
    for name, m in model.named_modules():
        if m is output:
            continue  # the vocabulary projection feeds the loss: kept in bf16
        frozen_plain = type(m) is nn.Linear and not m.weight.requires_grad
        if isinstance(m, LoRALinear) or frozen_plain:
            if m.weight.shape[0] % 16 or m.weight.shape[1] % 16:
                continue  # FP8 GEMMs want dimensions divisible by 16
            out.append((name, m))
    return out


@torch.no_grad()
def apply_fp8_base_(model: nn.Module, *, emulate: bool = False) -> list[str]:
    """Makes the FP8 copies of every frozen base weight once and routes those linears through FP8.

    Args:
        model: a LoRA model, placed and cast (its base weights frozen).
        emulate: fp32 matmuls on the FP8 values instead of ``torch._scaled_mm`` (CPU tests).

    Returns:
        The names of the linears now running in FP8.
    """
    names = []
    for name, m in _fp8_targets(model):
        if getattr(m, "fp8_weight", None) is not None:
            names.append(name)
            continue
        w_q, scale = quantize_rowwise(m.weight.detach())  # [out, in], [out, 1]
        m.register_buffer("fp8_weight", w_q, persistent=False)
        m.register_buffer("fp8_weight_t", w_q.t().contiguous(), persistent=False)  # [in, out]
        m.register_buffer("fp8_scale", scale.squeeze(1), persistent=False)  # [out] fp32
        m.fp8_emulate = emulate
        m.forward = types.MethodType(fp8_linear, m)
        names.append(name)
    return names


def _dequantized(m: nn.Module) -> torch.Tensor:
    """The FP8 copy as a float weight (tests)."""
    return m.fp8_weight.float() * m.fp8_scale.unsqueeze(1)


def reference_linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Plain fp32 reference of a prepared linear (tests): bf16 weight, no FP8."""
    return F.linear(x.float(), m.weight.float(), None if m.bias is None else m.bias.float())
