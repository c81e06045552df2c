"""torch.compile applied per decoder layer (and to the loss), without renaming parameters."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["compile_model", "compile_loss"]


def compile_model(model: nn.Module, *, enabled: bool = True, **compile_kwargs: Any) -> nn.Module:
    """Compile each entry of ``model.layers`` in place with ``nn.Module.compile``.

    Per-layer compilation keeps compile time flat in depth (all layers share one graph) and
    leaves state-dict keys unchanged (no ``_orig_mod.`` prefix). A model without ``layers``
    is compiled whole. ``enabled=False`` returns the model untouched.
    """
    if not enabled:
        return model
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        for layer in layers:
            layer.compile(**compile_kwargs)
    else:
        model.compile(**compile_kwargs)
    return model


def compile_loss(loss_fn: Any, *, enabled: bool = True, **compile_kwargs: Any) -> Any:
    """Compile the loss's inner computation if it offers ``.compile()``; returns ``loss_fn``."""
    if enabled and hasattr(loss_fn, "compile"):
        loss_fn.compile(**compile_kwargs)
    return loss_fn
