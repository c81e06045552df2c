"""The one training loop for LoRA and full fine-tuning.

Recipes build the model, optimizer, scheduler, loss, data loaders, checkpointer and metric
logger, then call :func:`train`. Everything the loop saves it can restore: pass what the
checkpointer's ``load_checkpoint()`` returned as ``resume_state`` and the run continues where
it stopped, with the same per-step losses as an uninterrupted run (exact on the CPU).

Host syncs: the loop keeps per-step losses on the device and reads them back only at log
intervals, before evaluation/checkpointing and at the end (one ``.tolist()`` each time).

The logged ``loss`` is the token-weighted mean over the steps since the previous log record
(sum of token losses / tokens, accumulated on the device), so ``log_every_n_steps=20`` gives a
smooth curve; ``TrainResult.step_losses`` stays per step. The interval's running sums are saved
in every checkpoint's ``recipe_state["log_interval"]``, so a resumed run logs exactly the values
of an uninterrupted one even when the resume point falls inside a log interval.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch
from torch import nn
from tqdm import tqdm

from tunekit.training.activation_checkpointing import apply_activation_checkpointing, is_checkpointed
from tunekit.training.compile import compile_loss, compile_model
from tunekit.training.data_loading import StatefulSampler
from tunekit.training.device import get_device
from tunekit.training.distributed import (
    all_reduce_sum,
    any_rank_true,
    barrier,
    get_world_size,
    is_distributed,
    is_rank_zero,
)
from tunekit.training.fsdp import (
    full_value,
    gather_full_optimizer_state_dict,
    gather_model_states,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state_dict,
    load_sharded_checkpoint,
    local_grads,
    save_sharded_checkpoint,
    set_gradient_sync,
)
from tunekit.training.memory import memory_stats, reset_peak_memory_stats
from tunekit.training.precision import get_dtype
from tunekit.training.seed import get_rng_state, set_rng_state, set_seed
from tunekit.training.signals import graceful_shutdown

__all__ = [
    "TrainSettings",
    "TrainResult",
    "NonFiniteLossError",
    "Checkpointer",
    "train",
    "evaluate",
    "steps_per_epoch",
    "num_training_steps",
]


AC_POLICIES = ("full", "selective")


class Checkpointer(Protocol):
    """The part of a checkpointer the loop uses."""

    def save_checkpoint(self, state: dict[str, Any], epoch: int,
                        intermediate_checkpoint: bool = False, step: int | None = None) -> Any: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written after the last finite step."""


