"""The one training loop for LoRA and full fine-tuning, sharded or not.

It reads top to bottom like a short training script. What comes before it is done by others:
the model is built and prepared (``tunekit.training.prepare``: placement, cast, activation
checkpointing, compile, sharding), a resumed run's weights, optimizer, schedule and data position
are restored (``tunekit.run.resume``) and arrive as a :class:`~tunekit.training.state.ResumePoint`;
checkpoints are written by a :class:`~tunekit.training.state.Saver`. With the same inputs a
resumed run gives the same per-step losses as an uninterrupted one (exact on the CPU).

Host syncs: per-step losses stay on the device and are read back only at log intervals, before
evaluation/checkpointing and at the end (one ``.tolist()`` each time).

The logged ``loss`` is the token-weighted mean over the steps since the previous log record
(sum of token losses / tokens, accumulated on the device), so ``log_every_n_steps=20`` gives a
smooth curve; ``TrainResult.step_losses`` stays per step. The interval's running sums travel in
every checkpoint's resume point, so a resumed run logs exactly the values of an uninterrupted one.

Objectives: ``loss_fn(model, batch)`` returns ``(loss_sum, count)`` (cross-entropy: token sums)
or ``(loss_sum, count, metrics)`` where ``metrics`` maps names to 0-dim *sums* over the same
units as ``count`` (e.g. DPO's pairs: ``tunekit.training.preference_losses``). The loop adds them
over micro-batches, ranks and the log interval, and logs each as its sum / the interval's count
next to ``loss``; they travel in the resume point like the loss. A two-element loss runs exactly
as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from tqdm import tqdm

from tunekit.distributed import (
    all_reduce_sum,
    any_rank_true,
    full_value,
    get_world_size,
    is_rank_zero,
    is_sharded,
    local_grads,
    set_gradient_sync,
)
from tunekit.training.data_loading import StatefulSampler
from tunekit.training.device import get_device
from tunekit.training.memory import memory_stats, reset_peak_memory_stats
from tunekit.training.precision import get_dtype
from tunekit.training.seed import get_rng_state, set_rng_state, set_seed
from tunekit.training.settings import TrainSettings, steps_per_epoch
from tunekit.training.signals import graceful_shutdown
from tunekit.training.state import ResumePoint, Saver
from tunekit.training.throughput import ThroughputMeter

__all__ = ["NonFiniteLossError", "TrainResult", "evaluate", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written after the last finite step."""


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
            loss_sum, n = loss_fn(model, _to_device(batch, device))[:2]
            total += torch.stack([loss_sum.double(), n.double()])
    finally:
        model.train(was_training)
    loss_sum, n = all_reduce_sum(total).tolist()
    return loss_sum / n if n > 0 else float("nan")



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




