"""What truncation leaves to learn: ``data_report(dataset)``, computed before training.

A run whose every response is cut away by ``max_seq_len`` trains on zero target tokens (loss
0, validation loss nan) and looks like it worked. :func:`data_report` counts, in one pass over
the already tokenized samples, what the data set holds and what truncation did to it, so a
recipe can refuse such a run (:meth:`DataReport.problems`) or warn about a data set that loses
much of its targets (:meth:`DataReport.warnings`) before it builds an optimizer.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataReport", "ReportCounter", "TRUNCATION_WARN_SHARE", "data_report"]

CROSS_ENTROPY_IGNORE_IDX = -100
#: Share of truncated samples from which :meth:`DataReport.warnings` speaks up.
TRUNCATION_WARN_SHARE = 0.2


@dataclass(frozen=True)
class DataReport:
    """What a tokenized data set gives training, after truncation to ``max_seq_len``.

    Attributes:
        samples: samples of the split, before any was dropped.
        truncated: samples whose targets were cut by ``max_seq_len`` (partly or wholly; the
            dropped ones included).
        dropped: samples with no target token left; they are not trained on.
        target_tokens: positions that carry a loss (label != -100) in the kept samples.
        total_tokens: input tokens of the kept samples (after truncation, before padding).
        max_seq_len: the length the samples are cut to.
        len_for_95pct: the smallest ``max_seq_len`` that keeps 95% of the samples' targets
            whole (0 for an empty data set).
        source: what the samples come from (file and split), for messages; may be "".
        row_word: how ``dropped_rows`` are numbered (``"record"``, ``"line"`` or ``"sample"``).
        dropped_rows: the source rows (or sample indices) of the dropped samples.
    """

    samples: int
    truncated: int
    dropped: int
    target_tokens: int
    total_tokens: int
    max_seq_len: int
    len_for_95pct: int
    source: str = ""
    row_word: str = "sample"
    dropped_rows: tuple[int, ...] = ()

    def _of(self) -> str:
        return f" of {self.source}" if self.source else ""

    def _rows(self, limit: int = 5) -> str:
        if not self.dropped_rows:
            return ""
        shown = ", ".join(str(r) for r in self.dropped_rows[:limit])
        more = f" and {len(self.dropped_rows) - limit} more" if len(self.dropped_rows) > limit else ""
        plural = "s" if len(self.dropped_rows) > 1 else ""
        return f" ({self.row_word}{plural} {shown}{more})"

    def _suggest(self) -> str:
        if self.len_for_95pct > self.max_seq_len:
            return f"`max_seq_len={self.len_for_95pct}` keeps 95% of the samples whole"
        return f"a max_seq_len above {self.max_seq_len} keeps more of them"

    def problems(self) -> list[str]:
        """Why training on this data set would learn nothing (empty list: it can train).

        One paragraph when no target token is left: the counts, and the ``max_seq_len=`` that
        keeps 95% of the samples whole.
        """
        if self.target_tokens > 0:
            return []
        if self.samples == 0:
            return [f"The data set{self._of()} holds no samples, so there is nothing to train on. "
                    f"Point dataset.source at a file with records (or lower dataset.val_fraction "
                    f"if this is the validation split)."]
        if self.truncated == self.samples:
            cause = (f"all {self.samples} samples{self._of()} lose every target (response) token "
                     f"to truncation at max_seq_len={self.max_seq_len} (the prompts alone are that "
                     f"long), so all {self.dropped} were dropped")
        else:
            cause = (f"the {self.samples} samples{self._of()} hold no target (response) token at "
                     f"max_seq_len={self.max_seq_len} ({self.truncated} truncated, {self.dropped} "
                     f"dropped)")
        return [f"Nothing to learn: {cause}, and training would run on 0 target tokens (loss 0, "
                f"validation loss nan). Raise max_seq_len: {self._suggest()} (the model must "
                f"support that length); or shorten the prompts in the data."]

    def warnings(self) -> list[str]:
        """Loud notes about a data set that trains but loses much to truncation (or drops samples)."""
        out: list[str] = []
        if self.samples and self.target_tokens > 0 and \
                self.truncated / self.samples >= TRUNCATION_WARN_SHARE:
            dropped = (f"; {self.dropped} of them had no target token left and were dropped"
                       f"{self._rows()}" if self.dropped else "")
            out.append(
                f"{self.truncated} of the {self.samples} samples "
                f"({100 * self.truncated / self.samples:.0f}%){self._of()} have their response cut "
                f"by max_seq_len={self.max_seq_len}{dropped}: the model learns truncated answers "
                f"and never sees them end. {self._suggest()[0].upper()}{self._suggest()[1:]}, if "
                f"the model and memory allow.")
        elif self.dropped and self.target_tokens > 0:
            out.append(
                f"{self.dropped} of the {self.samples} samples{self._of()} had no target token "
                f"left after truncation to max_seq_len={self.max_seq_len} and were dropped"
                f"{self._rows()}; {self._suggest()}.")
        return out


def _needed_length(mask: bytes) -> int:
    """Positions a sample needs for its targets to be whole: last target position + 1."""
    return mask.rfind(b"\x01") + 1


def _percentile_len(needed: Sequence[int], share: float = 0.95) -> int:
    if not needed:
        return 0
    ordered = sorted(needed)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _describe_source(ds: Any) -> str:
    source = getattr(ds, "source", None)
    if source is None:
        return ""
    split = getattr(ds, "split", None)
    name = repr(str(source)) if isinstance(source, (str, Path)) else str(source)
    return f"{name} ({split} split)" if split and split != "all" else name


class ReportCounter:
    """Accumulates a :class:`DataReport` one target mask at a time (a stream never holds them all)."""

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.samples = self.truncated = self.dropped = self.target_tokens = self.total_tokens = 0
        self.dropped_rows: list[int] = []
        self.needed = array("i")

    def add(self, row: int, mask: bytes) -> None:
        need = _needed_length(mask)
        self.samples += 1
        self.needed.append(need)
        kept = mask.count(b"\x01", 0, self.max_seq_len)
        if need > self.max_seq_len:
            self.truncated += 1
        if kept == 0:
            self.dropped += 1
            if len(self.dropped_rows) < 1000:
                self.dropped_rows.append(row)
            return
        self.target_tokens += kept
        self.total_tokens += min(len(mask), self.max_seq_len)

    def report(self, *, source: str, row_word: str) -> DataReport:
        return DataReport(samples=self.samples, truncated=self.truncated, dropped=self.dropped,
                          target_tokens=self.target_tokens, total_tokens=self.total_tokens,
                          max_seq_len=self.max_seq_len, len_for_95pct=_percentile_len(self.needed),
                          source=source, row_word=row_word, dropped_rows=tuple(self.dropped_rows))


def _from_masks(masks: Sequence[bytes], rows: Sequence[int], max_seq_len: int, *, source: str,
                row_word: str) -> DataReport:
    counter = ReportCounter(max_seq_len)
    for row, mask in zip(rows, masks):
        counter.add(row, mask)
    return counter.report(source=source, row_word=row_word)


def _from_samples(ds: Any, max_seq_len: int | None, *, source: str) -> DataReport:
    """Any map-style data set of ``{"tokens", "labels"}``: what its samples hold as they are.

    Without the untruncated targets it cannot know what was cut, so ``truncated`` counts only
    samples cut here, at ``max_seq_len`` (when given).
    """
    masks = []
    longest = 0
    for i in range(len(ds)):
        labels = ds[i]["labels"]
        labels = labels.tolist() if hasattr(labels, "tolist") else labels
        masks.append(bytes(int(lab != CROSS_ENTROPY_IGNORE_IDX) for lab in labels))
        longest = max(longest, len(labels))
    limit = max_seq_len if max_seq_len is not None else longest
    return _from_masks(masks, range(len(masks)), limit, source=source, row_word="sample")


def data_report(dataset: Any) -> DataReport:
    """Count what a tokenized data set gives training, before training.

    One pass over the samples' target masks (computed when the data set was tokenized). Works on
    :class:`~tunekit.data.InstructDataset` and :class:`~tunekit.data.ChatDataset` (all samples
    of the split, the dropped ones included), on a :class:`~tunekit.data.PackedDataset` of
    them (at the shorter of the pack's and the data set's ``max_seq_len``), and on any
    map-style data set of ``{"tokens", "labels"}`` samples (counted as they are).

    Args:
        dataset: the data set a loader will read.

    Returns:
        The :class:`DataReport`; ``problems()`` is non-empty when nothing is left to learn,
        ``warnings()`` when truncation cuts many samples.
    """
    precomputed = getattr(dataset, "data_report", None)
    if isinstance(precomputed, DataReport):  # a streaming data set counts while it streams
        return precomputed
    pack_len = None
    inner = dataset
    if hasattr(type(dataset), "packs") and hasattr(dataset, "dataset"):  # PackedDataset
        pack_len, inner = dataset.max_seq_len, dataset.dataset
    source = _describe_source(inner)
    masks_of = getattr(inner, "target_masks", None)
    if callable(masks_of):
        lens = [x for x in (getattr(inner, "max_seq_len", None), pack_len) if x is not None]
        rows = getattr(inner, "split_rows", None)
        masks = masks_of()
        if rows is None or len(rows) != len(masks):
            rows, row_word = range(len(masks)), "sample"
        else:
            row_word = getattr(inner, "row_word", "row")
        return _from_masks(masks, rows, min(lens) if lens else max(map(len, masks), default=0),
                           source=source, row_word=row_word)
    if pack_len is not None:
        return _from_samples(inner, pack_len, source=source)
    return _from_samples(dataset, getattr(dataset, "max_seq_len", None), source=source)