@dataclass
class TrainSettings:
    """Loop settings (the recipe fills them from its config).

    Attributes:
        epochs: passes over the training data.
        max_steps_per_epoch: cap on optimizer steps per epoch (None: the whole epoch).
        gradient_accumulation_steps: micro-batches per optimizer step; the gradient is the
            token-weighted mean over all of them (4 x 2 == 8 x 1).
        clip_grad_norm: max total gradient norm (None: no clipping; the norm is still logged).
        log_every_n_steps: metrics (and the NaN check) every N optimizer steps.
        save_every_n_steps: a step checkpoint every N steps (None: only at epoch ends).
        eval_every_n_steps: validation loss every N steps (None: only at the end).
        max_eval_batches: cap on validation batches per evaluation (None: all).
        device: "auto", "cpu", "cuda", "cuda:N".
        dtype: "fp32" or "bf16" (the model and optimizer state are cast to it).
        compile: torch.compile each decoder layer and the loss.
        activation_checkpointing: checkpoint decoder layers.
        ac_policy: with activation_checkpointing: ``"full"`` recomputes the whole layer in
            backward, ``"selective"`` keeps the matmul outputs and recomputes only the cheap
            pointwise ops (``apply_activation_checkpointing(save_matmuls=True)``).
        ac_every_k_layers: with activation_checkpointing, checkpoint every k-th layer only.
        seed: seeds python/numpy/torch at the start of a fresh run.
        handle_signals: SIGTERM/SIGINT finish the step, save a step checkpoint and return.
    """

    epochs: int = 1
    max_steps_per_epoch: int | None = None
    gradient_accumulation_steps: int = 1
    clip_grad_norm: float | None = 1.0
    log_every_n_steps: int = 1
    save_every_n_steps: int | None = None
    eval_every_n_steps: int | None = None
    max_eval_batches: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    ac_policy: str = "full"
    ac_every_k_layers: int = 1
    seed: int = 0
    handle_signals: bool = True

    def problems(self) -> list[str]:
        """Every invalid value, one message each (empty when valid)."""
        out = []
        positive = ("epochs", "gradient_accumulation_steps", "log_every_n_steps", "ac_every_k_layers")
        for name in positive:
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps_per_epoch", "save_every_n_steps", "eval_every_n_steps", "max_eval_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                out.append(f"{name} must be >= 1 or null, got {v}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            out.append(f"clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        if self.ac_policy not in AC_POLICIES:
            out.append(f"ac_policy must be one of {', '.join(AC_POLICIES)}, got {self.ac_policy!r}")
        try:
            get_dtype(self.dtype)
        except ValueError as err:
            out.append(str(err))
        return out


@dataclass
class TrainResult:
    """What :func:`train` returns (sweeps minimise ``final_val_loss``).

    Attributes:
        final_train_loss: loss of the last optimizer step run (None if none ran).
        final_val_loss: validation loss at the end (None without a val loader or when
            interrupted).
        step_losses: loss of each optimizer step run in this call, in order; the first is
            global step ``start_step + 1``.
        start_step: global step the call started from (0, or the resume point).
        global_step: optimizer steps done in total at the end.
        val_losses: (global_step, val_loss) of every evaluation.
        interrupted: stopped early by SIGTERM/SIGINT (a step checkpoint was saved).
        checkpoints: (epoch, step or None) of every checkpoint saved, in order.
    """

    final_train_loss: float | None
    final_val_loss: float | None
    step_losses: list[float] = field(default_factory=list)
    start_step: int = 0
    global_step: int = 0
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    interrupted: bool = False
    checkpoints: list[tuple[int, int | None]] = field(default_factory=list)


def steps_per_epoch(num_batches: int, settings: TrainSettings) -> int:
    """Optimizer steps per epoch: whole accumulation groups, capped by max_steps_per_epoch."""
    steps = num_batches // max(1, settings.gradient_accumulation_steps)  # validated in train
    if settings.max_steps_per_epoch is not None:
        steps = min(steps, settings.max_steps_per_epoch)
    return steps


def num_training_steps(num_batches: int, settings: TrainSettings) -> int:
    """Optimizer steps of the whole run (what lr schedules take as num_training_steps)."""
    return settings.epochs * steps_per_epoch(num_batches, settings)


# ----------------------------------------------------------------------------- helpers


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
             loader: Any, *, device: torch.device | str = "cpu",
             max_batches: int | None = None) -> float:
    """Token-weighted mean loss over ``loader`` (all ranks combined), in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [loss_sum, tokens]
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            loss_sum, n = loss_fn(model, _to_device(batch, device))
            total += torch.stack([loss_sum.double(), n.double()])
    finally:
        model.train(was_training)
    loss_sum, n = all_reduce_sum(total).tolist()
    return loss_sum / n if n > 0 else float("nan")


def _place_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device`` and cast floating *parameters* to ``dtype``.

    Buffers keep their dtype (the fp32 RoPE tables stay fp32). Assigning ``.data`` keeps the
    Parameter objects, so an optimizer built earlier still points at them.
    """
    model.to(device)
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _lora_state_fns() -> tuple[Callable[[nn.Module], dict], Callable[[nn.Module], dict]]:
    # Imported lazily: only LoRA runs need the adapter helpers.
    from tunekit.modules.peft import get_adapter_state_dict, get_merged_state_dict

    return get_merged_state_dict, get_adapter_state_dict