class _Losses:
    """Per-step losses kept on the device, read back in one host sync when asked.

    Also holds the current log interval's running sums (token-loss sum and token count, all
    ranks) and where the last checkpoint was, for the non-finite-loss message.
    """

    def __init__(self, result: TrainResult, device: torch.device, start: ResumePoint | None) -> None:
        self.result = result
        self.pending: list[torch.Tensor] = []
        self.last_ckpt: tuple[int, int | None] | None = None
        self.log_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.log_tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.device = device
        self.log_metrics: dict[str, torch.Tensor] = {}  # an objective's metric sums (float64)
        if start is not None:
            self.log_loss.fill_(float(start.log_loss_sum))
            self.log_tokens.fill_(int(start.log_tokens))
            for name, value in (start.log_metric_sums or {}).items():
                self.log_metrics[name] = torch.full((), float(value), dtype=torch.float64, device=device)

    def add(self, loss_sum: torch.Tensor, num_tokens: torch.Tensor,
            metrics: Mapping[str, torch.Tensor] | None = None) -> None:
        self.log_loss += loss_sum  # no host sync
        self.log_tokens += num_tokens
        self.pending.append(loss_sum / num_tokens.clamp(min=1).float())
        for name, value in (metrics or {}).items():
            if name not in self.log_metrics:
                self.log_metrics[name] = torch.zeros((), dtype=torch.float64, device=self.device)
            self.log_metrics[name] += value

    def flush(self, global_step: int, epoch: int, extra: torch.Tensor | None = None) -> list[float] | None:
        """Read pending losses (and ``extra``, 1-dim) back in one sync; stop on a non-finite one."""
        if not self.pending and extra is None:
            return None
        read = [torch.stack(self.pending).double()] if self.pending else []
        if extra is not None:
            read.append(extra.double().reshape(-1))
        values = torch.cat(read).tolist()
        extra_value = None
        if extra is not None:
            cut = len(values) - extra.numel()
            values, extra_value = values[:cut], values[cut:]
        first = global_step - len(values) + 1
        self.pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise NonFiniteLossError(_non_finite_message(first + i, epoch, v, self.last_ckpt))
        self.result.step_losses.extend(values)
        return extra_value

    def interval_mean(self, global_step: int, epoch: int) -> tuple[float, dict[str, float]]:
        """The log interval's token-weighted mean loss (fp32, like the step losses) and the
        interval means of an objective's metrics; resets them."""
        count = self.log_tokens.clamp(min=1)
        names = list(self.log_metrics)
        extra = (self.log_loss / count).float().reshape(1)
        if names:
            extra = torch.cat([extra.double(), torch.stack([self.log_metrics[n] for n in names]) / count])
        values = self.flush(global_step, epoch, extra=extra)
        self.log_loss.zero_()
        self.log_tokens.zero_()
        for value in self.log_metrics.values():
            value.zero_()
        return values[0], dict(zip(names, values[1:]))

    def point(self, epoch: int, step_in_epoch: int, global_step: int) -> ResumePoint:
        names = list(self.log_metrics)
        loss_sum, tokens, *sums = torch.stack(
            [self.log_loss, self.log_tokens.double(), *(self.log_metrics[n] for n in names)]).tolist()
        return ResumePoint(epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
                           rng=get_rng_state(), log_loss_sum=loss_sum, log_tokens=int(tokens),
                           log_metric_sums=dict(zip(names, sums)))


