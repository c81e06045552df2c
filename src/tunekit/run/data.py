"""The data a recipe trains on: the splits (packed if asked) and loaders that resume exactly."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable

from tunekit.data import DataFormatError, DataSettingError, PackedDataset, data_report, packed_collate, padded_collate
from tunekit.training.data_loading import build_dataloader

__all__ = ["build_datasets", "build_loaders", "check_learnable"]


def check_learnable(dataset: Any, *, announce: bool = True) -> None:
    """Count, before training, what truncation left to learn; refuse nothing, warn about a lot cut.

    Raises:
        DataFormatError: no target token is left (every response truncated away): the paragraph
            gives the counts and the ``max_seq_len`` that keeps 95% of samples whole.
    """
    report = data_report(dataset)
    problems = report.problems()
    if problems:
        raise DataFormatError(" ".join(problems))
    if announce:
        for warning in report.warnings():
            print(f"tunekit: warning: {warning}", file=sys.stderr, flush=True)


def build_datasets(make_dataset: Callable[..., Any], tokenizer: Any, *, validation: bool,
                   packed: bool, max_seq_len: int) -> tuple[Any, Any]:
    """The training split (packed if asked) and the validation split (never packed) or None.

    Each split is checked with :func:`check_learnable` before anything trains.
    """
    train_ds = make_dataset(tokenizer, split="train")
    if len(train_ds) and "chosen_tokens" in train_ds[0]:  # preference pairs: another objective
        raise DataSettingError(
            f"The dataset is preference data (prompt, chosen, rejected: {type(train_ds).__name__}), which "
            f"trains with DPO, not with supervised fine-tuning: run `python -m recipes.lora_dpo` (or "
            f"full_dpo) with this dataset, or pick an instruction/chat dataset (e.g. dataset=alpaca_tiny).")
    if packed:
        train_ds = PackedDataset(train_ds, max_seq_len, pad_id=tokenizer.pad_id)
    check_learnable(train_ds)
    val_ds = make_dataset(tokenizer, split="validation") if validation else None
    if val_ds is not None:
        check_learnable(val_ds)
    return train_ds, val_ds


def build_loaders(train_ds: Any, val_ds: Any, *, batch_size: int, packed: bool, pad_id: int,
                  seed: int, rank: int = 0, world_size: int = 1,
                  pin_memory: bool = False) -> tuple[Any, Any]:
    """Loaders the loop resumes exactly (``StatefulSampler``); validation in file order.

    ``pin_memory``: page-locked batches (CUDA runs: :func:`pin_memory_for`), so the loop's
    ``non_blocking`` host-to-device copies overlap with compute.
    """
    padded = partial(padded_collate, pad_id=pad_id)
    train_loader = build_dataloader(train_ds, batch_size, packed_collate if packed else padded,
                                    shuffle=True, seed=seed, rank=rank, world_size=world_size,
                                    pin_memory=pin_memory)
    val_loader = None
    if val_ds is not None:
        val_loader = build_dataloader(val_ds, batch_size, padded, shuffle=False, seed=seed,
                                      rank=rank, world_size=world_size, pin_memory=pin_memory)
    return train_loader, val_loader


