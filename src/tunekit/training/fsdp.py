"""FSDP2 sharding, full/sharded state dicts and sharded (DCP) checkpoints.

The recipes import these through ``tunekit.training.distributed``. The order for a
distributed run (see docs/distributed.md)::

    rank, world = init_distributed(device)
    with torch.device("meta"):
        model = llama2_7b(lora=spec)          # no memory yet
    shard_model(model, dtype="bf16", activation_checkpointing=True, compile=False)
    load_full_state_dict(model, sd if rank == 0 else {}, strict=spec is None)
    train(model, ...)                          # the loop sees a sharded model

Inside :func:`shard_model` the order per decoder layer is: activation checkpointing, then
``torch.compile``, then ``fully_shard`` (the FSDP unit wraps the checkpointed, compiled
layer: FSDP's all-gather/reshard hooks stay outside the compiled graph and the recompute
in backward runs with the layer's parameters gathered), and last ``fully_shard`` on the
root (embeddings, final norm, output projection).

Checkpoints: end-of-epoch checkpoints are full state dicts gathered to rank 0's CPU
(:func:`gather_full_state_dict`, :func:`gather_full_optimizer_state_dict`) and written by the
format checkpointer; step checkpoints are sharded with ``torch.distributed.checkpoint``
(:func:`save_sharded_checkpoint`), loadable on any number of ranks, a single process included.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tunekit.training.distributed import (
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    is_distributed,
    is_rank_zero,
)

__all__ = [
    "is_sharded",
    "shard_model",
    "load_full_state_dict",
    "materialize_random",
    "gather_full_state_dict",
    "gather_full_optimizer_state_dict",
    "load_optimizer_state_dict",
    "save_sharded_checkpoint",
    "load_sharded_checkpoint",
    "load_resume_state",
    "is_sharded_checkpoint",
    "sharded_model_shapes",
    "materialize_empty",
    "set_gradient_sync",
    "local_grads",
    "SHARDED_DIR",
]

SHARDED_DIR = "dcp"  # sub-directory of a sharded step checkpoint holding the DCP files
_FSDP_ATTR = "_tunekit_fsdp"


def _dtensor_cls() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` was sharded by :func:`shard_model` (FSDP2 / DTensor parameters)."""
    if getattr(model, _FSDP_ATTR, None) is not None:
        return True
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _mesh_device(model: nn.Module) -> torch.device:
    info = getattr(model, _FSDP_ATTR, None) or {}
    return torch.device(info.get("device", "cpu"))


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
            (and therefore the optimizer state) keep their storage dtype (fp32 master weights
            if the model was built in fp32; build it in bf16 for pure-bf16 training).
            ``"fp32"``: no mixed precision.
        reshard_after_forward: free gathered parameters after each layer's forward (ZeRO-3;
            False keeps them until backward: ZeRO-2, more memory, less communication). The
            last layer is never resharded after forward (its backward comes first).
        cpu_offload: keep the sharded parameters, gradients and optimizer step on the CPU.
        activation_checkpointing: checkpoint every ``ac_every_k_layers``-th layer (applied
            before sharding).
        ac_policy: ``"full"`` (recompute the whole layer) or ``"selective"`` (keep the matmul
            outputs: ``apply_activation_checkpointing(save_matmuls=True)``).
        compile: ``torch.compile`` each layer (applied after checkpointing, before sharding).

    Returns:
        ``model``, sharded in place. Single-process (no process group): the model unchanged
        (AC/compile are then left to the loop). The training loop applies neither to a sharded
        model: pass here what ``TrainSettings`` asks for (the loop refuses a mismatch).
    """
    if ac_policy not in ("full", "selective"):
        raise ValueError(f"shard_model: ac_policy must be 'full' or 'selective', got {ac_policy!r}")
    if not is_distributed():
        return model
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    from tunekit.training.activation_checkpointing import apply_activation_checkpointing
    from tunekit.training.compile import compile_model
    from tunekit.training.precision import get_dtype

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
    setattr(model, _FSDP_ATTR, {"device": str("cpu" if cpu_offload else device),
                                "dtype": str(dtype), "cpu_offload": cpu_offload})
    return model


@torch.no_grad()
def _materialize(model: nn.Module, device: torch.device, *, init: bool = True) -> None:
    """Allocate a meta-device model on ``device`` and give every parameter a fresh init.

    LoRA ``A`` gets its Kaiming init and ``B`` zeros (through ``LoRALinear.reset_parameters``;
    its ``lora_a``/``lora_b`` children are skipped so ``B`` stays zero). ``init=False`` only
    allocates (every parameter is about to be overwritten).
    """
    from tunekit.modules.peft import reset_all_parameters

    model.to_empty(device=device)
    if init:
        reset_all_parameters(model)


def materialize_random(model: nn.Module) -> nn.Module:
    """Give a meta-device model (sharded or not) fresh random weights, each rank only its shards.

    For benchmarks and from-scratch training; sharded models are allocated on their mesh
    device, plain ones on the CPU. RoPE buffers are rebuilt.
    """
    device = _mesh_device(model) if is_sharded(model) else torch.device("cpu")
    _materialize(model, device)
    _init_buffers(model, device)
    return model


def materialize_empty(model: nn.Module) -> nn.Module:
    """Allocate a meta-device model (sharded or not) without initialising its parameters.

    For a model whose every parameter is loaded next (a sharded checkpoint); each rank
    allocates only its shards. RoPE buffers are built.
    """
    device = _mesh_device(model) if is_sharded(model) else torch.device("cpu")
    _materialize(model, device, init=False)
    _init_buffers(model, device)
    return model


def _init_buffers(model: nn.Module, device: torch.device) -> None:
    init = getattr(model, "init_buffers", None)
    if callable(init):
        init(device=device)


def load_full_state_dict(model: nn.Module, full_sd: Mapping[str, torch.Tensor], *,
                         strict: bool = True) -> None:
    """Load a full (unsharded) state dict; each rank keeps only its shards.

    Only rank 0 needs the tensors: other ranks may pass ``{}`` (rank 0 broadcasts each
    tensor, every rank keeps its slice). A meta-device model is materialised first
    (parameters missing from ``full_sd`` — LoRA adapters with ``strict=False`` — get their
    fresh init), and the RoPE buffers are rebuilt afterwards.

    Args:
        model: a model sharded by :func:`shard_model` (or a plain model, single-process).
        full_sd: tunekit-named full state dict (on rank 0; CPU tensors are fine).
        strict: every model key must be present (False for LoRA base weights).
    """
    meta = any(p.is_meta for p in model.parameters())
    if not is_sharded(model):
        device = torch.device("cpu") if meta else next(model.parameters()).device
        if meta:
            _materialize(model, device)
        missing, unexpected = model.load_state_dict(dict(full_sd), strict=False)
        if strict and (missing or unexpected):
            raise RuntimeError(f"load_full_state_dict: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
        _init_buffers(model, device)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    device = _mesh_device(model)
    if meta:  # strict: every parameter is overwritten below, so skip the random init
        _materialize(model, device, init=not strict)
    result = set_model_state_dict(
        model, dict(full_sd) if is_rank_zero() else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict),
    )
    if strict and result is not None and (result.missing_keys or result.unexpected_keys):
        raise RuntimeError(f"load_full_state_dict: missing keys {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    _init_buffers(model, device)


def _gather_full_model(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Every parameter gathered to rank 0's CPU (a collective); None on other ranks."""
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if is_rank_zero() else None


