"""FSDP2 state-dict helpers: full state dicts in and out of a sharded (or plain) model.

A model sharded by ``tunekit.training.prepare.shard_model`` carries the marker attribute
:data:`FSDP_ATTR` (its mesh device and precision); every helper here also works on a plain
model in one process, so callers never branch on sharding themselves. Only torch is imported.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import torch
from torch import nn

from tunekit.distributed._process import is_rank_zero

__all__ = [
    "FSDP_ATTR",
    "full_value",
    "gather_full_model",
    "gather_full_optimizer_state_dict",
    "is_sharded",
    "load_full_state_dict",
    "load_optimizer_state_dict",
    "local_grads",
    "mesh_device",
    "set_gradient_sync",
]

FSDP_ATTR = "_tunekit_fsdp"


def _dtensor_cls() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` was sharded by ``shard_model`` (FSDP2 / DTensor parameters)."""
    if getattr(model, FSDP_ATTR, None) is not None:
        return True
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def mesh_device(model: nn.Module) -> torch.device:
    """The device a sharded model keeps its shards on (CPU for a plain model)."""
    info = getattr(model, FSDP_ATTR, None) or {}
    return torch.device(info.get("device", "cpu"))


def _init_buffers(model: nn.Module, device: torch.device) -> None:
    init = getattr(model, "init_buffers", None)
    if callable(init):
        init(device=device)


def load_full_state_dict(model: nn.Module, full_sd: Mapping[str, torch.Tensor], *,
                         strict: bool = True, skip: Collection[str] = ()) -> None:
    """Load a full (unsharded) state dict; each rank keeps only its shards.

    Only rank 0 needs the tensors: other ranks may pass ``{}`` (rank 0 broadcasts each tensor,
    every rank keeps its slice). A meta-device model is allocated first when ``strict`` (every
    parameter is then overwritten); with ``strict=False`` the model must already hold values
    for what ``full_sd`` lacks (``tunekit.training.prepare.materialize_random`` gives fresh ones).
    ``skip``: keys the caller fills itself afterwards (QLoRA's NF4 shards): not read from
    ``full_sd`` and not counted as missing. RoPE buffers are rebuilt afterwards.

    Raises:
        ValueError: a meta-device model with ``strict=False``.
        RuntimeError: ``strict`` and keys missing or unexpected.
    """
    meta = any(p.is_meta for p in model.parameters())
    if meta and not strict:
        raise ValueError("load_full_state_dict(strict=False) on a meta-device model: materialize it first")
    if not is_sharded(model):
        device = torch.device("cpu") if meta else next(model.parameters()).device
        if meta:
            model.to_empty(device=device)
        missing, unexpected = model.load_state_dict(dict(full_sd), strict=False)
        if strict and (missing or unexpected):
            raise RuntimeError(f"load_full_state_dict: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
        _init_buffers(model, device)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    device = mesh_device(model)
    if meta:
        model.to_empty(device=device)
    skip = set(skip)
    result = set_model_state_dict(
        model, {k: v for k, v in full_sd.items() if k not in skip} if is_rank_zero() else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict and not skip),
    )
    missing = [k for k in getattr(result, "missing_keys", None) or [] if k not in skip]
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if strict and (missing or unexpected):
        raise RuntimeError(f"load_full_state_dict: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
    _init_buffers(model, device)


def gather_full_model(model: nn.Module, skip: Collection[str] = ()) -> dict[str, torch.Tensor] | None:
    """Every parameter gathered to rank 0's CPU (a collective); None on other ranks.

    Parameters are gathered one at a time, so no GPU holds more than one full parameter beyond
    its shards. A plain model gives its own (detached) state dict. ``skip``: keys left out
    (the caller gathers them its own way: QLoRA's NF4 shards).
    """
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items() if k not in skip}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not skip:
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if is_rank_zero() else None
    DTensor = _dtensor_cls()
    out = {}
    for key, value in get_model_state_dict(model).items():  # the local shards, by clean names
        if key in skip:
            continue
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if is_rank_zero():
            out[key] = full.detach().cpu()
        del full
    return out if is_rank_zero() else None


def gather_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The full optimizer state (keyed by parameter names) on rank 0's CPU; None elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if is_rank_zero() else None


def _is_name_keyed(osd: Mapping[str, Any]) -> bool:
    groups = osd.get("param_groups") or []
    params = [p for g in groups for p in g.get("params", [])]
    return bool(params) and isinstance(params[0], str)


def _to_name_keyed(model: nn.Module, optimizer: torch.optim.Optimizer, osd: Mapping[str, Any]) -> dict:
    """An ``optimizer.state_dict()`` (integer ids) re-keyed by parameter names.

    The saved ids of group ``g`` correspond, in order, to ``optimizer.param_groups[g]``'s
    parameters (the optimizer was built on the same parameters in the same order).
    """
    names = {id(p): n for n, p in model.named_parameters()}
    saved_groups, groups = osd["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups) or any(
        len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, groups)
    ):
        raise ValueError("resume: the saved optimizer state does not match this optimizer's parameter groups")
    id_to_name = {}
    new_groups = []
    for s, g in zip(saved_groups, groups):
        fqns = [names[id(p)] for p in g["params"]]
        id_to_name.update(zip(s["params"], fqns))
        new_groups.append({**s, "params": fqns})
    state = {id_to_name[i]: v for i, v in osd["state"].items()}
    return {"state": state, "param_groups": new_groups}


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                              osd: Mapping[str, Any]) -> None:
    """Load a full optimizer state dict, in either format, into a plain or sharded model's optimizer.

    ``optimizer.state_dict()`` format (integer ids, single-device saves) and the name-keyed
    format of :func:`gather_full_optimizer_state_dict` (FSDP saves) are both accepted; under
    FSDP each rank keeps its slices.
    """
    if not is_sharded(model) and not _is_name_keyed(osd):
        optimizer.load_state_dict(dict(osd))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not _is_name_keyed(osd):
        osd = _to_name_keyed(model, optimizer, osd)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=dict(osd),
                             options=StateDictOptions(full_state_dict=True))


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2: skip (False) or do (True) the gradient reduce-scatter of the next backward."""
    fn = getattr(model, "set_requires_gradient_sync", None)
    if callable(fn):
        fn(enabled)


def local_grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients as plain tensors (a DTensor gradient's local shard), for in-place scaling."""
    DTensor = _dtensor_cls()
    return [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A replicated/partial DTensor as a plain tensor (plain tensors unchanged)."""
    DTensor = _dtensor_cls()
    return t.full_tensor() if isinstance(t, DTensor) else t