def _optimizer_step(model: nn.Module, params: list[torch.Tensor], batches: Iterator[Any], *,
                    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], optimizer: Any,
                    lr_scheduler: Any, settings: TrainSettings,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float,
                                                   tuple[int, int], dict[str, torch.Tensor]]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

    Returns ``(loss_sum, num_tokens, grad_norm, lr, (input_tokens, input_tokens x row length),
    metrics)``; the loss, tokens and an objective's metric sums (float64; empty for a
    two-element loss) are summed over micro-batches and ranks, still on the device.
    """
    ga, world_size = settings.gradient_accumulation_steps, get_world_size()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    num_tokens = torch.zeros((), dtype=torch.int64, device=device)
    seen = seen_x_len = 0
    metrics: dict[str, torch.Tensor] = {}
    for micro in range(ga):
        if ga > 1 and is_sharded(model):  # reduce-scatter gradients on the last micro-batch only
            set_gradient_sync(model, micro == ga - 1)
        batch = _to_device(next(batches), device)
        seen += batch["tokens"].numel()
        seen_x_len += batch["tokens"].numel() * batch["tokens"].shape[-1]  # attention's FLOPs (MFU)
        mb_loss, mb_tokens, *mb_metrics = loss_fn(model, batch)
        mb_loss.backward()  # grads hold the token *sum*; normalised below
        loss_sum += mb_loss.detach().float()
        num_tokens += mb_tokens
        for name, value in (mb_metrics[0] if mb_metrics else {}).items():
            metrics[name] = metrics.get(name, 0) + value.detach().double()
    all_reduce_sum(loss_sum)
    all_reduce_sum(num_tokens)
    if metrics:  # one collective for all of them
        summed = all_reduce_sum(torch.stack(list(metrics.values())))
        metrics = dict(zip(metrics, summed.unbind()))
    # Data-parallel wrappers average grads over ranks; undo that and divide by the global token
    # count instead (fp32 0-dim scale: no bf16 rounding). DTensor grads: scale the local shards.
    grads = local_grads(params)
    if grads:
        torch._foreach_mul_(grads, world_size / num_tokens.clamp(min=1).float())
    del grads  # a list kept past zero_grad would keep every gradient alive through the next step
    grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.clip_grad_norm or float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, num_tokens, full_value(grad_norm), lr, (seen, seen_x_len), metrics


def train(
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    train_loader: Any,
    settings: TrainSettings,
    val_loader: Any = None,
    saver: Saver | None = None,
    metric_logger: Any = None,
    start: ResumePoint | None = None,
    progress: bool = True,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train a prepared ``model`` from ``start`` (None: a fresh run) and return its losses.

    Args:
        model: prepared by ``tunekit.training.prepare`` (placed or sharded); for LoRA only the
            adapter trainable.
        optimizer, lr_scheduler: built on the trainable parameters; restored when resuming.
        loss_fn: ``loss_fn(model, batch) -> (loss_sum, num_tokens)`` (see ``losses``), or an
            objective's ``(loss_sum, count, metric_sums)`` (see the module docstring).
        train_loader: yields batch dicts; ``build_dataloader`` gives exact mid-epoch resume.
        settings: :class:`~tunekit.training.settings.TrainSettings`.
        val_loader: held-out batches for the validation loss (optional).
        saver: writes checkpoints (epoch ends, every ``save_every_n_steps``, on SIGTERM).
        metric_logger: ``log_dict(metrics, step)`` (optional).
        start: where a resumed run continues (``tunekit.run.resume.restore``).
        progress: show a tqdm bar (rank 0 only).
        on_step_end: called with the global step after each optimizer step (tests, hooks).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (nothing saved from that step on).
        ValueError: invalid settings (every problem listed).
    """
    spe = steps_per_epoch(len(train_loader), settings)
    problems = settings.problems()
    if spe < 1:
        problems.append(f"the training data gives {len(train_loader)} batches per epoch, fewer than "
                        f"gradient_accumulation_steps={settings.gradient_accumulation_steps}: no step can run")
    if problems:
        raise ValueError("invalid training settings:\n  - " + "\n  - ".join(problems))
    device = get_device(settings.device)
    epoch, step_in_epoch, global_step = (0, 0, 0) if start is None else (
        start.epoch, start.step_in_epoch, start.global_step)
    if step_in_epoch >= spe:  # e.g. max_steps_per_epoch lowered since the save
        epoch, step_in_epoch = epoch + 1, 0
    if start is None:
        set_seed(settings.seed)
    result = TrainResult(final_train_loss=None, final_val_loss=None, start_step=global_step,
                         global_step=global_step)
    losses = _Losses(result, device, start)
    params = [p for p in model.parameters() if p.requires_grad]
    pbar = tqdm(total=settings.epochs * spe, initial=global_step, disable=not (progress and is_rank_zero()),
                desc="train", dynamic_ncols=True, unit="step")
    postfix = {"train": "", "val": ""}
    saved_step, last_eval_step, tokens_since_log, t_log = -1, -1, [0, 0], time.perf_counter()
    meter = ThroughputMeter(model, device, get_dtype(settings.dtype), settings.mfu_peak_tflops)

    def save(current_epoch: int, point: ResumePoint, step: int | None, final: bool) -> None:
        nonlocal saved_step
        losses.flush(global_step, current_epoch)  # never save after a non-finite loss
        if saver is not None:
            saver.save(point, epoch=current_epoch, step=step, final=final)
            losses.last_ckpt = (current_epoch, step)
            saved_step = global_step
            result.checkpoints.append(losses.last_ckpt)

    def run_eval(current_epoch: int) -> None:
        nonlocal last_eval_step
        losses.flush(global_step, current_epoch)
        val = evaluate(model, loss_fn, val_loader, device=device, max_batches=settings.max_eval_batches)
        result.val_losses.append((global_step, val))
        result.final_val_loss, last_eval_step = val, global_step
        if metric_logger is not None:
            metric_logger.log_dict({"val_loss": val}, step=global_step)
        postfix["val"] = f"val={val:.4f}"
        pbar.set_postfix_str(" ".join(v for v in postfix.values() if v), refresh=False)

    # An uninterrupted run created the epoch's data iterator (which may draw from the global
    # RNG) before a mid-epoch save point, after an epoch-end one: restore the RNG there.
    rng_to_restore = None if start is None else start.rng
    if rng_to_restore is not None and step_in_epoch == 0:
        set_rng_state(rng_to_restore)
        rng_to_restore = None
    model.train()
    reset_peak_memory_stats(device)
    try:
        with graceful_shutdown(enabled=settings.handle_signals) as shutdown:
            while epoch < settings.epochs and not result.interrupted:
                batches = _epoch_batches(train_loader, epoch, step_in_epoch * settings.gradient_accumulation_steps,
                                         settings.seed)
                if rng_to_restore is not None:
                    set_rng_state(rng_to_restore)
                    rng_to_restore = None
                while step_in_epoch < spe:
                    loss_sum, num_tokens, grad_norm, lr, seen, step_metrics = _optimizer_step(
                        model, params, batches, loss_fn=loss_fn, optimizer=optimizer,
                        lr_scheduler=lr_scheduler, settings=settings, device=device)
                    losses.add(loss_sum, num_tokens, step_metrics)
                    global_step, step_in_epoch = global_step + 1, step_in_epoch + 1
                    result.global_step = global_step
                    tokens_since_log = [tokens_since_log[0] + seen[0], tokens_since_log[1] + seen[1]]
                    pbar.update(1)
                    end_of_epoch = step_in_epoch == spe

                    if global_step % settings.log_every_n_steps == 0 or (end_of_epoch and epoch == settings.epochs - 1):
                        # syncs: the interval's work is done before the clock is read
                        loss_value, objective_metrics = losses.interval_mean(global_step, epoch)
                        now = time.perf_counter()
                        speed = meter.metrics(*tokens_since_log, now - t_log, get_world_size())
                        tps = speed["tokens_per_second"]
                        metrics = {"loss": loss_value, **objective_metrics, "lr": lr, "grad_norm": float(grad_norm),
                                   **speed, "epoch": epoch, **memory_stats(device)}
                        tokens_since_log, t_log = [0, 0], now
                        if metric_logger is not None:
                            metric_logger.log_dict(metrics, step=global_step)
                        mfu = f" mfu={100 * speed['mfu']:.1f}%" if "mfu" in speed else ""
                        postfix["train"] = f"loss={loss_value:.4f} lr={lr:.2e} tok/s={tps:,.0f}{mfu}"
                        pbar.set_postfix_str(" ".join(v for v in postfix.values() if v), refresh=False)

                    t0 = time.perf_counter()  # evaluation and saving do not count in tokens/s
                    if (val_loader is not None and settings.eval_every_n_steps is not None
                            and global_step % settings.eval_every_n_steps == 0):
                        run_eval(epoch)
                    if end_of_epoch:
                        save(epoch, losses.point(epoch + 1, 0, global_step), None, epoch == settings.epochs - 1)
                    elif settings.save_every_n_steps and global_step % settings.save_every_n_steps == 0:
                        save(epoch, losses.point(epoch, step_in_epoch, global_step), global_step, False)
                    t_log += time.perf_counter() - t0
                    if on_step_end is not None:
                        on_step_end(global_step)

                    # Every rank stops at the same step if any rank got the signal.
                    if any_rank_true(shutdown.requested):
                        if saved_step != global_step:
                            save(epoch, losses.point(epoch, step_in_epoch, global_step), global_step, False)
                        result.interrupted = True
                        break
                if not result.interrupted:
                    epoch, step_in_epoch = epoch + 1, 0
        losses.flush(global_step, epoch)
        if not result.interrupted and val_loader is not None and last_eval_step != global_step:
            run_eval(max(epoch - 1, 0))
    finally:
        pbar.close()
    if result.step_losses:
        result.final_train_loss = result.step_losses[-1]
    return result