def _adapter_config_dict(adapter_config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(adapter_config) and not isinstance(adapter_config, type):
        return dataclasses.asdict(adapter_config)
    return dict(adapter_config)


def _model_states(model: nn.Module, adapter_config: Any) -> dict[str, Any]:
    """``model`` (+ ``adapter``, ``adapter_config`` for LoRA) entries of a checkpoint.

    Under FSDP every rank takes part in the gather; rank 0 gets the full (CPU) tensors,
    the other ranks an empty dict (only rank 0 saves).
    """
    if is_sharded(model):
        states = gather_model_states(model, lora=adapter_config is not None)
        if states is None:
            return {}
        if adapter_config is not None:
            states["adapter_config"] = _adapter_config_dict(adapter_config)
        return states
    if adapter_config is None:
        return {"model": model.state_dict()}
    merged, adapter = _lora_state_fns()
    return {
        "model": merged(model),
        "adapter": adapter(model),
        "adapter_config": _adapter_config_dict(adapter_config),
    }


def _restore_weights(model: nn.Module, state: Mapping[str, Any], lora: bool) -> None:
    """Load the trained weights a checkpoint holds: the adapter (LoRA) or the model (full)."""
    if is_sharded(model):  # full tensors in, each rank keeps its shards
        key = "adapter" if lora else "model"
        if state.get(key) is not None:
            load_full_state_dict(model, state[key], strict=not lora)
        return
    if lora:
        if state.get("adapter") is None:
            return
        missing, unexpected = model.load_state_dict(state["adapter"], strict=False)
        if unexpected:
            raise ValueError(f"resume: adapter keys not in the model: {unexpected[:5]}...")
        return
    if state.get("model") is not None:
        model.load_state_dict(state["model"])


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
    ``fully_shard``); applying them here, after sharding, would wrap FSDP's hooks.
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


def _sampler(loader: Any) -> Any:
    return getattr(loader, "sampler", None)


def _epoch_batches(loader: Any, epoch: int, skip_batches: int, seed: int) -> Iterator[Any]:
    """Iterator over ``loader`` for ``epoch``, past its first ``skip_batches`` batches."""
    sampler = _sampler(loader)
    batch_size = getattr(loader, "batch_size", None)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed + epoch)  # worker seeds: a function of the epoch only
    if isinstance(sampler, StatefulSampler) and batch_size is not None:
        sampler.set_epoch(epoch, start_index=skip_batches * batch_size)
        skip_batches = 0
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    it = iter(loader)
    for _ in range(skip_batches):  # generic fallback: exact only for deterministic loaders
        next(it)
    return it


