"""A resumable, rank-aware sampler and the DataLoader the loop expects.

The order of an epoch is a pure function of ``(seed, epoch)``, so no RNG state needs saving:
to resume mid-epoch the loop calls ``sampler.set_epoch(epoch, start_index=n)`` and the next
iteration skips this rank's first ``n`` samples. The position is counted by the loop (batches
it consumed), not by the sampler, because a DataLoader with workers reads the sampler ahead.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tunekit.distributed import get_rank, get_world_size

__all__ = ["StatefulSampler", "build_dataloader"]


class StatefulSampler(Sampler[int]):
    """Seeded (optionally shuffled) sampler with epoch + position state, sharded by rank.

    Like ``DistributedSampler``: each rank takes every ``world_size``-th index of the
    epoch's order; without ``drop_last`` the order is padded by repetition so all ranks
    get the same number of samples.

    Args:
        num_samples: length of the dataset.
        shuffle: permute each epoch (with ``torch.randperm`` seeded by ``seed + epoch``).
        seed: base seed of the permutation.
        rank: this process's rank (default: from ``tunekit.distributed``).
        world_size: number of ranks (default: likewise).
        drop_last: drop the tail that does not divide evenly over ranks.
    """

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.world_size = get_world_size() if world_size is None else world_size
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.drop_last = drop_last
        self.epoch = 0
        self.start_index = 0

    def _per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        """Samples this rank yields in a full epoch (ignores ``start_index``)."""
        return self._per_rank()

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's order; the next iteration starts at this rank's ``start_index``."""
        if start_index < 0 or start_index > self._per_rank():
            raise ValueError(f"start_index {start_index} outside [0, {self._per_rank()}]")
        self.epoch = epoch
        self.start_index = start_index

    def epoch_indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self._per_rank() * self.world_size
        if total > len(order):  # pad by repetition so ranks stay in step
            order = (order * (-(-total // max(1, len(order)))))[:total]
        order = order[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()[self.start_index :]
        # A later plain iteration (a new epoch without set_epoch) starts from the top.
        self.start_index = 0
        return iter(indices)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, position and the settings that must match on resume."""
        return {
            "epoch": self.epoch,
            "start_index": self.start_index,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a changed data set size or world size."""
        problems = [
            f"{k}: checkpoint has {state[k]!r}, this run has {getattr(self, k)!r}"
            for k in ("num_samples", "world_size", "shuffle")
            if k in state and state[k] != getattr(self, k)
        ]
        if problems:
            raise ValueError(
                "cannot resume the data order exactly: " + "; ".join(problems)
                + ". Resume with the same data set and number of ranks, or start a new run."
            )
        self.seed = state.get("seed", self.seed)
        self.set_epoch(state["epoch"], state.get("start_index", 0))


def build_dataloader(dataset: Dataset, batch_size: int, collate_fn: Callable[[list], Any] | None = None,
                     *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                     rank: int | None = None, world_size: int | None = None,
                     num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with a :class:`StatefulSampler` (``loader.sampler``).

    ``drop_last`` drops the last incomplete batch (and the uneven tail across ranks). The
    loader gets its own seeded ``generator`` so iterating it never touches the global torch
    RNG (which resume restores for dropout).
    """
    if not isinstance(dataset, Sized):
        raise TypeError("build_dataloader needs a map-style dataset with __len__")
    sampler = StatefulSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank,
                              world_size=world_size, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
