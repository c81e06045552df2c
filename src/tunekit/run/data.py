"""The data a recipe trains on: the splits (packed if asked) and loaders that resume exactly."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from tunekit.data import (
    DataFormatError,
    DataSettingError,
    PackedDataset,
    StreamingDataset,
    data_report,
    packed_collate,
    padded_collate,
)
from tunekit.distributed import get_rank, get_world_size
from tunekit.training.data_loading import StatefulSampler, build_dataloader

__all__ = ["StreamSampler", "build_datasets", "build_loaders", "check_learnable", "is_streaming"]


class StreamSampler(StatefulSampler):
    """The resumable sampler over a :class:`~tunekit.data.StreamingDataset`: index
    ``epoch * n + i`` is sample ``i`` of ``epoch`` of this rank (the data set shards itself, so
    ``num_samples`` is the per-rank count). Saved and restored like any ``StatefulSampler``: the
    position is the number of samples consumed in the epoch; a changed stream (other count) or
    number of ranks is refused on resume.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__(num_samples, shuffle=False, seed=seed, rank=rank, world_size=world_size)

    def _per_rank(self) -> int:
        return self.num_samples

    def epoch_indices(self) -> list[int]:
        return list(range(self.epoch * self.num_samples, (self.epoch + 1) * self.num_samples))

    def __iter__(self):  # type: ignore[override]
        start, self.start_index = self.start_index, 0
        return iter(range(self.epoch * self.num_samples + start, (self.epoch + 1) * self.num_samples))


def is_streaming(make_dataset: Any) -> bool:
    """Whether the configured data set streams (``dataset.streaming=true``)."""
    return getattr(make_dataset, "keywords", {}).get("streaming") is True


def _stream_loader(ds: Any, batch_size: int, collate: Any, *, seed: int, pin_memory: bool) -> DataLoader:
    sampler = StreamSampler(len(ds), seed=seed, rank=ds.rank, world_size=ds.world_size)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=0,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))


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
    if is_streaming(make_dataset):  # packed on the fly, sharded by rank, counted in one pass
        shard = {"rank": get_rank(), "world_size": get_world_size(), "pad_id": tokenizer.pad_id}
        train_ds = make_dataset(tokenizer, split="train", pack=max_seq_len if packed else None, **shard)
        check_learnable(train_ds)
        val_ds = make_dataset(tokenizer, split="validation", **shard) if validation else None
        if val_ds is not None:
            check_learnable(val_ds)
        return train_ds, val_ds
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
    if isinstance(train_ds, StreamingDataset):
        train_loader = _stream_loader(train_ds, batch_size, packed_collate if packed else padded, seed=seed,
                                      pin_memory=pin_memory)
        val_loader = (_stream_loader(val_ds, batch_size, padded, seed=seed, pin_memory=pin_memory)
                      if val_ds is not None else None)
        return train_loader, val_loader
    train_loader = build_dataloader(train_ds, batch_size, packed_collate if packed else padded,
                                    shuffle=True, seed=seed, rank=rank, world_size=world_size,
                                    pin_memory=pin_memory)
    val_loader = None
    if val_ds is not None:
        val_loader = build_dataloader(val_ds, batch_size, padded, shuffle=False, seed=seed,
                                      rank=rank, world_size=world_size, pin_memory=pin_memory)
    return train_loader, val_loader


