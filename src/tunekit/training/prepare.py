"""What makes a built model ready to train: placement, cast, activation checkpointing, compile, sharding.

The model code is written for one device; everything here is applied from outside, in one
valid order, by one owner:

- one process: :func:`prepare_model` moves the model to its device, casts its floating
  parameters, applies activation checkpointing, then compiles each (checkpointed) layer;
- several ranks: :func:`shard_model` applies activation checkpointing, compile, then FSDP2
  ``fully_shard`` per decoder layer and on the root (FSDP's hooks stay outside the compiled
  graph and the recompute in backward runs with the layer gathered); :func:`prepare_model`
  then only checks that the sharded model carries what the settings ask for.

The distributed order (see docs/distributed.md)::

    with torch.device("meta"):
        model = llama2_7b(lora=spec)          # no memory yet
    shard_model(model, dtype="bf16", activation_checkpointing=True, compile=False)
    load_full_state_dict(model, sd if rank == 0 else {}, strict=True)
    prepare_model(model, settings)            # checks only
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunekit.distributed import FSDP_ATTR, is_distributed, is_sharded, mesh_device
from tunekit.modules.peft import QUANTIZE_ATTR, is_nf4, quantize_base_, quantized_base_names, reset_all_parameters
from tunekit.training.activation_checkpointing import apply_activation_checkpointing, is_checkpointed
from tunekit.training.compile import compile_loss, compile_model
from tunekit.training.device import get_device
from tunekit.training.fp8 import apply_fp8_base_, fp8_base_problems
from tunekit.training.precision import get_dtype
from tunekit.training.settings import AC_POLICIES, SettingUnsupportedHere, TrainSettings

__all__ = [
    "cast_params_",
    "materialize_empty",
    "materialize_random",
    "prepare_loss",
    "prepare_model",
    "shard_model",
]


def cast_params_(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating *parameters* (not buffers: the fp32 RoPE tables stay fp32) to ``dtype``.

    Assigning ``.data`` keeps the Parameter objects, so an optimizer built earlier still
    points at them.
    """
    for p in model.parameters():
        if is_nf4(p):  # QLoRA's frozen base: stays NF4 (computed in the input's dtype)
            continue
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _is_compiled(layer: nn.Module) -> bool:
    # compile_model marks the layers it compiled (a fully checkpointed layer is compiled
    # inside its checkpoint, without _compiled_call_impl); nn.Module.compile sets the latter.
    return bool(getattr(layer, "_tunekit_compiled", False)) or (
        getattr(layer, "_compiled_call_impl", None) is not None
    )


def _layers_compiled(model: nn.Module) -> bool:
    layers = getattr(model, "layers", None)
    return isinstance(layers, nn.ModuleList) and any(_is_compiled(layer) for layer in layers)


