"""Low-rank adapters (Hu et al., 2021) with PEFT-compatible initialisation and scaling."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tunekit.modules.peft._merge import merged_weight
from tunekit.modules.peft._nf4 import QUANTIZE_BASE_CHOICES, nf4_linear, nf4_to, quantize_nf4

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output")
"""Valid ``LoRASpec.targets`` (tunekit linear names)."""
MERGE_BASE_CHOICES: tuple[str, ...] = ("dequantized", "original")
"""Valid ``LoRASpec.merge_base``: what a QLoRA adapter is merged into when saving."""


def _pattern_matches(pattern: str, module_name: str) -> bool:
    # PEFT semantics: a pattern matches a module path or any dotted suffix of it.
    return re.fullmatch(rf"(.*\.)?(?:{pattern})", module_name) is not None


@dataclass
class LoRASpec:
    """What to adapt and how.

    Args:
        rank: default adapter rank ``r``.
        alpha: default scaling numerator; the adapter output is scaled by ``alpha / r``.
        dropout: dropout probability on the adapter input.
        targets: linear names to adapt, among ``LORA_TARGETS``.
        rank_pattern: per-module rank overrides; keys are regexes matched (as in PEFT)
            against a module path such as ``layers.3.attn.q_proj`` or any dotted suffix of
            it (``q_proj`` matches every layer's).
        alpha_pattern: per-module alpha overrides, same matching.
        use_dora: weight-decomposed LoRA (DoRA, Liu et al., 2024) as PEFT's
            ``LoraConfig(use_dora=True)``: each adapted linear also learns a magnitude vector
            (state-dict key ``<linear>.lora_magnitude``). False keeps plain LoRA.
        quantize_base: ``"nf4"``: QLoRA, every frozen base linear of the decoder layers (and
            each adapted linear's base weight) stored in NF4, computed by dequantizing on the
            fly (``tunekit.modules.peft.quantize_base_``). None: full-precision base.
        merge_base: what the saved merged weights add the adapter to under ``quantize_base``:
            ``"dequantized"`` (default: the NF4 base the adapter was trained against, so the
            merged model computes what was trained and validated) or ``"original"`` (the
            checkpoint's full-precision base, as ``PeftModel.from_pretrained`` onto the bf16
            model does). Ignored without ``quantize_base``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_dora: bool = False
    quantize_base: str | None = None
    merge_base: str = "dequantized"

    def __post_init__(self) -> None:
        self.use_dora = bool(self.use_dora)
        self.targets = list(self.targets)
        self.rank_pattern = dict(self.rank_pattern)
        self.alpha_pattern = dict(self.alpha_pattern)
        problems = []
        if self.rank < 1:
            problems.append(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad:
            problems.append(f"lora.targets has unknown names {bad}; valid: {list(LORA_TARGETS)}")
        if self.quantize_base is not None and self.quantize_base not in QUANTIZE_BASE_CHOICES:
            problems.append(f"lora.quantize_base must be null or one of {list(QUANTIZE_BASE_CHOICES)}, "
                            f"got {self.quantize_base!r}")
        if self.merge_base not in MERGE_BASE_CHOICES:
            problems.append(f"lora.merge_base must be one of {list(MERGE_BASE_CHOICES)}, got {self.merge_base!r}")
        if not self.targets:
            problems.append(f"lora.targets is empty; choose from {list(LORA_TARGETS)}")
        for key, r in self.rank_pattern.items():
            if int(r) < 1:
                problems.append(f"lora.rank_pattern[{key!r}] must be >= 1, got {r}")
        for key in [*self.rank_pattern, *self.alpha_pattern]:
            try:
                re.compile(key)
            except re.error as e:
                problems.append(f"lora pattern {key!r} is not a valid regex: {e}")
        if problems:
            raise ValueError("invalid LoRA settings:\n  " + "\n  ".join(problems))

    def rank_for(self, module_name: str) -> int:
        """Rank for the module at ``module_name`` (first matching ``rank_pattern`` wins)."""
        for pattern, r in self.rank_pattern.items():
            if _pattern_matches(pattern, module_name):
                return int(r)
        return self.rank

    def alpha_for(self, module_name: str) -> float:
        """Alpha for the module at ``module_name`` (first matching ``alpha_pattern`` wins)."""
        for pattern, a in self.alpha_pattern.items():
            if _pattern_matches(pattern, module_name):
                return float(a)
        return self.alpha


@torch.library.custom_op("tunekit::linear_plus_lowrank", mutates_args=())
def _linear_plus_lowrank(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``x w^T + bias + u v^T`` for 2-D ``x`` / ``u``: the low-rank product is added in place
    by the GEMM epilogue (``addmm_``, beta=1). A custom op so that torch.compile keeps the
    in-place form: functionalised, ``addmm_`` on an intermediate becomes an out-of-place
    ``addmm`` that first copies its input (one device-to-device copy per call)."""
    return F.linear(x, w, bias).addmm_(u, v.t())


@_linear_plus_lowrank.register_fake
def _(x, w, bias, u, v):
    return x.new_empty((x.shape[0], w.shape[0]))


class _LoRALinearFn(torch.autograd.Function):
    """``x W^T + b + s * (x A^T) B^T`` with hand-written backward (no dropout).

    Forward: ``a = s * x A^T`` (``[n, r]``, kept for backward), ``out = x W^T + b`` then
    ``out.addmm_(a, B^T)``. Backward, with ``g`` the output gradient::

        dB = g^T a            da = s * g B           dA = da^T x
        dx = g W  (+)= da A   (addmm_: one GEMM epilogue, no [n, in] temporary)
        dW = g^T x, db = sum(g)   (only when the base weight is trainable)

    Saved: ``x`` (which the base linear needs anyway) and the rank-r ``a``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):  # type: ignore[override]
        return _lowrank_forward(ctx, x, weight, weight, bias, lora_a, lora_b, scaling)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _lowrank_backward(ctx, grad, quantized=False)


class _QLoRALinearFn(torch.autograd.Function):
    """:class:`_LoRALinearFn` for an NF4 base weight: the same math with ``W`` dequantized on
    the fly in forward and again in backward; only the NF4 tensor is kept (never a bf16 ``W``).
    The base weight is frozen (no ``dW``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):  # type: ignore[override]
        return _lowrank_forward(ctx, x, nf4_to(weight, x.dtype), weight, bias, lora_a, lora_b, scaling)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _lowrank_backward(ctx, grad, quantized=True)


def _lowrank_forward(ctx, x, dense_weight, weight, bias, lora_a, lora_b, scaling) -> torch.Tensor:
    """The forward of both functions: ``dense_weight`` is the base weight multiplied now,
    ``weight`` the one kept for backward (the same tensor, or the NF4 one)."""
    x2 = x.reshape(-1, x.shape[-1])
    # Out of place: selective activation checkpointing may have saved the mm output, and
    # must not see it mutated. [n, r] is tiny.
    a = torch.mm(x2, lora_a.t()).mul(scaling)  # [n, r]
    out = _linear_plus_lowrank(x2, dense_weight, bias, a, lora_b)  # [n, out]
    ctx.save_for_backward(x2, weight, lora_a, lora_b, a)
    ctx.scaling = scaling
    ctx.x_shape = x.shape
    ctx.has_bias = bias is not None
    return out.view(*x.shape[:-1], out.shape[-1])


def _lowrank_backward(ctx, grad: torch.Tensor, *, quantized: bool) -> tuple[torch.Tensor | None, ...]:
    """The backward of both functions; an NF4 (``quantized``) base is dequantized again for
    ``dx`` and gets no gradient."""
    x2, weight, lora_a, lora_b, a = ctx.saved_tensors
    need_x, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
    g = grad.reshape(-1, grad.shape[-1])  # [n, out]
    dx = dw = db = d_a = d_b = None
    if need_bb:
        d_b = torch.mm(g.t(), a)  # [out, r]
    if need_x or need_a:
        da = torch.mm(g, lora_b).mul_(ctx.scaling)  # [n, r]
        if need_a:
            d_a = torch.mm(da.t(), x2)  # [r, in]
        if need_x:
            w = nf4_to(weight, g.dtype) if quantized else weight
            dx = _linear_plus_lowrank(g, w.t(), None, da, lora_a.t()).view(ctx.x_shape)
    if need_w and not quantized:
        dw = torch.mm(g.t(), x2)
    if need_b and ctx.has_bias:
        db = g.sum(0)
    return dx, dw, db, d_a, d_b, None


def _lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    return _LoRALinearFn.apply(x, weight, bias, lora_a, lora_b, scaling)


class LoRALinear(nn.Module):
    """``y = x W^T + b + (alpha / r) * B(A(dropout(x)))``, or DoRA with ``use_dora=True``.

    ``weight`` (and ``bias``) keep the plain ``nn.Linear`` keys, so a plain checkpoint
    loads with ``strict=False`` missing only ``lora_a.weight`` / ``lora_b.weight``. ``A`` is
    Kaiming-uniform with ``a=sqrt(5)`` and ``B`` zero, as in PEFT, so a fresh adapter is a
    no-op.

    DoRA (``use_dora=True``, PEFT's formulation): a learnable magnitude ``m`` (``[out_dim]``,
    key ``lora_magnitude``, initialised to the row norms of ``W``) rescales each output
    feature::

        n = ||W + s B A||_row  (detached: no gradient flows through the norm)
        y = (m / n) * (x W^T + s B(A(dropout(x)))) + b

    computed, as PEFT does, as ``base + (m/n - 1) * x W^T + (m/n) * s * B(A(x))``; with
    dropout active (training, ``dropout > 0``) the base term inside the DoRA correction uses
    the dropped-out input while ``base`` itself uses ``x`` (PEFT's behaviour). A plain
    checkpoint then also misses ``lora_magnitude``, set from ``W`` by ``reset_adapter``.

    Args:
        in_dim: input features.
        out_dim: output features.
        rank: adapter rank ``r``.
        alpha: scaling numerator.
        dropout: dropout on the adapter input only.
        bias: whether the base layer has a bias.
        use_dora: add DoRA's magnitude vector (see above).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = False,
        use_dora: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim)) if bias else None
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.use_dora = use_dora
        if use_dora:
            self.lora_magnitude = nn.Parameter(torch.empty(out_dim))
        self.disabled = False  # set by disable_adapters()
        self.quantized = False  # set by quantize_base_()
        self.reset_parameters()

    @torch.no_grad()
    def quantize_base_(self, *, shards: int = 1) -> None:
        """QLoRA: store the (frozen) base weight in NF4, in its current dtype and on its device.

        Call after the weight is loaded, placed and cast (``tunekit.training.prepare`` does), or
        on the meta device before FSDP2 sharding into ``shards`` row chunks; the adapter is
        untouched. Idempotent.
        """
        if self.quantized:
            return
        self.weight = nn.Parameter(quantize_nf4(self.weight, shards=shards), requires_grad=False)
        self.quantized = True
        # DoRA on a fresh adapter (B zero): the magnitude is the row norms of the NF4 base it will
        # train against (as PEFT's DoRA init on a 4-bit base), so the model starts as that base
        if self.use_dora and not self.lora_b.weight.is_meta and not self.lora_b.weight.any():
            self.reset_magnitude()

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The base weight ``W`` in full precision (dequantized from NF4 when quantized)."""
        if self.quantized:  # through aten.to: one graph under torch.compile
            return nf4_to(self.weight, self.weight.dtype if dtype is None else dtype)
        return self.weight if dtype is None else self.weight.to(dtype)

    def _base_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.quantized:
            return nf4_linear(x, self.weight, bias)
        return F.linear(x, self.weight, bias)

    def reset_parameters(self) -> None:
        """Base weight as ``nn.Linear``; ``A`` Kaiming-uniform(a=sqrt(5)); ``B`` zero."""
        if getattr(self, "quantized", False):
            raise RuntimeError("reset_parameters on an NF4-quantized LoRALinear: reset before quantize_base_()")
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_dim)
            nn.init.uniform_(self.bias, -bound, bound)
        self.reset_adapter()

    def reset_adapter(self) -> None:
        """Re-initialises only the adapter (``A`` Kaiming-uniform, ``B`` zero; DoRA's
        magnitude to the row norms of the current base weight, as PEFT does)."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        if self.use_dora:
            self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """DoRA: ``m = ||W + s B A||_row`` from the current weights (no-op without DoRA or on meta)."""
        if not self.use_dora or self.weight.is_meta or self.lora_magnitude.is_meta:
            return
        self.lora_magnitude.copy_(self.weight_norm())

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) * B @ A`` in fp32, shape ``[out_dim, in_dim]``."""
        return self.scaling * (self.lora_b.weight.float() @ self.lora_a.weight.float())

    def weight_norm(self) -> torch.Tensor:
        """DoRA's ``||W + (alpha/r) B @ A||`` per output row, fp32 and detached, ``[out_dim]``."""
        with torch.no_grad():
            return torch.linalg.norm(self.base_weight(torch.float32) + self.delta_weight(), dim=1)

    def merged_weight(self) -> torch.Tensor:
        """The weight an ``nn.Linear`` needs to compute this layer, in the base weight's dtype:
        ``W + s B A``, or with DoRA ``m / ||W + s B A||_row * (W + s B A)``."""
        with torch.no_grad():
            return merged_weight(self.base_weight(), self.lora_a.weight, self.lora_b.weight, scaling=self.scaling,
                                 magnitude=self.lora_magnitude if self.use_dora else None)

    def _dora_forward(self, x: torch.Tensor) -> torch.Tensor:
        # PEFT's DoraLinearLayer.forward (peft/tuners/lora/dora.py) term by term.
        result = self._base_linear(x, self.bias)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base = result if self.bias is None else result - self.bias
        else:
            x = self.dropout(x)
            base = self._base_linear(x, None)
        norm = self.weight_norm().to(x.dtype)  # detached, as in the paper's section 4.3
        mag_norm_scale = (self.lora_magnitude / norm).view(1, -1)
        lora_result = self.lora_b(self.lora_a(x))
        return result + ((mag_norm_scale - 1) * base + mag_norm_scale * lora_result * self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self._base_linear(x, self.bias)
        if self.use_dora:
            return self._dora_forward(x)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            # Fused path: the adapter's [.., out_dim] output is never materialised (its add
            # runs in the GEMM epilogue), the scaling is applied on the rank-r tensor, and the
            # backward adds the adapter's input gradient in the base GEMM's epilogue too.
            fn = _QLoRALinearFn if self.quantized else _LoRALinearFn
            return fn.apply(x, self.weight, self.bias, self.lora_a.weight, self.lora_b.weight, self.scaling)
        out = self._base_linear(x, self.bias)
        # Out of place (selective activation checkpointing may have saved ``out``); add's
        # backward needs neither input, so no extra [.., out_dim] activation is kept.
        return torch.add(out, self.lora_b(self.lora_a(self.dropout(x))), alpha=self.scaling)

    def extra_repr(self) -> str:
        dora = ", use_dora=True" if self.use_dora else ""
        nf4 = ", base=nf4" if self.quantized else ""
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, alpha={self.alpha}{dora}{nf4}"
