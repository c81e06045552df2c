"""Activation checkpointing applied to a built model, per decoder layer.

The layer's ``forward`` is replaced on the instance by a checkpointed call, so module and
parameter names (and therefore state-dict keys, LoRA adapter keys, FSDP units) do not change.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["apply_activation_checkpointing", "is_checkpointed"]

_MARK = "_tunekit_checkpointed"


def _matmul_policy() -> Callable[..., Any]:
    from torch.utils.checkpoint import CheckpointPolicy

    save = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _checkpointed_forward(
    forward: Callable[..., Any], save_matmuls: bool, *args: Any, **kwargs: Any
) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    extra: dict[str, Any] = {}
    if save_matmuls:
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        extra["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _matmul_policy())
    return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether :func:`apply_activation_checkpointing` wrapped this module."""
    return getattr(module, _MARK, False)


def apply_activation_checkpointing(
    model: nn.Module, every_k_layers: int = 1, save_matmuls: bool = False
) -> list[int]:
    """Checkpoint every ``every_k_layers``-th layer of ``model.layers``.

    Args:
        model: a model with a ``layers`` ModuleList (one entry per decoder layer).
        every_k_layers: 1 checkpoints all layers; k checkpoints layers 0, k, 2k, ...
            (selective: trade memory for less recompute).
        save_matmuls: op-level selective checkpointing: keep matmul outputs, recompute
            only the cheap pointwise ops (norms, activations, RoPE).

    Returns:
        The indices of the layers that are now checkpointed. Idempotent.
    """
    if every_k_layers < 1:
        raise ValueError(f"every_k_layers must be >= 1, got {every_k_layers}")
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `layers` ModuleList to checkpoint")
    done = []
    for i, layer in enumerate(layers):
        if i % every_k_layers:
            continue
        if not is_checkpointed(layer):
            # Bind the original bound method; the instance attribute shadows the class one.
            # The inner forward and the policy are kept so compile_model can compile the
            # inner forward and leave the (full-recompute) checkpoint outside the graph.
            layer._tunekit_inner_forward = layer.forward
            layer._tunekit_save_matmuls = save_matmuls
            layer.forward = functools.partial(_checkpointed_forward, layer.forward, save_matmuls)
            setattr(layer, _MARK, True)
        done.append(i)
    return done
