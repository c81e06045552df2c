"""Helpers that act on a whole model with LoRA layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from tunekit.modules.peft._merge import merged_weight
from tunekit.modules.peft._nf4 import NF4Linear, dequantize, is_nf4
from tunekit.modules.peft.lora import LoRALinear

__all__ = [
    "disable_adapters",
    "get_adapter_state_dict",
    "get_merged_state_dict",
    "is_adapter_key",
    "merge_lora_weights_",
    "merged_weight",
    "quantize_base_",
    "quantized_base_names",
    "reset_all_parameters",
    "set_trainable_params",
]

def _lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


@torch.no_grad()
def reset_all_parameters(model: nn.Module) -> None:
    """Fresh random init of every parameter through each module's own ``reset_parameters``.

    LoRA layers init themselves (``A`` Kaiming, ``B`` zero), so their ``lora_a``/``lora_b``
    children are skipped (a plain ``nn.Linear`` reset would make ``B`` non-zero). RoPE tables
    are buffers, rebuilt by ``init_buffers``, not here.
    """
    from tunekit.modules.position_embeddings import RotaryPositionalEmbeddings

    skip = {id(c) for _, m in _lora_modules(model) for c in (m.lora_a, m.lora_b)}
    for m in model.modules():
        if id(m) in skip or isinstance(m, RotaryPositionalEmbeddings):
            continue
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def set_trainable_params(model: nn.Module) -> None:
    """Freezes everything except the LoRA ``lora_a`` / ``lora_b`` weights (and DoRA's
    ``lora_magnitude``).

    Raises:
        ValueError: if the model has no LoRA layers (nothing would train).
    """
    adapter_params = {
        id(p)
        for _, m in _lora_modules(model)
        for p in (*m.lora_a.parameters(), *m.lora_b.parameters(), *([m.lora_magnitude] if m.use_dora else []))
    }
    if not adapter_params:
        raise ValueError("set_trainable_params: the model has no LoRALinear layers (was it built with lora=None?)")
    for p in model.parameters():
        p.requires_grad_(id(p) in adapter_params)


def get_adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under tunekit names (``layers.0.attn.q_proj.lora_a.weight``;
    with DoRA also ``layers.0.attn.q_proj.lora_magnitude``)."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_key(k)}


@torch.no_grad()
def get_merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter merged: ``W + (alpha/r) * B @ A``
    (DoRA: ``m / ||W + (alpha/r) B A||_row * (W + (alpha/r) B A)``, bias unchanged).

    The merge is computed in fp32 and cast to the base weight's dtype; adapter keys are
    dropped, so the result loads into a model built with ``lora=None``. The model itself is
    not changed (disabled adapters are not merged).
    """
    sd = {k: dequantize(v) if is_nf4(v) else v for k, v in model.state_dict().items() if not is_adapter_key(k)}
    for name, m in _lora_modules(model):
        if m.disabled:
            continue
        key = f"{name}.weight" if name else "weight"
        sd[key] = m.merged_weight()
    return sd


@torch.no_grad()
def merge_lora_weights_(model: nn.Module) -> nn.Module:
    """Merges every adapter in place, replacing each ``LoRALinear`` by a plain ``nn.Linear``.

    Returns:
        The same model (or a new ``nn.Linear`` if ``model`` itself is a ``LoRALinear``).
    """

    def merged(m: LoRALinear) -> nn.Linear:
        w = m.base_weight().detach() if m.disabled else m.merged_weight()
        lin = nn.Linear(m.in_dim, m.out_dim, bias=m.bias is not None, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            lin.bias = nn.Parameter(m.bias.detach(), requires_grad=m.bias.requires_grad)
        return lin

    if isinstance(model, LoRALinear):
        return merged(model)
    for name, m in list(_lora_modules(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, merged(m))
    return model


def _quantizable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """QLoRA's targets: every adapted linear, and every frozen plain linear inside the decoder
    layers (attention and MLP projections); embeddings, norms and a plain output head stay."""
    out: list[tuple[str, nn.Module]] = []
    layers = getattr(model, "layers", None)
    in_layers = {id(m) for m in layers.modules()} if isinstance(layers, nn.Module) else set()
    lora_children = {id(c) for _, m in _lora_modules(model) for c in (m.lora_a, m.lora_b)}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out.append((name, m))
        elif (type(m) is nn.Linear and id(m) in in_layers and id(m) not in lora_children
              and not m.weight.requires_grad):
            out.append((name, m))
    return out


@torch.no_grad()
def quantize_base_(model: nn.Module, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None, shards: int = 1) -> list[str]:
    """QLoRA: store every frozen base linear in NF4 (adapters untouched); returns the names.

    Adapted linears (``LoRALinear``) keep their adapter in full precision and get an NF4 base;
    the frozen plain linears of the decoder layers become :class:`NF4Linear` (same state-dict
    keys). Each linear is moved to ``device`` and its weight cast to ``dtype`` just before it is
    quantized, so a model loaded on the CPU never needs its full-precision size on the
    accelerator. Already quantized linears are skipped. ``shards``: FSDP2's number of row chunks
    (a meta-device model quantized before sharding; see ``tunekit.distributed``).

    Raises:
        QuantizationUnavailableError: torchao (the ``qlora`` extra) is not installed.
    """
    names = []
    for name, m in _quantizable(model):
        if isinstance(m, LoRALinear):
            if m.quantized:
                continue
            m.weight.data = m.weight.data.to(device=device, dtype=dtype)
            m.quantize_base_(shards=shards)
        else:
            m.weight.data = m.weight.data.to(device=device, dtype=dtype)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, NF4Linear.from_linear(m, shards=shards))
        names.append(name)
    return names


def quantized_base_names(model: nn.Module) -> list[str]:
    """Module names whose base weight is stored in NF4 (state-dict key ``<name>.weight``)."""
    return [name for name, m in model.named_modules()
            if (isinstance(m, LoRALinear) and m.quantized) or isinstance(m, NF4Linear)]


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every ``LoRALinear`` computes only its base layer.

    Example:
        >>> with disable_adapters(model):
        ...     ref_logits = model(tokens)  # the base model's output
    """
    mods = [m for _, m in _lora_modules(model)]
    previous = [m.disabled for m in mods]
    for m in mods:
        m.disabled = True
    try:
        yield model
    finally:
        for m, p in zip(mods, previous):
            m.disabled = p


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict / parameter name is a LoRA or DoRA adapter entry.

    True for ``<linear>.lora_a.weight``, ``<linear>.lora_b.weight`` and DoRA's
    ``<linear>.lora_magnitude`` (and their bare forms in a ``LoRALinear``'s own state dict),
    whatever wraps the linear (``_orig_mod.``, ``_checkpoint_wrapped_module.`` ...); False for
    every base-model weight. One definition for the whole library: what is saved as the adapter,
    what a LoRA model may miss when it loads a plain checkpoint, what resume compares.
    """
    parts = key.split(".")
    return parts[-1] == "lora_magnitude" or (len(parts) >= 2 and parts[-2] in ("lora_a", "lora_b"))
