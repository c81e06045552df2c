"""Frozen base weights in 4-bit NormalFloat (QLoRA, Dettmers et al., 2023).

Storage is torchao's ``NF4Tensor`` (the format torchtune trains QLoRA with): blocks of 64
values, each an index into the 16-entry NF4 code table times the block's absmax; the absmax
scales are themselves quantized to int8 in blocks of 256 (double quantization, mean removed
first). 4.127 bits per weight. It was chosen over a hand-written format because it already
implements FSDP2's all-gather extension (the NF4 shards travel as uint8, not bf16), views and
splits for sharding, and torch.compile support; docs/benchmarks.md has the measurements.

Compute is bf16/fp32: every forward and backward dequantizes the weight on the fly into a
temporary that is freed at once (:class:`_NF4LinearFn` keeps only the NF4 tensor for backward),
so a linear's full-precision weight is never resident.

torchao is optional (``pip install "tunekit[qlora]"``); nothing here imports it until a weight
is quantized.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NF4_BLOCK_SIZE",
    "NF4_CODE",
    "NF4_SCALER_BLOCK_SIZE",
    "QUANTIZE_ATTR",
    "QUANTIZE_BASE_CHOICES",
    "NF4Linear",
    "QuantizationUnavailableError",
    "dequantize",
    "gather_nf4_shards",
    "is_nf4",
    "is_sharded_nf4",
    "load_nf4_shard",
    "nf4_linear",
    "nf4_to",
    "quantize_nf4",
    "quiet_torchao_import",
    "require_torchao",
]

QUANTIZE_BASE_CHOICES = ("nf4",)
QUANTIZE_ATTR = "_tunekit_quantize_base"
"""Set on a model (to ``"nf4"``) by whoever builds it for QLoRA; ``tunekit.training.prepare``
quantizes the frozen base after placing and casting (one linear at a time)."""
NF4_BLOCK_SIZE = 64
NF4_SCALER_BLOCK_SIZE = 256

# The NF4 code table as published in the QLoRA paper (appendix E) and bitsandbytes: quantiles of
# N(0, 1) normalised to [-1, 1], with an exact zero. Tests check torchao's table against it.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


class QuantizationUnavailableError(ImportError):
    """``lora.quantize_base`` is set but torchao (the ``qlora`` extra) is not installed."""


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Import torchao without its log lines about GPU kernels a CPU build cannot load (and
    torch's deprecation notes it triggers): they are noise to a user who asked for NF4."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def require_torchao() -> Any:
    """The module holding ``NF4Tensor`` / ``to_nf4``; raises a one-paragraph error without torchao."""
    try:
        with quiet_torchao_import():
            from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor  # torchao >= 0.14
    except ImportError:
        try:
            with quiet_torchao_import():
                from torchao.dtypes import nf4tensor as nf4_tensor  # older torchao
        except ImportError as err:
            raise QuantizationUnavailableError(
                f"lora.quantize_base=nf4 (QLoRA) stores the frozen base weights with torchao's NF4 "
                f"tensor, but torchao is not installed ({err}). Install it with: pip install "
                "\"tunekit[qlora]\" (or set lora.quantize_base=null for plain LoRA)."
            ) from None
    return nf4_tensor


def is_nf4(t: Any) -> bool:
    """Whether ``t`` is an NF4 tensor (False without importing torchao when it is not loaded)."""
    if "torchao" not in sys.modules:
        return False
    try:
        return isinstance(t, require_torchao().NF4Tensor)
    except QuantizationUnavailableError:
        return False


def _scaler_block_size(numel: int, shards: int = 1) -> int | None:
    """The double-quantization block: 256 scales (the paper's), or for a tensor whose number of
    64-blocks 256 does not divide (tiny test models) the largest divisor of it below 256.

    ``shards``: the weight will be split into that many equal row chunks (FSDP2), so each chunk
    must hold whole scaler blocks; real models get 256 either way."""
    if numel % NF4_BLOCK_SIZE:
        return None
    n_blocks = numel // NF4_BLOCK_SIZE
    if n_blocks % shards:
        return None
    for size in range(min(NF4_SCALER_BLOCK_SIZE, n_blocks // shards), 0, -1):
        if (n_blocks // shards) % size == 0:
            return size
    return None


def quantize_nf4(weight: torch.Tensor, *, shards: int = 1) -> torch.Tensor:
    """``weight`` (2-D, floating) as an NF4 tensor in its dtype and on its device.

    ``shards``: the number of equal row chunks FSDP2 will cut it into (the scaler block is
    chosen so every chunk holds whole blocks; the quantized values do not depend on it for
    real model shapes).

    Raises:
        QuantizationUnavailableError: torchao is not installed.
        ValueError: the number of elements is not a multiple of the block size (64), or the
            rows do not split into ``shards`` chunks of whole blocks.
    """
    nf4 = require_torchao()
    rows_split = weight.dim() == 2 and weight.shape[0] % shards == 0
    scaler = _scaler_block_size(weight.numel(), shards) if rows_split else None
    if scaler is None:
        where = "" if shards == 1 else f" split into {shards} equal row shards"
        raise ValueError(f"NF4 needs a 2-D weight with a multiple of {NF4_BLOCK_SIZE} elements{where}, "
                         f"got shape {tuple(weight.shape)}")
    with torch.no_grad():
        return nf4.to_nf4(weight.detach().contiguous(), NF4_BLOCK_SIZE, scaler)


def dequantize(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A full-precision copy of ``weight`` (an NF4 tensor) in ``dtype`` (default: its own); a
    plain tensor is returned as it is (cast to ``dtype`` when given)."""
    if is_nf4(weight):
        out = weight.get_original_weight()
        return out if dtype is None else out.to(dtype)
    return weight if dtype is None else weight.to(dtype)


def is_sharded_nf4(t: Any) -> bool:
    """Whether ``t`` is an FSDP2-sharded NF4 weight (a DTensor over an NF4 shard)."""
    return is_nf4(getattr(t, "_local_tensor", None))


_NF4_DATA = ("quantized_data", "scaler_mean", "quantization_factor", "quantized_scalers")


@torch.no_grad()
def load_nf4_shard(param: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
    """A sharded NF4 weight filled from the full-precision weight that rank 0 holds (a collective).

    ``param`` is the FSDP2 parameter (a DTensor, sharded by rows, over an NF4 local tensor; the
    model was quantized on the meta device with ``shards`` = the mesh size). Rank 0 quantizes
    the whole of ``full`` (other ranks pass None), so the double-quantization mean is the whole
    weight's and every shard equals the matching rows of what one process would hold; the 4-bit
    data is broadcast (about a quarter of bf16's bytes) and each rank keeps its row chunk.

    Returns:
        The new DTensor, to assign in place of ``param``.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    local, mesh = param._local_tensor, param.device_mesh
    group = mesh.get_group(0)
    nf4 = require_torchao()
    if full is None:  # the right inner shapes; the values come from rank 0
        full = torch.ones(param.shape, dtype=local.dtype, device=local.device)
    whole = nf4.to_nf4(full.to(device=local.device, dtype=local.dtype).contiguous(), local.block_size,
                       local.scaler_block_size)
    for name in _NF4_DATA:
        dist.broadcast(getattr(whole, name), src=dist.get_global_rank(group, 0), group=group)
    chunk = torch.chunk(whole, mesh.size(0), dim=0)[dist.get_rank(group)]
    mine = whole.new_zeros(chunk.shape)
    mine.copy_(chunk)  # its own storage: the whole weight is freed on return
    return DTensor.from_local(mine, mesh, param.placements, run_check=False, shape=param.shape,
                              stride=param.stride())


@torch.no_grad()
def gather_nf4_shards(param: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The dequantized full weight of a sharded NF4 ``param`` on rank 0's CPU (a collective; None
    on the other ranks): each rank dequantizes its rows, rank 0 concatenates them. Equal to
    dequantizing the whole NF4 weight, since the shards hold whole blocks and share its mean."""
    import torch.distributed as dist

    group = param.device_mesh.get_group(0)
    part = param._local_tensor.get_original_weight()
    part = part if dtype is None else part.to(dtype)
    parts = [torch.empty_like(part) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, part.contiguous(), group=group)
    return torch.cat(parts).cpu() if dist.get_rank(group) == 0 else None


def nf4_to(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize a known NF4 ``weight`` to ``dtype`` through its ``aten.to`` (what torch.compile
    traces into one graph; :func:`dequantize` checks the type first and is for eager code)."""
    return weight.to(dtype)


class _NF4LinearFn(torch.autograd.Function):
    """``x deq(W)^T``: only the NF4 ``W`` is kept for backward (``dx = g deq(W)``); ``W`` is frozen."""

    @staticmethod
    def forward(ctx, x, weight):  # type: ignore[override]
        ctx.save_for_backward(weight)
        return F.linear(x, nf4_to(weight, x.dtype))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return grad @ nf4_to(weight, grad.dtype), None


def nf4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a frozen NF4 ``weight`` (dequantized on the fly, forward and backward)."""
    out = _NF4LinearFn.apply(x, weight)
    return out if bias is None else out + bias


class NF4Linear(nn.Linear):
    """A frozen ``nn.Linear`` whose weight is stored in NF4 (same state-dict keys).

    Built with :meth:`from_linear`; the bias (if any) stays in full precision.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, shards: int = 1) -> "NF4Linear":
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.in_features, out.out_features = linear.in_features, linear.out_features
        out.weight = nn.Parameter(quantize_nf4(linear.weight, shards=shards), requires_grad=False)
        out.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", nf4"
