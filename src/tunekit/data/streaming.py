"""Streaming: read, tokenize and pack on the fly, never holding the data set in memory.

:class:`StreamingDataset` makes one counting pass at construction (it validates every row, counts
the samples of this rank, accumulates the data report and the content digest, keeping only one
int per sample), then serves samples in stream order. It is map-style over a forward cursor:
``ds[epoch * len(ds) + i]`` is sample ``i`` of ``epoch``, so the loop's resumable sampler (and so
exact mid-epoch resume) works unchanged; a jump backwards or forwards re-reads the stream up to
that point (resume fast-forwards through the tokenizer, it does not train on those samples).

Rows go to validation by a seeded hash of their index (``val_fraction``); with several ranks,
every rank reads the whole stream and keeps samples ``rank, rank + world_size, ...`` (the same
count on every rank: the tail that does not divide evenly is dropped).
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.data._loading import DataFormatError, DataSettingError, format_problems, normalize_split
from tunekit.data._tokenized import build_sample
from tunekit.data.datasets import check_max_seq_len, text_chunks
from tunekit.data.formats import encode_or_raise, make_format
from tunekit.data.packing import pack_stream
from tunekit.data.report import ReportCounter
from tunekit.data.sources import load_rows

__all__ = ["StreamingDataset", "in_validation"]


def in_validation(index: int, val_fraction: float, seed: int) -> bool:
    """Whether 0-based row ``index`` is held out for validation (a seeded hash, no state)."""
    return val_fraction > 0 and zlib.crc32(f"{seed}:{index}".encode()) / 2**32 < val_fraction


class StreamingDataset:
    """A data set read, tokenized (and packed) as it is iterated; see the module docstring.

    Args: as :class:`tunekit.data.FormatDataset` (``format``, ``template``, ``max_seq_len``,
    ``train_on_input``, ``split``, ``val_fraction``, ``split_seed``, ``column_map``,
    ``data_files``, ``subset``, ``source_split``, ``revision``), plus:
        shuffle_buffer: samples held in a buffer and drawn at random (seeded by ``seed`` and the
            epoch); 0 keeps stream order.
        seed: the shuffle seed.
        rank / world_size: this process's share of the stream.
        pack: pack samples into ``pack`` tokens (``None``: no packing); ``pad_id``: the padding.
    """

    def __init__(self, tokenizer: Any, source: str | Path, *, format: str = "instruct", template: str | None = None,
                 max_seq_len: int = 512, train_on_input: bool = False, split: str = "train",
                 val_fraction: float = 0.0, split_seed: int = 0, column_map: Mapping[str, str] | None = None,
                 data_files: str | Sequence[str] | None = None, subset: str | None = None,
                 source_split: str = "train", revision: str | None = None, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, pack: int | None = None,
                 pad_id: int | None = None) -> None:
        check_max_seq_len(max_seq_len)
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise DataSettingError(f"dataset.shuffle_buffer={shuffle_buffer!r} must be an integer >= 0 "
                                   f"(0 keeps the stream's order; e.g. 1000).")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self.split = normalize_split(split)
        self.val_fraction, self.split_seed = float(val_fraction), split_seed
        self.format = make_format(format, tokenizer, template=template, train_on_input=self.train_on_input)
        self.template = self.format.template
        self.rowsource = load_rows(source, data_files=data_files, subset=subset, source_split=source_split,
                                   revision=revision, column_map=column_map, text_files=self.format.name == "text",
                                   streaming=True)
        src = self.rowsource
        self.source: Any = src.files[0] if len(src.files) == 1 else src.label
        self.row_word = src.row_word
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.pack_len = pack
        self.pad_id = int(pad_id if pad_id is not None else getattr(tokenizer, "pad_id", 0) or 0)
        self._it: Iterator[dict[str, list[int]]] | None = None
        self._epoch, self._pos = -1, 0
        self._count()

    # ------------------------------------------------------------------ the stream

    def _split_rows(self, problems: list[tuple[int, str]] | None = None) -> Iterator[tuple[int, Any]]:
        """The split's ``(row, record)``; bad rows are collected in ``problems`` (or raise)."""
        want_val = self.split == "validation"
        check = self.format.check
        for i, (row, rec) in enumerate(self.rowsource):
            if self.split != "all" and in_validation(i, self.val_fraction, self.split_seed) != want_val:
                continue
            msg = check(rec)
            if msg:
                if problems is None:
                    raise DataFormatError(f"{self.rowsource.where(row)}: {self.rowsource.explain(msg)}. "
                                          f"{self.format.hint}")
                problems.append((row, msg))
                continue
            yield row, rec

    def _encoded(self, problems: list[tuple[int, str]] | None = None) -> Iterator[tuple[int, list[int], list[bool]]]:
        fmt, src = self.format, self.rowsource
        if fmt.name == "text":
            docs = ((row, fmt.encode(rec)[0]) for row, rec in self._split_rows(problems))
            for row, ids in text_chunks(docs, self.max_seq_len):
                yield row, ids, [True] * len(ids)
            return
        for row, rec in self._split_rows(problems):
            tokens, targets = encode_or_raise(fmt, rec, src.where(row))
            yield row, tokens, targets

    def _all_samples(self, counter: ReportCounter | None = None,
                     problems: list[tuple[int, str]] | None = None) -> Iterator[dict[str, list[int]]]:
        """Every rank's samples in stream order (before shuffling and sharding)."""
        def unpacked() -> Iterator[dict[str, list[int]]]:
            for row, tokens, targets in self._encoded(problems):
                mask = bytes(targets[1:]) + b"\x00"
                if counter is not None:
                    counter.add(row, mask)
                if b"\x01" not in mask[: self.max_seq_len]:
                    continue  # no target left after truncation: dropped (counted above)
                yield build_sample(tokens[: self.max_seq_len + 1], targets[: self.max_seq_len + 1], self.max_seq_len)
        if self.pack_len is None:
            return unpacked()
        return pack_stream(unpacked(), self.pack_len, self.pad_id)

    def _shuffled(self, samples: Iterator[dict[str, list[int]]], epoch: int) -> Iterator[dict[str, list[int]]]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = random.Random(self.seed * 1_000_003 + epoch)
        buf: list[dict[str, list[int]]] = []
        for s in samples:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            j = rng.randrange(len(buf))
            yield buf[j]
            buf[j] = s
        rng.shuffle(buf)
        yield from buf

    def epoch_samples(self, epoch: int) -> Iterator[dict[str, list[int]]]:
        """This rank's ``len(self)`` samples of ``epoch``, in order."""
        n = 0
        for k, s in enumerate(self._shuffled(self._all_samples(), epoch)):
            if k % self.world_size == self.rank:
                if n == self._len:
                    return
                n += 1
                yield s

    # ------------------------------------------------------------------ the counting pass

    def _count(self) -> None:
        min_len = min(x for x in (self.max_seq_len, self.pack_len) if x is not None)
        counter = ReportCounter(min_len)
        problems: list[tuple[int, str]] = []
        total = mine = 0
        # the digest is over what this rank's loader serves in epoch 0, in that order (one pass:
        # the counting pass draws epoch 0's shuffle); ``before`` is the digest without the last
        # sample, for when that one falls in the tail that does not divide over the ranks
        h, before = hashlib.sha256(), None
        for k, s in enumerate(self._shuffled(self._all_samples(counter, problems), 0)):
            if problems:
                continue  # keep counting problems; the samples are moot
            total += 1
            if k % self.world_size == self.rank:
                before = h.copy()
                self._digest(h, s)
                mine += 1
        if problems:
            raise DataFormatError(format_problems(Path(str(self.source)), self.row_word, problems,
                                                  counter.samples + len(problems), rowsource=self.rowsource)
                                  + " " + self.format.hint)
        if counter.samples == 0 and self.split == "validation":
            raise DataSettingError(
                f"dataset.val_fraction={self.val_fraction} holds out no row of {str(self.source)!r} for "
                f"validation (a streaming set holds rows out by a seeded hash of their position, so a small "
                f"file may get none). Raise dataset.val_fraction, or set dataset.val_fraction=0 to train "
                f"without validation.")
        if counter.samples == 0 and not problems:
            raise DataFormatError(
                f"Data file {str(self.source)!r} holds no records for the {self.split} split (it is empty, or "
                f"dataset.val_fraction leaves none). Point dataset.source at a file with records. {self.format.hint}")
        self._len = total // self.world_size
        if mine > self._len and before is not None:
            h = before
        name = repr(str(self.source)) if isinstance(self.source, Path) else str(self.source)
        self.data_report = counter.report(source=name + ("" if self.split == "all" else f" ({self.split} split)"),
                                          row_word=self.row_word)
        self.content_digest = h.hexdigest()

    @staticmethod
    def _digest(h: Any, sample: Mapping[str, Any]) -> None:
        """As ``tunekit.run.resume.data_digest``: int64 tokens, labels, then ``|``."""
        for key in ("tokens", "labels"):
            h.update(np.asarray(sample[key], dtype=np.int64).tobytes())
        h.update(b"|")

    # ------------------------------------------------------------------ map-style access

    def __len__(self) -> int:
        """Samples of this rank per epoch."""
        return self._len

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        """Sample ``index % len(self)`` of epoch ``index // len(self)`` (a forward cursor)."""
        epoch, offset = divmod(int(index), self._len)
        if self._it is None or epoch != self._epoch or offset < self._pos:
            self._it, self._epoch, self._pos = self.epoch_samples(epoch), epoch, 0
        while self._pos < offset:
            next(self._it)
            self._pos += 1
        self._pos += 1
        return next(self._it)
