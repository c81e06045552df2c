"""How a run saves: the loop's :class:`~tunekit.training.Saver`, backed by the format checkpointer.

Full checkpoints (every epoch end, and step checkpoints of a single process) gather the model to
rank 0 and go through the checkpointer (HF or Meta format; LoRA: merged weights + adapter); step
checkpoints of a sharded model are written by every rank as DCP shards, without a gather. Each
records the run's fingerprint (``tunekit.run.resume.fingerprint``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping

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
    NF4Linear,
    dequantize,
    gather_nf4_shards,
    get_adapter_state_dict,
    get_merged_state_dict,
    is_adapter_key,
    merged_weight,
    quantized_base_names,
)
from tunekit.training import ResumePoint, StatefulSampler, TrainSettings, steps_per_epoch

__all__ = ["CheckpointSaver", "log_merge_drift", "merge_drift", "model_states"]


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


def _merge_base(adapter_config: Any) -> str:
    return str(_adapter_config_dict(adapter_config).get("merge_base") or "dequantized")


@torch.no_grad()
def _merged_onto_original(model: nn.Module, original: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """QLoRA ``merge_base=original``: the merged state dict with every NF4 base replaced by the
    checkpoint's full-precision weight (adapters merged onto it), in the model's dtype."""
    sd = get_merged_state_dict(model)
    for name in quantized_base_names(model):
        m = model.get_submodule(name)
        w = original[f"{name}.weight"].to(device=sd[f"{name}.weight"].device, dtype=sd[f"{name}.weight"].dtype)
        if isinstance(m, LoRALinear) and not m.disabled:
            w = merged_weight(w, m.lora_a.weight, m.lora_b.weight, scaling=m.scaling,
                              magnitude=m.lora_magnitude if m.use_dora else None)
        sd[f"{name}.weight"] = w
    return sd


def model_states(model: nn.Module, adapter_config: Any,
                 original: Callable[[], Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """``model`` (+ ``adapter``, ``adapter_config`` for LoRA) entries of a checkpoint.

    Under FSDP every rank takes part in the gather; rank 0 gets the full (CPU) tensors, the
    other ranks an empty dict (only rank 0 saves). QLoRA (an NF4 base): the merged weights add
    the adapter to the dequantized base, or with ``merge_base=original`` to the checkpoint's
    full-precision weights, read through ``original`` (the base checkpoint's loader).
    """
    if not is_sharded(model):
        if adapter_config is None:
            return {"model": model.state_dict()}
        if original is not None and _merge_base(adapter_config) == "original" and quantized_base_names(model):
            merged = _merged_onto_original(model, original())
        else:
            merged = get_merged_state_dict(model)
        return {"model": merged, "adapter": get_adapter_state_dict(model),
                "adapter_config": _adapter_config_dict(adapter_config)}
    nf4 = [f"{name}.weight" for name in quantized_base_names(model)]
    full = gather_full_model(model, skip=nf4)
    params = dict(model.named_parameters())
    bases = {k: gather_nf4_shards(params[k]) for k in nf4}  # QLoRA: the dequantized NF4 bases
    if full is None:
        return {}
    full.update(bases)
    if nf4 and original is not None and _merge_base(adapter_config) == "original":
        weights = original()
        full.update({k: weights[k].to(full[k].dtype) for k in nf4})
        del weights
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
        load = getattr(checkpointer, "load_checkpoint", None)
        # QLoRA merge_base=original: the base checkpoint is read again at each save (CPU).
        self.original_weights = None if load is None else (lambda: load()["model"])

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
            **model_states(self.model, self.adapter_config, self.original_weights),
            "optimizer": (gather_full_optimizer_state_dict(self.model, self.optimizer) if sharded
                          else self.optimizer.state_dict()),
            **training_state,
        }
        if is_rank_zero():
            self.checkpointer.save_checkpoint(state, epoch=epoch, intermediate_checkpoint=not final, step=step,
                                              info=self.trained_with)
        barrier()


@contextlib.contextmanager
def _merged_view(model: nn.Module, original: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Within the block each NF4 linear computes with the weight a merged checkpoint would hold
    (``W + s B A`` on the dequantized or, given ``original``, the full-precision base, rounded
    to the model's dtype), built per call so no extra copy of the model is resident."""
    import torch.nn.functional as F

    patched = []
    for name in quantized_base_names(model):
        m = model.get_submodule(name)

        def forward(x: torch.Tensor, m: nn.Module = m, name: str = name) -> torch.Tensor:
            dtype = x.dtype
            base = (dequantize(m.weight, dtype) if original is None
                    else original[f"{name}.weight"].to(device=x.device, dtype=dtype))
            w = base
            if isinstance(m, LoRALinear) and not m.disabled:
                w = merged_weight(base, m.lora_a.weight, m.lora_b.weight, scaling=m.scaling,
                                  magnitude=m.lora_magnitude if m.use_dora else None)
            return F.linear(x, w, m.bias)

        assert isinstance(m, (LoRALinear, NF4Linear))
        m.forward = forward  # instance attribute shadows the class's forward
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


@torch.no_grad()
def merge_drift(model: nn.Module, *, loss_fn: Any, val_loader: Any, device: torch.device, adapter_config: Any,
                trained_val_loss: float | None, original: Callable[[], Mapping[str, torch.Tensor]] | None,
                max_batches: int | None = None) -> dict[str, float]:
    """QLoRA: validation loss of the saved merged weights next to the training-time model's.

    Returns ``{"val_loss_trained", "val_loss_merged_dequantized", "merge_drift"}`` (+
    ``"val_loss_merged_original"`` when ``original``, the base checkpoint's loader, is given;
    drift = the loss of the ``merge_base`` the run saved minus the trained model's); ``{}`` for a
    model without an NF4 base or without validation data. The merged weights are built one
    linear at a time inside each forward, so no second copy of the model is held.
    """
    from tunekit.training import evaluate

    if val_loader is None or not quantized_base_names(model):
        return {}
    trained = trained_val_loss
    if trained is None:
        trained = evaluate(model, loss_fn, val_loader, device=device, max_batches=max_batches)
    out = {"val_loss_trained": float(trained)}
    with _merged_view(model, None):
        out["val_loss_merged_dequantized"] = evaluate(model, loss_fn, val_loader, device=device,
                                                      max_batches=max_batches)
    if original is not None:
        weights = original()
        with _merged_view(model, weights):
            out["val_loss_merged_original"] = evaluate(model, loss_fn, val_loader, device=device,
                                                       max_batches=max_batches)
        del weights
    saved = out.get(f"val_loss_merged_{_merge_base(adapter_config)}", out["val_loss_merged_dequantized"])
    out["merge_drift"] = saved - out["val_loss_trained"]
    return out


def log_merge_drift(model: nn.Module, *, lora: Any, result: Any, saver: CheckpointSaver, loss_fn: Any,
                    val_loader: Any, device: torch.device, metric_logger: Any, rank: int) -> None:
    """After an uninterrupted QLoRA run: :func:`merge_drift` logged with the last step's metrics
    (what merging cost, in the run's own validation loss); nothing for other runs."""
    if not getattr(lora, "quantize_base", None) or result.interrupted:
        return
    drift = merge_drift(model, loss_fn=loss_fn, val_loader=val_loader, device=device, adapter_config=lora,
                        trained_val_loss=result.final_val_loss,
                        original=saver.original_weights if lora.merge_base == "original" else None,
                        max_batches=saver.settings.max_eval_batches)
    if drift and rank == 0:
        metric_logger.log_dict(drift, step=result.global_step)