def _sharded_wrapping_problems(model: nn.Module, settings: TrainSettings) -> list[str]:
    """A sharded model must already carry the AC/compile the settings ask for.

    ``shard_model`` applies them in the one valid order (checkpoint, compile, then
    ``fully_shard``); applying them after sharding would wrap FSDP's hooks.
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        return []
    out = []
    if settings.activation_checkpointing and not any(is_checkpointed(layer) for layer in layers):
        out.append("activation_checkpointing=True but the sharded model's layers are not "
                   "checkpointed: pass activation_checkpointing=True (and ac_policy, "
                   "ac_every_k_layers) to shard_model(), which applies it before fully_shard")
    if settings.compile and not _layers_compiled(model):
        out.append("compile=True but the sharded model's layers are not compiled: pass "
                   "compile=True to shard_model(), which compiles before fully_shard")
    return out


def _check_runnable_here(model: nn.Module, settings: TrainSettings, device: torch.device) -> None:
    """Settings valid in themselves that this device or model cannot run (one paragraph)."""
    problems = fp8_base_problems(device, model) if settings.fp8_base else []
    if settings.attention == "flex" and device.type != "cuda":
        problems.append(f"attention=flex trains only on CUDA (torch's flex attention has no backward on the "
                        f"{device.type}); set attention=auto (the dense mask there) or attention=varlen")
    if problems:
        raise SettingUnsupportedHere(" ".join(f"`{p.split('=')[0]}`: {p}." for p in problems))


def prepare_model(model: nn.Module, settings: TrainSettings) -> torch.device:
    """Make ``model`` ready for :func:`~tunekit.training.loop.train`; returns the device it runs on.

    A plain model is placed on ``settings.device``, its parameters cast to ``settings.dtype``,
    then checkpointed and compiled as the settings say (each idempotent). A sharded model is
    already placed and wrapped by :func:`shard_model`; it is only checked.

    Raises:
        ValueError: invalid settings (every problem listed), several ranks but an unsharded model,
            or a sharded model without the activation checkpointing / compile the settings ask for.
    """
    problems = settings.problems()
    if is_sharded(model):
        problems += _sharded_wrapping_problems(model, settings)
        if settings.fp8_base:
            problems.append("fp8_base=true is not supported with FSDP sharding yet: set fp8_base=false")
    if problems:
        raise ValueError("invalid training settings:\n  - " + "\n  - ".join(problems))
    if hasattr(model, "set_attention"):  # how packed rows attend (TransformerDecoder)
        model.set_attention(settings.attention)
    if is_sharded(model):
        return get_device(settings.device)
    if is_distributed() and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError(
            "invalid training settings:\n  - several ranks are running but the model is not "
            "sharded: call tunekit.training.prepare.shard_model(model, ...) first (each rank "
            "would otherwise train its own copy on its share of the data)"
        )
    device = get_device(settings.device)
    _check_runnable_here(model, settings, device)
    dtype = get_dtype(settings.dtype, device)
    quantize = getattr(model, QUANTIZE_ATTR, None)
    if quantize and not quantized_base_names(model):
        # QLoRA: each frozen linear is placed, cast and quantized in turn, so the accelerator
        # never holds the full-precision base; then the rest (adapters, norms, embeddings).
        quantize_base_(model, device=device, dtype=dtype)
    model.to(device)
    cast_params_(model, dtype)
    if settings.fp8_base:  # FP8 copies of the frozen base weights, made once (after the cast)
        apply_fp8_base_(model)
    if settings.activation_checkpointing:
        apply_activation_checkpointing(model, every_k_layers=settings.ac_every_k_layers,
                                       save_matmuls=settings.ac_policy == "selective")
    if settings.compile and not _layers_compiled(model):
        compile_model(model)
    return device


def prepare_loss(loss_fn: Any, settings: TrainSettings) -> Any:
    """The loss as the loop runs it (compiled with ``settings.compile``); returns ``loss_fn``."""
    return compile_loss(loss_fn, enabled=settings.compile)


def shard_model(
    model: nn.Module,
    *,
    dtype: str = "bf16",
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
    activation_checkpointing: bool = False,
    ac_every_k_layers: int = 1,
    ac_policy: str = "full",
    compile: bool = False,
) -> nn.Module:
    """Shard ``model`` with FSDP2 ``fully_shard``: one unit per ``model.layers`` entry + the root.

    Args:
        model: a built model (meta device, CPU or the local GPU) with a ``layers`` ModuleList.
            LoRA models work as they are: frozen base weights and trainable adapters share
            one FSDP unit per layer.
        dtype: ``"bf16"``: ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` —
            layers compute in bf16, gradients are reduced in fp32, the sharded parameters
            (and therefore the optimizer state) keep their storage dtype. ``"fp32"``: no
            mixed precision.
        reshard_after_forward: free gathered parameters after each layer's forward (ZeRO-3;
            False keeps them until backward). The last layer is never resharded after forward.
        cpu_offload: keep the sharded parameters, gradients and optimizer step on the CPU.
        activation_checkpointing: checkpoint every ``ac_every_k_layers``-th layer (applied
            before sharding).
        ac_policy: ``"full"`` or ``"selective"`` (keep the matmul outputs).
        compile: ``torch.compile`` each layer (after checkpointing, before sharding).

    Returns:
        ``model``, sharded in place. Single-process (no process group): the model unchanged
        (:func:`prepare_model` then applies AC/compile).
    """
    if ac_policy not in AC_POLICIES:
        raise ValueError(f"shard_model: ac_policy must be 'full' or 'selective', got {ac_policy!r}")
    if not is_distributed():
        return model
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"shard_model: {type(model).__name__} has no `layers` ModuleList")
    param_dtype = get_dtype(dtype)
    if activation_checkpointing:
        apply_activation_checkpointing(model, every_k_layers=ac_every_k_layers,
                                       save_matmuls=ac_policy == "selective")
    if compile:
        compile_model(model)
    kwargs: dict[str, Any] = {}
    if param_dtype == torch.bfloat16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        fully_shard(layer, reshard_after_forward=reshard_after_forward and i < last, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
    if torch.cuda.is_available() and torch.distributed.get_backend() != "gloo":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    setattr(model, FSDP_ATTR, {"device": str("cpu" if cpu_offload else device),
                               "dtype": str(dtype), "cpu_offload": cpu_offload})
    return model


def _materialize(model: nn.Module, *, init: bool) -> nn.Module:
    device = mesh_device(model) if is_sharded(model) else torch.device("cpu")
    with torch.no_grad():
        model.to_empty(device=device)
        if init:
            # LoRA A gets its Kaiming init and B zeros (LoRALinear.reset_parameters).
            reset_all_parameters(model)
    init_buffers = getattr(model, "init_buffers", None)
    if callable(init_buffers):
        init_buffers(device=device)
    return model


def materialize_random(model: nn.Module) -> nn.Module:
    """Give a meta-device model (sharded or not) fresh random weights, each rank only its shards.

    For benchmarks and from-scratch training; sharded models are allocated on their mesh
    device, plain ones on the CPU. RoPE buffers are rebuilt.
    """
    return _materialize(model, init=True)


def materialize_empty(model: nn.Module) -> nn.Module:
    """Allocate a meta-device model (sharded or not) without initialising its parameters.

    For a model whose every parameter is loaded next (a sharded checkpoint); each rank
    allocates only its shards. RoPE buffers are built.
    """
    return _materialize(model, init=False)
