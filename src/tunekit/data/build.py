"""The ``dataset`` config components: one data set of any format (in memory or streaming), and a
weighted mix of several.
"""

from __future__ import annotations

import difflib
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunekit.data._loading import DataSettingError
from tunekit.data.datasets import FormatDataset
from tunekit.data.streaming import StreamingDataset

__all__ = ["MixedDataset", "load_dataset", "mixed_dataset"]

#: What one entry of ``dataset.sources`` may set (``dataset=mix``).
_MIX_KEYS = ("source", "format", "template", "column_map", "weight", "max_seq_len", "train_on_input",
             "val_fraction", "split_seed", "data_files", "subset", "source_split", "revision", "cache")

_STREAM_ONLY = ("shuffle_buffer", "seed", "rank", "world_size", "pack", "pad_id")


def load_dataset(tokenizer: Any, source: str | Path, *, format: str = "instruct", streaming: bool = False,
                 cache: bool | str = "auto", **kwargs: Any) -> FormatDataset | StreamingDataset:
    """One data set: ``format`` = ``instruct`` | ``chat`` | ``text`` from ``source`` (any file,
    directory, glob, bundled name or cached Hub id), in memory (tokenized once, cached) or, with
    ``streaming=True``, read and tokenized on the fly (:class:`StreamingDataset`).

    The recipe passes the tokenizer and ``split=``; for a streaming set also ``pack=``,
    ``rank=`` and ``world_size=`` (``tunekit.run.data.build_datasets``). Other keyword
    arguments are those of :class:`tunekit.data.FormatDataset` / :class:`StreamingDataset`.
    """
    if not isinstance(streaming, bool):
        raise DataSettingError(f"dataset.streaming={streaming!r} must be true or false.")
    if streaming:
        return StreamingDataset(tokenizer, source, format=format, **kwargs)
    for key in _STREAM_ONLY:
        kwargs.pop(key, None)
    return FormatDataset(tokenizer, source, format=format, cache=cache, **kwargs)


class MixedDataset(Dataset):
    """Several data sets in one: source ``i`` contributes ``round(weight_i * len_i)`` samples per
    epoch (weight 2: every sample twice; 0.5: a seeded half), concatenated in source order (the
    loader shuffles).

    Attributes:
        parts: the data sets; ``counts``: samples taken from each; ``names``: their labels.
    """

    def __init__(self, parts: Sequence[Any], weights: Sequence[float], names: Sequence[str], *, seed: int = 0,
                 max_seq_len: int | None = None) -> None:
        self.parts, self.names = list(parts), list(names)
        self.max_seq_len = max_seq_len
        self.index: list[tuple[int, int]] = []
        self.counts: list[int] = []
        rng = random.Random(seed)
        for p, (ds, w) in enumerate(zip(self.parts, weights)):
            n = len(ds)
            whole, frac = divmod(float(w) * n, n) if n else (0, 0.0)
            picks = list(range(n)) * int(whole) + sorted(rng.sample(range(n), round(frac))) if n else []
            self.index += [(p, i) for i in picks]
            self.counts.append(len(picks))

    def describe(self) -> str:
        return "; ".join(f"{name}: {c} samples (of {len(ds)})"
                         for name, c, ds in zip(self.names, self.counts, self.parts))

    def target_masks(self) -> list[bytes]:
        """Untruncated masks of the mix's samples (for ``data_report``)."""
        out: list[bytes] = []
        for p, i in self.index:
            ds = self.parts[p]
            if callable(getattr(ds, "target_masks", None)):
                out.append(_kept_mask(ds, i))
            else:
                out.append(bytes(int(lab != -100) for lab in ds[i]["labels"]))
        return out

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        p, i = self.index[k]
        return self.parts[p][i]


def _kept_mask(ds: Any, i: int) -> bytes:
    """The untruncated mask of kept sample ``i`` of ``ds``."""
    kept = getattr(ds, "_kept_positions", None)
    if kept is None:
        dropped = set(ds.dropped_rows)
        kept = [j for j, r in enumerate(ds.split_rows) if r not in dropped]
        ds._kept_positions = kept
    return ds.target_masks()[kept[i]]


def mixed_dataset(tokenizer: Any, sources: Sequence[Mapping[str, Any]], *, split: str = "train",
                  max_seq_len: int = 512, train_on_input: bool = False, val_fraction: float = 0.1,
                  split_seed: int = 0, seed: int = 0, cache: bool | str = "auto", **ignored: Any) -> MixedDataset:
    """``dataset=mix``: ``sources`` is a list of ``{source, format?, template?, column_map?, weight?,
    ...}`` (each any :func:`load_dataset` source); per-source sample counts are printed at start.
    """
    if ignored.get("streaming"):
        raise DataSettingError("dataset.streaming=true does not apply to dataset=mix (a mix is built in "
                               "memory); stream one source with dataset=alpaca|chat|text dataset.streaming=true.")
    if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
        raise DataSettingError(
            "dataset.sources must be a non-empty list of data sets, e.g. dataset.sources='[{source: a.csv, "
            "format: instruct, weight: 1}, {source: b.jsonl, format: chat, weight: 0.5}]'.")
    parts, weights, names = [], [], []
    for i, entry in enumerate(sources):
        entry = dict(entry) if isinstance(entry, Mapping) else {"source": entry}
        if "source" not in entry:
            raise DataSettingError(f"dataset.sources[{i}] has no 'source' (it has {sorted(entry)}); give each "
                                   f"entry a source: a file, directory, glob or cached Hub id.")
        unknown = sorted(str(k) for k in entry if k not in _MIX_KEYS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], _MIX_KEYS, n=1)
            raise DataSettingError(
                f"dataset.sources[{i}].{unknown[0]} is not a setting of a mixed source"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}; an entry takes "
                f"{', '.join(_MIX_KEYS)}.")
        weight = entry.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise DataSettingError(f"dataset.sources[{i}].weight={weight!r} must be a number >= 0 (1: every "
                                   f"sample once per epoch, 2: twice, 0.5: a seeded half).")
        entry.setdefault("max_seq_len", max_seq_len)
        entry.setdefault("train_on_input", train_on_input)
        entry.setdefault("val_fraction", val_fraction)
        entry.setdefault("split_seed", split_seed)
        entry.setdefault("cache", cache)
        parts.append(load_dataset(tokenizer, entry.pop("source"), split=split, **entry))
        weights.append(weight)
        names.append(str(parts[-1].source))
    mix = MixedDataset(parts, weights, names, seed=seed, max_seq_len=max_seq_len)
    if split == "train":
        print(f"tunekit: data mix: {mix.describe()}", file=sys.stderr, flush=True)
    return mix
