"""The model a recipe trains or runs: built on the meta device, weights assigned without a copy.

One process: the model is built on the meta device and the checkpoint's tensors become its
parameters (``load_state_dict(assign=True)``); LoRA adapters are created fresh. Several ranks
(FSDP2): every rank builds on the meta device and shards (``tunekit.training.prepare``), only rank
0 reads the checkpoint and broadcasts it, each rank keeping its shards.

The inference recipes (``generate``, ``evaluate``) load the model in three steps, so that each can
check its own inputs in between before any weight is read: :func:`find_inference_weights` (base
model, ``checkpoint=``, plus ``adapter=``), :func:`build_inference_model` (meta device, checked
against the weights' JSON) and :func:`load_inference_weights` (adapter merged, eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from tunekit.checkpointing import CheckpointError, check_model_matches
from tunekit.config import ConfigError, instantiate
from tunekit.distributed import broadcast_object, load_full_state_dict
from tunekit.modules.peft import (
    QUANTIZE_ATTR,
    LoRALinear,
    is_adapter_key,
    load_nf4_shard,
    quantize_base_,
    quantized_base_names,
    set_trainable_params,
)
from tunekit.training.device import get_device
from tunekit.training.precision import get_dtype
from tunekit.training.prepare import cast_params_, materialize_empty, shard_model

__all__ = [
    "InferenceWeights",
    "build_inference_model",
    "build_model",
    "build_training_model",
    "builds_from_checkpoint",
    "check_tokenizer_fits",
    "find_inference_weights",
    "load_inference_weights",
    "load_model_weights",
]


def _materialize_meta_(model: nn.Module, device: torch.device) -> list[str]:
    """Give every parameter still on the meta device real storage; returns their names.

    Only LoRA adapters are expected here (a plain checkpoint has no ``lora_a``/``lora_b``);
    they get PEFT's initialisation (A Kaiming, B zero) through ``reset_adapter``.
    """
    names = [n for n, p in model.named_parameters() if p.is_meta]
    for m in model.modules():
        dora_meta = isinstance(m, LoRALinear) and m.use_dora and m.lora_magnitude.is_meta
        if isinstance(m, LoRALinear) and (m.lora_a.weight.is_meta or m.lora_b.weight.is_meta or dora_meta):
            dtype = m.weight.dtype if m.weight.is_floating_point() else torch.float32
            m.lora_a.to_empty(device=device).to(dtype)
            m.lora_b.to_empty(device=device).to(dtype)
            if dora_meta:  # DoRA: its magnitude is the row norm of the weight just loaded
                m.lora_magnitude = nn.Parameter(torch.empty(m.out_dim, device=device, dtype=dtype))
            m.reset_adapter()
    return names


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                       lora: bool, source: str) -> nn.Module:
    """Load a plain (base or merged) state dict into a meta-device model without a copy.

    ``load_state_dict(assign=True)`` makes the checkpoint's tensors the parameters, then the
    RoPE tables are rebuilt. With ``lora=True`` the adapter weights (absent from a plain
    checkpoint) are created fresh; any other missing or unexpected key is an error.

    Raises:
        CheckpointError: the checkpoint does not fit the model built from the config.
    """
    try:
        missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    except RuntimeError as err:  # size mismatches
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln][:4]
        raise CheckpointError(
            f"The weights in {source} do not fit the model chosen by the config: "
            + (" ".join(lines) or str(err).splitlines()[0])
            + " Pick the matching `model=` option (or the right checkpoint directory)."
        ) from None
    missing = [k for k in missing if not (lora and is_adapter_key(k))]
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {source} do not fit the model chosen by the config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Pick the matching `model=` option (or the right checkpoint directory)."
        )
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    _materialize_meta_(model, device)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(f"{source} left parameters unset: {still_meta[:5]}")
    model.init_buffers(device=device)
    return model


def build_model(make_model: Callable[..., nn.Module], state_dict: Mapping[str, torch.Tensor], *,
                lora: Any = None, source: str = "the checkpoint") -> nn.Module:
    """Build the model on the meta device (allocates nothing), then assign the weights.

    Args:
        make_model: the builder (``instantiate(cfg.model, _partial_=True)`` or a builder).
        state_dict: plain model weights, tunekit names (base or merged; never with adapters).
        lora: a ``LoRASpec`` (adapters created fresh and made the only trainable params) or None.
        source: where the weights came from, for error messages.
    """
    with torch.device("meta"):
        model = make_model(lora=lora) if lora is not None else make_model()
    load_model_weights(model, state_dict, lora=lora is not None, source=source)
    if lora is not None:
        set_trainable_params(model)
    return model


def build_training_model(make_model: Callable[..., nn.Module],
                         load_weights: Callable[[], Mapping[str, torch.Tensor]] | None, *,
                         settings: Any, lora: Any = None, source: str = "the checkpoint",
                         world_size: int = 1, rank: int = 0,
                         declared: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a fine-tuning recipe trains, on one process or sharded over several.

    One process: as :func:`build_model` (meta build, the weights assigned without a copy); the
    loop then places it and applies activation checkpointing and compile.

    Several ranks (FSDP2): every rank builds on the meta device, casts the parameters to
    ``settings.dtype`` (pure-bf16 storage with ``dtype=bf16``, as on one device) and shards
    with ``shard_model`` (mixed precision per ``settings.dtype``, activation checkpointing
    per ``activation_checkpointing`` / ``ac_policy`` / ``ac_every_k_layers``, ``compile``:
    applied before ``fully_shard``, so the loop does not apply them again). Only rank 0 calls
    ``load_weights`` and builds the full model on its CPU (fresh LoRA adapters drawn exactly
    as one process draws them); ``load_full_state_dict`` broadcasts it and every rank keeps
    only its shards.

    Args:
        make_model: the builder (``instantiate(cfg.model, _partial_=True)``).
        load_weights: returns the plain (base, or resumed full-FT) weights, tunekit names;
            None when a sharded checkpoint supplies every weight (the parameters are then
            only allocated, and the loop loads them).
        settings: the run's ``TrainSettings`` (dtype, AC, compile).
        lora: a ``LoRASpec`` or None.
        source: where the weights come from, for error messages.
        world_size, rank: from :func:`init_distributed`.
        declared: the checkpoint's non-shape settings (``checkpointer.model_settings``),
            checked on every rank before any weight is read (``tunekit.checkpointing.check_model_matches``).
    """
    with torch.device("meta"):
        model = make_model(lora=lora) if lora is not None else make_model()
    check_model_matches(model, declared, source)
    quantize = getattr(lora, "quantize_base", None)
    if world_size <= 1:  # the meta model gets the weights assigned, as build_model does
        if load_weights is not None:
            load_model_weights(model, load_weights(), lora=lora is not None, source=source)
        else:
            materialize_empty(model)
        if lora is not None:
            set_trainable_params(model)
        if quantize:  # QLoRA: prepare_model quantizes the frozen base once it is placed
            setattr(model, QUANTIZE_ATTR, quantize)
        return model
    cast_params_(model, get_dtype(settings.dtype))
    nf4_names: list[str] = []
    if quantize:  # QLoRA: NF4 on the meta device, so FSDP2 shards the 4-bit data itself
        set_trainable_params(model)
        try:
            quantize_base_(model, shards=world_size)
        except ValueError as err:
            raise ConfigError(
                f"lora.quantize_base={quantize} over {world_size} ranks: {err}. FSDP2 splits every NF4 "
                f"weight into {world_size} row shards of whole 64-value blocks; use a number of GPUs "
                "that divides the model's layer widths (published models: 2, 4 or 8)."
            ) from None
        nf4_names = [f"{n}.weight" for n in quantized_base_names(model)]
    shard_model(
        model, dtype=settings.dtype, activation_checkpointing=settings.activation_checkpointing,
        ac_every_k_layers=settings.ac_every_k_layers, ac_policy=settings.ac_policy,
        compile=settings.compile,
    )
    if load_weights is None:
        materialize_empty(model)
    else:
        full: Mapping[str, torch.Tensor] = {}
        error: BaseException | None = None
        if rank == 0:
            try:
                full = build_model(make_model, load_weights(), lora=lora, source=source).state_dict()
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not hang
                error = exc
        message = broadcast_object(None if error is None else str(error))
        if message is not None:
            if error is not None:
                raise error
            raise CheckpointError(f"(rank 0) {message}")
        load_full_state_dict(model, full, strict=True, skip=nf4_names)
        if nf4_names:  # rank 0 quantizes each whole weight (the others' `full` is empty), each keeps its rows
            params = dict(model.named_parameters())
            shards = {k: nn.Parameter(load_nf4_shard(params[k], full.get(k)),
                                      requires_grad=False) for k in nf4_names}
            model.load_state_dict(shards, strict=False, assign=True)
        del full
    if lora is not None:
        set_trainable_params(model)
    return model


