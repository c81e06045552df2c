"""torch.compile applied per decoder layer (and to the loss), without renaming parameters."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from tunekit.training.activation_checkpointing import _checkpointed_forward, is_checkpointed

__all__ = ["compile_model", "compile_loss"]

_COMPILED = "_tunekit_compiled"


def compile_model(model: nn.Module, *, enabled: bool = True, **compile_kwargs: Any) -> nn.Module:
    """Compile each entry of ``model.layers`` in place with ``nn.Module.compile``.

    Per-layer compilation keeps compile time flat in depth (all layers share one graph) and
    leaves state-dict keys unchanged (no ``_orig_mod.`` prefix). A model without ``layers``
    is compiled whole. ``enabled=False`` returns the model untouched. Call it after
    :func:`~tunekit.training.activation_checkpointing.apply_activation_checkpointing` (as the
    loop does): a fully checkpointed layer then gets its body compiled with the checkpoint
    left outside the graph, so the backward recomputes the whole layer. Idempotent.
    """
    if not enabled:
        return model
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        for layer in layers:
            if getattr(layer, _COMPILED, False):
                continue
            inner = getattr(layer, "_tunekit_inner_forward", None)
            if is_checkpointed(layer) and inner is not None and not layer._tunekit_save_matmuls:
                # Full activation checkpointing: compile the layer body and keep the
                # checkpoint in eager around it. A checkpoint traced *inside* the compiled
                # graph lets the partitioner keep the matmul outputs (it never recomputes
                # GEMMs), which on the 7B LoRA shape kept ~10 GiB of activations instead
                # of recomputing them.
                layer.forward = functools.partial(
                    _checkpointed_forward, torch.compile(inner, **compile_kwargs), False
                )
            else:
                # Plain layers, and op-level selective checkpointing (its policy must see the
                # individual ops, so the checkpoint is traced into the graph).
                layer.compile(**compile_kwargs)
            setattr(layer, _COMPILED, True)
    else:
        model.compile(**compile_kwargs)
    return model


def compile_loss(loss_fn: Any, *, enabled: bool = True, **compile_kwargs: Any) -> Any:
    """Compile the loss's inner computation if it offers ``.compile()``; returns ``loss_fn``."""
    if enabled and hasattr(loss_fn, "compile"):
        loss_fn.compile(**compile_kwargs)
    return loss_fn