def _recipe_state(*, epoch: int, step_in_epoch: int, global_step: int, settings: TrainSettings,
                  loader: Any, steps_in_epoch: int,
                  log_interval: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where to resume from: the next step to run, RNG states, data position (plain data).

    ``log_interval``: the running sums of the current log interval (``loss_sum``, ``tokens``),
    so a resumed run's first logged loss covers the same steps as the uninterrupted run's.
    """
    sampler = _sampler(loader)
    sampler_state = None
    if isinstance(sampler, StatefulSampler):
        batch_size = getattr(loader, "batch_size", None) or 0
        sampler_state = sampler.state_dict()
        sampler_state.update(
            epoch=epoch,
            start_index=step_in_epoch * settings.gradient_accumulation_steps * batch_size,
        )
    # No generator state: the sampler's order is a function of (seed, epoch), and the
    # loader's own generator (worker seeds) is reseeded per epoch in _epoch_batches.
    return {
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "steps_per_epoch": steps_in_epoch,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "world_size": get_world_size(),
        "batch_size": getattr(loader, "batch_size", None),
        "seed": settings.seed,
        "rng": get_rng_state(),
        "sampler": sampler_state,
        "log_interval": None if log_interval is None else dict(log_interval),
    }


def _saved_batch_size(rs: Mapping[str, Any]) -> int | None:
    """Per-rank micro-batch size of the saving run (recorded, or derived from the sampler)."""
    if rs.get("batch_size"):
        return int(rs["batch_size"])
    sampler, micro = rs.get("sampler"), rs.get("step_in_epoch", 0) * rs.get("gradient_accumulation_steps", 1)
    if sampler and micro and sampler.get("start_index"):
        return int(sampler["start_index"]) // micro
    return None


def _resume_problems(state: Mapping[str, Any], settings: TrainSettings,
                     batch_size: int | None = None) -> list[str]:
    """Why ``state`` cannot resume this run exactly (empty when it can)."""
    needed = ["lr_scheduler", "recipe_state"]
    if state.get("sharded_checkpoint") is None:  # a sharded checkpoint holds the optimizer
        needed.insert(0, "optimizer")
    missing = [k for k in needed if state.get(k) is None]
    if missing:
        return [f"resume_state lacks {missing}: the checkpoint was not saved by this loop"
                " (or its recipe_state was not written); start a new run from it instead"]
    rs = state["recipe_state"]
    out = []
    if rs.get("step_in_epoch", 0) > 0:  # a mid-epoch position is counted in samples
        # Exact when every step sees the same global samples: the sampler deals the epoch's
        # order out rank by rank, so (world_size x accumulation x batch) must be unchanged.
        ga, ws = settings.gradient_accumulation_steps, get_world_size()
        old_ga, old_ws = rs.get("gradient_accumulation_steps", ga), rs.get("world_size", ws)
        old_bs = _saved_batch_size(rs) or batch_size
        if batch_size is None or old_bs is None:
            changed = (old_ga, old_ws) != (ga, ws)
        else:
            changed = old_ga * old_ws * old_bs != ga * ws * batch_size
        if changed:
            out.append(
                f"resume: gradient_accumulation_steps was {old_ga}, world_size {old_ws} and batch_size "
                f"{old_bs} when the checkpoint was saved mid-epoch, now {ga}, {ws} and {batch_size}; "
                "keep world_size x gradient_accumulation_steps x batch_size (the global batch) "
                "unchanged, or resume from an epoch_* checkpoint"
            )
    return out


def _non_finite_message(step: int, epoch: int, value: float, last_ckpt: tuple[int, int | None] | None) -> str:
    where = "none was saved in this run"
    if last_ckpt is not None:
        e, s = last_ckpt
        where = f"the last one is step_{s}" if s is not None else f"the last one is epoch_{e}"
    return (
        f"Training stopped: the loss is {value} at optimizer step {step} (epoch {epoch}). "
        f"No checkpoint was written from this step on ({where}). Things to try: a lower "
        "optimizer.lr, a longer warmup (lr_scheduler.num_warmup_steps), gradient clipping "
        "(clip_grad_norm), dtype=fp32 instead of bf16, or look for empty or garbled samples "
        "in the data; set log_every_n_steps=1 to stop at the first bad step."
    )


# ----------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    train_loader: Any,
    val_loader: Any = None,
    checkpointer: Checkpointer | None = None,
    metric_logger: Any = None,
    settings: TrainSettings | None = None,
    adapter_config: Any = None,
    resume_state: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` and return its losses.

    Args:
        model: the model, weights loaded; for LoRA, with only the adapter trainable.
        optimizer: built on the trainable parameters.
        lr_scheduler: stepped once per optimizer step (``state_dict``/``load_state_dict``).
        loss_fn: ``loss_fn(model, batch) -> (loss_sum, num_tokens)`` (see ``losses``).
        train_loader: yields batch dicts (``tokens``, ``labels``, maybe ``mask``,
            ``input_pos``); use ``build_dataloader`` for exact mid-epoch resume.
        val_loader: held-out batches for the validation loss (optional).
        checkpointer: ``save_checkpoint(state, epoch, intermediate_checkpoint, step)``.
        metric_logger: ``log_dict(metrics, step)`` (optional).
        settings: :class:`TrainSettings`.
        adapter_config: LoRA config (dataclass or dict) for a LoRA run, None for full.
        resume_state: what ``checkpointer.load_checkpoint()`` returned for a resumed run.
        progress: show a tqdm bar (rank 0 only).
        on_step_end: called with the global step after each optimizer step (tests, hooks).

    Returns:
        A :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (nothing saved from that step on).
        ValueError: invalid settings or resume state (every problem listed).
    """
    settings = settings or TrainSettings()
    problems = settings.problems()
    spe = steps_per_epoch(len(train_loader), settings)
    if spe < 1:
        problems.append(
            f"the training data gives {len(train_loader)} batches per epoch, fewer than "
            f"gradient_accumulation_steps={settings.gradient_accumulation_steps}: no step can run"
        )
    if resume_state is not None:
        problems += _resume_problems(resume_state, settings, getattr(train_loader, "batch_size", None))
    sharded = is_sharded(model)
    if is_distributed() and not sharded and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        problems.append(
            f"{get_world_size()} ranks are running but the model is not sharded: call "
            "tunekit.training.distributed.shard_model(model, ...) before train() (each rank "
            "would otherwise train its own copy on its share of the data)"
        )
    if sharded:
        problems += _sharded_wrapping_problems(model, settings)
    if problems:
        raise ValueError("invalid training settings:\n  - " + "\n  - ".join(problems))

    device = get_device(settings.device)
    dtype = get_dtype(settings.dtype, device)
    rank_zero = is_rank_zero()
    world_size = get_world_size()
    ga = settings.gradient_accumulation_steps
    lora = adapter_config is not None

    if not sharded:
        # A sharded model is already placed, and shard_model applied its precision, AC and
        # compile before fully_shard (checked above); a plain model gets them here, in the
        # same order (checkpoint, then compile the checkpointed layer).
        _place_model(model, device, dtype)
        if settings.activation_checkpointing:  # idempotent
            apply_activation_checkpointing(model, every_k_layers=settings.ac_every_k_layers,
                                           save_matmuls=settings.ac_policy == "selective")
        if settings.compile and not _layers_compiled(model):
            compile_model(model)
    if settings.compile:
        compile_loss(loss_fn)

    epoch, step_in_epoch, global_step = 0, 0, 0
    # The current log interval's sum of token losses and token count (all ranks), on the device.
    log_loss = torch.zeros((), dtype=torch.float64, device=device)
    log_tokens = torch.zeros((), dtype=torch.int64, device=device)
    if resume_state is not None:
        rs = resume_state["recipe_state"]
        if rs.get("log_interval"):  # absent in older checkpoints: the interval restarts
            log_loss.fill_(float(rs["log_interval"]["loss_sum"]))
            log_tokens.fill_(int(rs["log_interval"]["tokens"]))
        if resume_state.get("sharded_checkpoint") is not None:  # model + optimizer, resharded
            load_sharded_checkpoint(resume_state["sharded_checkpoint"], model, optimizer)
        else:
            _restore_weights(model, resume_state, lora)
            load_optimizer_state_dict(model, optimizer, resume_state["optimizer"])
        lr_scheduler.load_state_dict(resume_state["lr_scheduler"])
        epoch, step_in_epoch, global_step = rs["epoch"], rs["step_in_epoch"], rs["global_step"]
        if rs.get("sampler") is not None and isinstance(_sampler(train_loader), StatefulSampler):
            sampler_state = dict(rs["sampler"])
            if sampler_state.get("world_size") != get_world_size():
                # Checked above: the global batch is unchanged, so the position in the
                # epoch's order carries over; the per-rank start is set by _epoch_batches.
                sampler_state.update(world_size=get_world_size(), start_index=0)
            _sampler(train_loader).load_state_dict(sampler_state)  # validates the data size
        if step_in_epoch >= spe:  # e.g. max_steps_per_epoch lowered since the save
            epoch, step_in_epoch = epoch + 1, 0
    else:
        set_seed(settings.seed)

    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = settings.epochs * spe
    result = TrainResult(final_train_loss=None, final_val_loss=None, start_step=global_step,
                         global_step=global_step)
    pending: list[torch.Tensor] = []  # per-step losses still on the device
    postfix = {"train": "", "val": ""}
    last_grad_norm: torch.Tensor | None = None
    last_ckpt: tuple[int, int | None] | None = None
    saved_step = -1
    tokens_since_log = 0
    t_log = time.perf_counter()
    pbar = tqdm(total=total_steps, initial=global_step, disable=not (progress and rank_zero),
                desc="train", dynamic_ncols=True, unit="step")

    def flush(current_epoch: int, extra: torch.Tensor | None = None) -> float | None:
        """Read pending losses (and ``extra``, a 0-dim tensor) back in one sync.

        Stops on the first non-finite step loss; returns ``extra``'s value (None without it).
        """
        if not pending and extra is None:
            return None
        read = [torch.stack(pending).double()] if pending else []
        if extra is not None:
            read.append(extra.double().reshape(1))
        values = torch.cat(read).tolist()
        extra_value = values.pop() if extra is not None else None
        first = global_step - len(values) + 1
        pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                pbar.close()
                raise NonFiniteLossError(_non_finite_message(first + i, current_epoch, v, last_ckpt))
        result.step_losses.extend(values)
        return extra_value

    def save(current_epoch: int, state_epoch: int, state_step_in_epoch: int, step: int | None,
             final: bool) -> None:
        nonlocal last_ckpt, saved_step
        flush(current_epoch)  # never save after a non-finite loss
        if checkpointer is None:
            return
        interval_loss, interval_tokens = torch.stack([log_loss, log_tokens.double()]).tolist()
        training_state = {
            "lr_scheduler": lr_scheduler.state_dict(),
            "recipe_state": _recipe_state(epoch=state_epoch, step_in_epoch=state_step_in_epoch,
                                          global_step=global_step, settings=settings,
                                          loader=train_loader, steps_in_epoch=spe,
                                          log_interval={"loss_sum": interval_loss,
                                                        "tokens": int(interval_tokens)}),
        }
        output_dir = getattr(checkpointer, "output_dir", None)
        if sharded and step is not None and output_dir is not None:
            # Step checkpoints under FSDP: every rank writes its shards (DCP), no gather.
            save_sharded_checkpoint(
                output_dir, f"step_{step}", model=model, optimizer=optimizer, extra=training_state,
                info={"epoch": current_epoch, "step": step, "intermediate": True},
                keep_last_n=getattr(checkpointer, "keep_last_n", None),
            )
        else:
            state = {
                **_model_states(model, adapter_config),
                "optimizer": (gather_full_optimizer_state_dict(model, optimizer) if sharded
                              else optimizer.state_dict()),
                **training_state,
            }
            if rank_zero:
                checkpointer.save_checkpoint(state, epoch=current_epoch,
                                             intermediate_checkpoint=not final, step=step)
            barrier()
        last_ckpt = (current_epoch, step)
        saved_step = global_step
        result.checkpoints.append(last_ckpt)

    def run_eval(current_epoch: int) -> None:
        flush(current_epoch)
        val = evaluate(model, loss_fn, val_loader, device=device, max_batches=settings.max_eval_batches)
        result.val_losses.append((global_step, val))
        result.final_val_loss = val
        if metric_logger is not None:
            metric_logger.log_dict({"val_loss": val}, step=global_step)
        postfix["val"] = f"val={val:.4f}"
        pbar.set_postfix_str(" ".join(v for v in postfix.values() if v), refresh=False)

    # RNG restore point: an uninterrupted run created the epoch's data iterator (which may
    # draw from the global RNG) before the saved step mid-epoch, after it at an epoch end.
    rng_to_restore = None if resume_state is None else resume_state["recipe_state"]["rng"]
    if rng_to_restore is not None and step_in_epoch == 0:
        set_rng_state(rng_to_restore)
        rng_to_restore = None
    model.train()
    reset_peak_memory_stats(device)
    last_eval_step = -1
    with graceful_shutdown(enabled=settings.handle_signals) as shutdown:
        while epoch < settings.epochs:
            batches = _epoch_batches(train_loader, epoch, step_in_epoch * ga, settings.seed)
            if rng_to_restore is not None:
                set_rng_state(rng_to_restore)
                rng_to_restore = None
            while step_in_epoch < spe:
                # ---- one optimizer step over `ga` micro-batches
                loss_sum = torch.zeros((), dtype=torch.float32, device=device)
                num_tokens = torch.zeros((), dtype=torch.int64, device=device)
                for micro in range(ga):
                    if sharded and ga > 1:  # reduce-scatter gradients on the last micro-batch only
                        set_gradient_sync(model, micro == ga - 1)
                    batch = _to_device(next(batches), device)
                    tokens_since_log += batch["tokens"].numel()
                    mb_loss, mb_tokens = loss_fn(model, batch)
                    mb_loss.backward()  # grads hold the token *sum*; normalised below
                    loss_sum += mb_loss.detach().float()
                    num_tokens += mb_tokens
                all_reduce_sum(loss_sum)
                all_reduce_sum(num_tokens)
                log_loss += loss_sum  # the log interval's running sums: no host sync
                log_tokens += num_tokens
                denom = num_tokens.clamp(min=1).float()
                # Data-parallel wrappers average grads over ranks; undo that and divide by
                # the global token count instead.
                grads = local_grads(params)  # DTensor grads: scale the local shards
                if grads:
                    torch._foreach_mul_(grads, world_size / denom)  # fp32 0-dim: no bf16 rounding of the scale
                # A list of the gradients kept past zero_grad(set_to_none=True) would keep a
                # whole model's worth of them alive through the next forward and backward.
                del grads
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    params, settings.clip_grad_norm if settings.clip_grad_norm else float("inf")
                )
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                global_step += 1
                step_in_epoch += 1
                result.global_step = global_step
                pending.append(loss_sum / denom)
                last_grad_norm = full_value(grad_norm)  # FSDP: a replicated DTensor
                pbar.update(1)
                end_of_epoch = step_in_epoch == spe

                # ---- logging (the only routine host sync)
                if global_step % settings.log_every_n_steps == 0 or (
                    end_of_epoch and epoch == settings.epochs - 1
                ):
                    # Token-weighted mean loss of the interval, read with the step losses.
                    # Rounded to fp32 like the step losses: a one-step interval logs exactly
                    # that step's loss (fp64 division rounded to fp32 == the fp32 division).
                    interval_loss = flush(epoch, extra=(log_loss / log_tokens.clamp(min=1)).float())
                    log_loss.zero_()
                    log_tokens.zero_()
                    gn = float(last_grad_norm) if last_grad_norm is not None else float("nan")
                    now = time.perf_counter()
                    tps = tokens_since_log * world_size / max(now - t_log, 1e-9)
                    tokens_since_log, t_log = 0, now
                    metrics = {"loss": interval_loss, "lr": lr, "grad_norm": gn,
                               "tokens_per_second": tps, "epoch": epoch, **memory_stats(device)}
                    if metric_logger is not None:
                        metric_logger.log_dict(metrics, step=global_step)
                    postfix["train"] = f"loss={metrics['loss']:.4f} lr={lr:.2e} tok/s={tps:,.0f}"
                    pbar.set_postfix_str(" ".join(v for v in postfix.values() if v), refresh=False)

                if (val_loader is not None and settings.eval_every_n_steps is not None
                        and global_step % settings.eval_every_n_steps == 0):
                    t0 = time.perf_counter()
                    run_eval(epoch)
                    last_eval_step = global_step
                    t_log += time.perf_counter() - t0  # keep tokens/s about training only

                t0 = time.perf_counter()
                if end_of_epoch:
                    save(epoch, epoch + 1, 0, None, final=epoch == settings.epochs - 1)
                elif settings.save_every_n_steps and global_step % settings.save_every_n_steps == 0:
                    save(epoch, epoch, step_in_epoch, global_step, final=False)
                t_log += time.perf_counter() - t0

                if on_step_end is not None:
                    on_step_end(global_step)

                # Every rank stops at the same step if any rank got the signal (under
                # several ranks: one small CPU all-reduce per step).
                if any_rank_true(shutdown.requested):
                    if saved_step != global_step:
                        save(epoch, epoch, step_in_epoch, global_step, final=False)
                    flush(epoch)
                    result.interrupted = True
                    break
            if result.interrupted:
                break
            epoch, step_in_epoch = epoch + 1, 0

    flush(epoch)
    if not result.interrupted and val_loader is not None and last_eval_step != global_step:
        run_eval(max(epoch - 1, 0))
    pbar.close()
    if result.step_losses:
        result.final_train_loss = result.step_losses[-1]
    return result