def check_tokenizer_fits(tokenizer: Any, model: nn.Module) -> str | None:
    """Refuse a tokenizer whose ids exceed the model's vocabulary; note a smaller one.

    Returns:
        A warning to print when the tokenizer's vocabulary is smaller than the model's (fine:
        e.g. the bundled tokenizer with random-weight 32000-vocab models), else None.
    """
    vocab = model.tok_embeddings.num_embeddings
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"The tokenizer ({getattr(tokenizer, 'path', tokenizer)}) has {tokenizer.vocab_size} "
            f"pieces but the model's embedding has {vocab} rows, so some token ids would be out "
            "of range. Use the tokenizer files shipped with these weights: tokenizer=auto reads them from "
            "checkpointer.checkpoint_dir (or set tokenizer.path=<their tokenizer.json / tokenizer.model>)."
        )
    if tokenizer.vocab_size < vocab:
        return (f"note: the tokenizer has {tokenizer.vocab_size} pieces, the model {vocab}; "
                "ids above the tokenizer's are never produced (fine for random-weight tests).")
    return None


# ---- inference (generate, evaluate) --------------------------------------------------------------
@dataclass(frozen=True)
class InferenceWeights:
    """Where an inference recipe's weights are, found before any of them is read.

    Attributes:
        checkpointer: reads them (``load_checkpoint()["model"]``, tunekit names); its
            ``model_settings`` are what their JSON declares beyond shapes.
        source: the directory holding them: the ``checkpointer`` group's base model, or what
            ``checkpoint=`` points at (a run's newest checkpoint, an ``epoch_N/``, a model dir).
        model_type: the family row's name (``model_type=auto`` resolved from the weights' JSON).
        adapter: ``adapter=``: a LoRA adapter to merge on top of the weights, or None.
        device, dtype: where, and in which precision, the model runs.
    """

    checkpointer: Any
    source: Path
    model_type: str
    adapter: str | None
    device: torch.device
    dtype: torch.dtype