def _adapter_keys(sd: Mapping[str, Any]) -> list[str]:
    return [k for k in sd if k.endswith((".lora_a.weight", ".lora_b.weight", ".lora_magnitude"))]


@torch.no_grad()
def _merge_full(model: nn.Module, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``W + (alpha/r) B @ A`` (DoRA: rescaled per row) for every enabled LoRA module, from ``full``."""
    from tunekit.modules.peft import LoRALinear

    adapter = set(_adapter_keys(full))
    out = {k: v for k, v in full.items() if k not in adapter}
    for name, m in model.named_modules():
        if not isinstance(m, LoRALinear) or m.disabled:
            continue
        w = full[f"{name}.weight"]
        a, b = full[f"{name}.lora_a.weight"], full[f"{name}.lora_b.weight"]
        merged = w.float() + m.scaling * (b.float() @ a.float())
        if m.use_dora:  # DoRA: m / ||W + s B A||_row * (W + s B A)
            mag = full[f"{name}.lora_magnitude"].float()
            merged = (mag / torch.linalg.norm(merged, dim=1)).unsqueeze(1) * merged
        out[f"{name}.weight"] = merged.to(w.dtype)
    return out


def gather_full_state_dict(model: nn.Module, *, adapter_only: bool = False) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (CPU tensors), None on the other ranks (a collective).

    For a LoRA model: the merged weights (plain model keys, loadable by a ``lora=None``
    model and by the format checkpointers), or with ``adapter_only=True`` the adapter
    weights only. Parameters are gathered one at a time, so no GPU holds more than one full
    parameter beyond its shards; rank 0's host memory holds the result.
    """
    full = _gather_full_model(model)
    if full is None:
        return None
    if adapter_only:
        return {k: full[k] for k in _adapter_keys(full)}
    if _adapter_keys(full):
        return _merge_full(model, full)
    return full


def gather_model_states(model: nn.Module, lora: bool) -> dict[str, Any] | None:
    """``{"model": full or merged, "adapter": ... (LoRA)}`` on rank 0 from one gather."""
    full = _gather_full_model(model)
    if full is None:
        return None
    if not lora:
        return {"model": full}
    return {"model": _merge_full(model, full), "adapter": {k: full[k] for k in _adapter_keys(full)}}


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


# ----------------------------------------------------------------------------- sharded checkpoints


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def _prune_steps(output_dir: Path, keep_last_n: int | None) -> None:
    from tunekit.checkpointing import COMPLETE_MARKER

    if keep_last_n is None:
        return
    steps = sorted(
        (int(d.name.split("_", 1)[1]), d) for d in output_dir.glob("step_*")
        if d.name.split("_", 1)[1].isdigit() and (d / COMPLETE_MARKER).is_file()
    )
    for _, d in steps[: max(0, len(steps) - keep_last_n)]:
        shutil.rmtree(d, ignore_errors=True)


def save_sharded_checkpoint(output_dir: str | Path, name: str, *, model: nn.Module,
                            optimizer: torch.optim.Optimizer, extra: Mapping[str, Any],
                            info: Mapping[str, Any], keep_last_n: int | None = None) -> Path:
    """Write ``output_dir/name/`` with every rank's shards (a collective), atomically.

    Layout: ``dcp/`` (``torch.distributed.checkpoint`` files: model + optimizer, each rank
    writing its own shards), ``recipe_state.pt`` (``extra``: lr_scheduler, recipe_state,
    plus ``sharded_checkpoint``), and the ``COMPLETE`` marker (written last, by rank 0, then the
    directory is renamed into place as the format checkpointers do). ``output_dir`` must be
    on a file system every rank sees.
    """
    from torch.distributed import checkpoint as dcp

    from tunekit.checkpointing import RECIPE_STATE_FILE
    from tunekit.checkpointing._io import atomic_checkpoint_dir

    output_dir = Path(output_dir)
    final = output_dir / name
    state = _dcp_state(model, optimizer)
    extra = {**extra, "sharded_checkpoint": str((final / SHARDED_DIR).resolve())}
    marker = {**info, "format": "dcp", "world_size": get_world_size()}
    if is_rank_zero():
        with atomic_checkpoint_dir(output_dir, name, marker) as tmp:
            broadcast_object(str(tmp))
            dcp.save(state, checkpoint_id=str(tmp / SHARDED_DIR))
            torch.save(extra, tmp / RECIPE_STATE_FILE)
        _prune_steps(output_dir, keep_last_n)
    else:
        tmp = broadcast_object(None)
        dcp.save(state, checkpoint_id=str(Path(tmp) / SHARDED_DIR))
    barrier()
    return final


def load_sharded_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a :func:`save_sharded_checkpoint` ``dcp/`` directory into ``model`` and ``optimizer``.

    Works on any number of ranks (DCP reshards), a single non-distributed process included.
    """
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"resume: {path} is not a sharded checkpoint (no .metadata); if the run directory "
            "moved, load it with tunekit.training.distributed.load_resume_state(<step dir>)"
        )
    state = _dcp_state(model, optimizer)  # templates: this run's shapes and shards
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"])


def is_sharded_checkpoint(checkpoint_dir: str | Path) -> bool:
    """True for a step checkpoint written by :func:`save_sharded_checkpoint` (``dcp/``)."""
    return (Path(checkpoint_dir).expanduser() / SHARDED_DIR).is_dir()


def sharded_model_shapes(checkpoint_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """``{model key: shape}`` of a sharded checkpoint, read from its DCP metadata (no tensors)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(Path(checkpoint_dir).expanduser() / SHARDED_DIR)).read_metadata()
    out = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith("model.") and hasattr(md, "size"):
            out[key[len("model."):]] = tuple(md.size)
    return out


