"""How a run saves: the loop's :class:`~tunekit.training.Saver`, backed by the format checkpointer.

Full checkpoints (every epoch end, and step checkpoints of a single process) gather the model to
rank 0 and go through the checkpointer (HF or Meta format; LoRA: merged weights + adapter); step
checkpoints of a sharded model are written by every rank as DCP shards, without a gather. Each
records the run's fingerprint (``tunekit.run.resume.fingerprint``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn

from tunekit.checkpointing import save_sharded_checkpoint
from tunekit.distributed import (
    barrier,
    gather_full_model,
    gather_full_optimizer_state_dict,
    get_world_size,
    is_rank_zero,
    is_sharded,
)
from tunekit.modules.peft import (
    LoRALinear,
    get_adapter_state_dict,
    get_merged_state_dict,
    is_adapter_key,
    merged_weight,
)
from tunekit.training import ResumePoint, StatefulSampler, TrainSettings, steps_per_epoch

__all__ = ["CheckpointSaver", "model_states"]


def _adapter_config_dict(adapter_config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(adapter_config) and not isinstance(adapter_config, type):
        return dataclasses.asdict(adapter_config)
    return dict(adapter_config)


def _merge_full(model: nn.Module, full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain-model weights from a gathered LoRA state dict: each enabled LoRA layer merged."""
    out = {k: v for k, v in full.items() if not is_adapter_key(k)}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear) and not m.disabled:
            out[f"{name}.weight"] = merged_weight(
                full[f"{name}.weight"], full[f"{name}.lora_a.weight"], full[f"{name}.lora_b.weight"],
                scaling=m.scaling, magnitude=full[f"{name}.lora_magnitude"] if m.use_dora else None)
    return out


def model_states(model: nn.Module, adapter_config: Any) -> dict[str, Any]:
    """``model`` (+ ``adapter``, ``adapter_config`` for LoRA) entries of a checkpoint.

    Under FSDP every rank takes part in the gather; rank 0 gets the full (CPU) tensors, the
    other ranks an empty dict (only rank 0 saves).
    """
    if not is_sharded(model):
        if adapter_config is None:
            return {"model": model.state_dict()}
        return {"model": get_merged_state_dict(model), "adapter": get_adapter_state_dict(model),
                "adapter_config": _adapter_config_dict(adapter_config)}
    full = gather_full_model(model)
    if full is None:
        return {}
    if adapter_config is None:
        return {"model": full}
    return {"model": _merge_full(model, full), "adapter": {k: v for k, v in full.items() if is_adapter_key(k)},
            "adapter_config": _adapter_config_dict(adapter_config)}


class CheckpointSaver:
    """Saves a run so it resumes exactly; the loop calls :meth:`save` on every rank.

    Args:
        checkpointer: the format checkpointer (``save_checkpoint``, ``output_dir``, ``keep_last_n``).
        model, optimizer, lr_scheduler, train_loader, settings: the run's.
        adapter_config: the LoRA settings (a LoRA run) or None (full fine-tuning).
        trained_with: the run's fingerprint, recorded in every checkpoint.
    """

    def __init__(self, checkpointer: Any, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any, train_loader: Any, settings: TrainSettings, adapter_config: Any = None,
                 trained_with: Mapping[str, Any] | None = None) -> None:
        self.checkpointer = checkpointer
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.train_loader, self.settings = train_loader, settings
        self.adapter_config = adapter_config
        self.trained_with = None if trained_with is None else dict(trained_with)

    def recipe_state(self, point: ResumePoint) -> dict[str, Any]:
        """Where to resume from, as plain data: the next step, RNG states, data position."""
        loader, ga = self.train_loader, self.settings.gradient_accumulation_steps
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        sampler_state = None
        if isinstance(sampler, StatefulSampler):
            sampler_state = sampler.state_dict()
            sampler_state.update(epoch=point.epoch, start_index=point.step_in_epoch * ga * (batch_size or 0))
        # No generator state: the sampler's order is a function of (seed, epoch), and the
        # loader's own generator (worker seeds) is reseeded per epoch by the loop.
        return {
            "epoch": point.epoch,
            "step_in_epoch": point.step_in_epoch,
            "global_step": point.global_step,
            "steps_per_epoch": steps_per_epoch(len(loader), self.settings),
            "gradient_accumulation_steps": ga,
            "world_size": get_world_size(),
            "batch_size": batch_size,
            "seed": self.settings.seed,
            "rng": point.rng,
            "sampler": sampler_state,
            "log_interval": {"loss_sum": point.log_loss_sum, "tokens": point.log_tokens,
                             **({"metrics": dict(point.log_metric_sums)} if point.log_metric_sums else {})},
            "fingerprint": self.trained_with,
        }

    def save(self, point: ResumePoint, *, epoch: int, step: int | None, final: bool) -> None:
        """Write the checkpoint (every rank calls this; only rank 0 writes a full one)."""
        training_state = {"lr_scheduler": self.lr_scheduler.state_dict(), "recipe_state": self.recipe_state(point)}
        sharded = is_sharded(self.model)
        output_dir = getattr(self.checkpointer, "output_dir", None)
        if sharded and step is not None and output_dir is not None:
            save_sharded_checkpoint(
                output_dir, f"step_{step}", model=self.model, optimizer=self.optimizer, extra=training_state,
                info={"epoch": epoch, "step": step, "intermediate": True, "trained_with": self.trained_with},
                keep_last_n=getattr(self.checkpointer, "keep_last_n", None),
            )
            return
        state = {
            **model_states(self.model, self.adapter_config),
            "optimizer": (gather_full_optimizer_state_dict(self.model, self.optimizer) if sharded
                          else self.optimizer.state_dict()),
            **training_state,
        }
        if is_rank_zero():
            self.checkpointer.save_checkpoint(state, epoch=epoch, intermediate_checkpoint=not final, step=step,
                                              info=self.trained_with)
        barrier()