def find_inference_weights(*, checkpoint: str | None, adapter: str | None, checkpointer: Any,
                           output_dir: str, device: str, dtype: str) -> InferenceWeights:
    """Resolve ``device``/``dtype`` and the weights to run (nothing is read yet).

    Args:
        checkpoint: ``checkpoint=`` (a run, checkpoint or model directory), or None for the
            base model the ``checkpointer`` node points at.
        adapter: ``adapter=`` (a LoRA run or PEFT directory), or None.
        checkpointer: the ``checkpointer`` config node (its ``model_type`` names the family).
        output_dir: the run's directory (a checkpointer needs one; nothing is saved).
        device, dtype: the ``device`` and ``dtype`` settings.

    Raises:
        ConfigError: a device or dtype this machine cannot run.
        CheckpointError: no weights at ``checkpoint``, or ``adapter`` already merged into them.
    """
    from tunekit.generation import check_adapter_not_merged, resolve_checkpoint, weights_checkpointer

    try:
        run_device = get_device(device)
        run_dtype = get_dtype(dtype, run_device)
    except ValueError as err:  # no CUDA, or a dtype the device cannot run
        raise ConfigError(f"`device`={device!r}, `dtype`={dtype!r}: {err}.") from err
    model_type = checkpointer.model_type
    if checkpoint is not None:
        found = resolve_checkpoint(checkpoint)
        if adapter is not None:  # before any weight is read
            check_adapter_not_merged(found, adapter)
        source = found.weights_dir
        reader = weights_checkpointer(source, model_type=model_type, output_dir=output_dir)
    else:
        reader = instantiate(checkpointer)
        source = reader.checkpoint_dir
    # "auto": the family the weights' own JSON declares
    return InferenceWeights(reader, source, getattr(reader, "model_type", model_type), adapter, run_device, run_dtype)


def builds_from_checkpoint(model: Any) -> bool:
    """``model=auto``: the ``model`` node builds what the weights' own config declares."""
    target = (model.get("_component_") or model.get("_target_")) if model else None
    return str(target).endswith("model_from_checkpoint")


def build_inference_model(model: Any, weights: InferenceWeights) -> nn.Module:
    """The ``model`` node built on the meta device (nothing allocated), checked against the
    weights' JSON (RoPE base, norm eps, RoPE scaling) before any weight is read.

    ``model=auto`` builds what ``weights.source``'s own config declares (``checkpoint=`` included).
    """
    with torch.device("meta"):
        built = instantiate(model, path=str(weights.source)) if builds_from_checkpoint(model) else instantiate(model)
    check_model_matches(built, getattr(weights.checkpointer, "model_settings", None), str(weights.source))
    return built


def load_inference_weights(model: nn.Module, weights: InferenceWeights) -> nn.Module:
    """Read the weights (the adapter, when given, first and merged into them) into the meta-built
    ``model`` on ``weights.device`` in ``weights.dtype``; returns it in eval mode."""
    from tunekit.generation import load_adapter, merge_adapter

    adapter = scalings = None
    if weights.adapter is not None:  # read (and checked) before the model's weights
        attn = model.layers[0].attn
        adapter, scalings = load_adapter(weights.adapter, model_type=weights.model_type, num_heads=attn.num_heads,
                                         num_kv_heads=attn.num_kv_heads, embed_dim=attn.embed_dim)
    state = weights.checkpointer.load_checkpoint()["model"]
    if adapter is not None:
        state = merge_adapter(state, adapter, scalings, source=f"adapter={weights.adapter}")
        del adapter
    state = {k: v.to(device=weights.device, dtype=weights.dtype) for k, v in state.items()}
    load_model_weights(model, state, lora=False, source=str(weights.source))
    del state
    return model.eval()