def load_resume_state(checkpoint_dir: str | Path, model_type: str = "LLAMA2", *,
                      lora: bool = False, load_model: bool = True) -> dict[str, Any]:
    """What to pass to ``train(resume_state=...)`` for any checkpoint directory.

    A sharded step checkpoint (``dcp/``, written under FSDP) gives its training state plus
    ``sharded_checkpoint`` (the loop then reads model + optimizer from the DCP files,
    resharding to this run's world size, a single process included); a full checkpoint
    gives ``tunekit.checkpointing.load_resume_state`` (full fine-tuning: the weights under
    ``model``) or ``load_training_state`` (LoRA: adapter + training state; the recipe loads
    the base weights itself).

    Args:
        checkpoint_dir: an ``epoch_N`` / ``step_N`` directory.
        model_type: key of ``tunekit.models.MODEL_TYPES`` (to read full-FT weights).
        lora: the run is a LoRA run (never read the saved, merged, model weights).
        load_model: False skips reading full-FT weights (ranks other than 0 of a sharded run,
            which receive their shards from rank 0); ``model`` is then absent.
    """
    from tunekit.checkpointing import load_training_state
    from tunekit.checkpointing import load_resume_state as load_full

    d = Path(checkpoint_dir).expanduser()
    if is_sharded_checkpoint(d):
        out = load_training_state(d)
        out["sharded_checkpoint"] = str((d / SHARDED_DIR).resolve())
        return out
    if lora or not load_model:
        return load_training_state(d)
    return load_full(d, model_type)


# ----------------------------------------------------------------------------- loop helpers


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
