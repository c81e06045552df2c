"""What the preference-tuning (DPO) recipes compose beyond the SFT ones: the pair data and its
loaders, the DPO objective, the frozen reference model (full DPO) and precomputed reference
log-probabilities."""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from typing import Any, Callable, Mapping

import torch
from torch import nn

from tunekit.data import DataSettingError
from tunekit.data.preference import PreferenceDataset, preference_collate
from tunekit.run.model import build_training_model
from tunekit.training import build_dataloader, prepare_model
from tunekit.training.device import get_device
from tunekit.training.preference_losses import DPOLoss, precompute_reference_logps

__all__ = ["build_preference_datasets", "build_preference_loaders", "build_reference_model",
           "dpo_objective", "precompute_reference"]


def build_preference_datasets(make_dataset: Callable[..., Any], tokenizer: Any, *, validation: bool,
                              dataset_option: str | None = None) -> tuple[PreferenceDataset, PreferenceDataset | None]:
    """The training split and the validation split (or None) of the preference data.

    Raises:
        DataSettingError: the ``dataset`` option is not preference data (e.g. ``alpaca_tiny``).
    """
    train_ds = make_dataset(tokenizer, split="train")
    if not isinstance(train_ds, PreferenceDataset):
        name = f"dataset={dataset_option}" if dataset_option else f"the dataset ({type(train_ds).__name__})"
        raise DataSettingError(
            f"{name} is not preference data: the DPO recipes train on pairs of a chosen and a rejected "
            f"reply (tunekit.data.preference.PreferenceDataset). Use dataset=preference "
            f"dataset.source=<your .jsonl of prompt/chosen/rejected> (or dataset=preference_tiny), or train "
            f"this data with lora_finetune / full_finetune.")
    val_ds = make_dataset(tokenizer, split="validation") if validation else None
    for ds in (train_ds, val_ds):
        if ds is not None and (ds.dropped_rows or ds.truncated):
            print(f"tunekit: warning: {ds.split} split of {str(ds.source)!r}: {len(ds.dropped_rows)} pair(s) "
                  f"dropped (a reply cut away entirely by max_seq_len={ds.max_seq_len}), {ds.truncated} pair(s) "
                  f"truncated; raise max_seq_len to keep them whole.", file=sys.stderr, flush=True)
    return train_ds, val_ds


def build_preference_loaders(train_ds: Any, val_ds: Any, *, batch_size: int, pad_id: int, seed: int,
                             rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> tuple[Any, Any]:
    """Loaders of padded pairs that resume exactly (``StatefulSampler``); validation in file order."""
    collate = partial(preference_collate, pad_id=pad_id)
    train_loader = build_dataloader(train_ds, batch_size, collate, shuffle=True, seed=seed, rank=rank,
                                    world_size=world_size, pin_memory=pin_memory)
    val_loader = None if val_ds is None else build_dataloader(
        val_ds, batch_size, collate, shuffle=False, seed=seed, rank=rank, world_size=world_size,
        pin_memory=pin_memory)
    return train_loader, val_loader


def dpo_objective(dpo: Mapping[str, Any], reference: nn.Module | None = None) -> DPOLoss:
    """The DPO objective from the ``dpo.*`` settings (``reference``: full DPO's frozen model)."""
    return DPOLoss(beta=float(dpo["beta"]), loss_type=str(dpo["loss_type"]),
                   label_smoothing=float(dpo["label_smoothing"]), reference=reference)


def build_reference_model(make_model: Callable[..., nn.Module], load_weights: Callable[[], Any], *,
                          settings: Any, source: str, world_size: int = 1, rank: int = 0,
                          declared: Mapping[str, Any] | None = None) -> nn.Module:
    """Full DPO's reference: the starting weights, frozen, placed (sharded) like the policy.

    Built without activation checkpointing or compile (it never runs backward); in eval mode.
    """
    ref_settings = dataclasses.replace(settings, activation_checkpointing=False, compile=False)
    ref = build_training_model(make_model, load_weights, settings=ref_settings, source=source,
                               world_size=world_size, rank=rank, declared=declared)
    prepare_model(ref, ref_settings)
    ref.requires_grad_(False)
    return ref.eval()


def precompute_reference(model: nn.Module, datasets: list[Any], *, batch_size: int, pad_id: int,
                         device_setting: str, adapters_disabled: bool) -> None:
    """Compute every pair's reference log-probs once and attach them to ``datasets`` (in place).

    Every rank computes every pair in file order (sharded models need every rank in each forward).
    """
    device = get_device(device_setting)
    collate = partial(preference_collate, pad_id=pad_id)
    for ds in datasets:
        if ds is None:
            continue
        batches = (collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
                   for i in range(0, len(ds), batch_size))
        with torch.no_grad():
            ds.set_reference_logps(precompute_reference_logps(model, batches, device=device,
                                                              adapters_disabled=adapters_disabled))
