"""Greedy sequence packing into fixed-length samples."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from torch.utils.data import Dataset

CROSS_ENTROPY_IGNORE_IDX = -100


def _pad(pack: dict[str, list[int]], max_seq_len: int, pad_id: int) -> dict[str, list[int]]:
    n = max_seq_len - len(pack["tokens"])
    if n:
        pack["tokens"] += [pad_id] * n
        pack["labels"] += [CROSS_ENTROPY_IGNORE_IDX] * n
        pack["input_pos"] += list(range(n))
        pack["seq_lens"].append(n)
    return pack


def pack_stream(samples: Iterable[Mapping[str, Any]], max_seq_len: int, pad_id: int, *,
                dropped: list[int] | None = None) -> Iterator[dict[str, list[int]]]:
    """Greedy packing of a stream of samples, one pack at a time (what :class:`PackedDataset`
    stores and what a streaming data set yields): the same packs in the same order.

    ``dropped`` collects the indices of samples left without a target label after the cut.
    """
    cur: dict[str, list[int]] = {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}
    for i, sample in enumerate(samples):
        tokens = list(sample["tokens"])[:max_seq_len]
        labels = list(sample["labels"])[:max_seq_len]
        if len(tokens) != len(labels):
            raise ValueError(f"sample {i} has {len(tokens)} tokens but {len(labels)} labels")
        if not tokens:
            continue
        if all(lab == CROSS_ENTROPY_IGNORE_IDX for lab in labels):
            if dropped is not None:
                dropped.append(i)
            continue
        if len(cur["tokens"]) + len(tokens) > max_seq_len:
            yield _pad(cur, max_seq_len, pad_id)
            cur = {"tokens": [], "labels": [], "input_pos": [], "seq_lens": []}
        cur["tokens"] += tokens
        cur["labels"] += labels
        cur["input_pos"] += list(range(len(tokens)))
        cur["seq_lens"].append(len(tokens))
    if cur["tokens"]:
        yield _pad(cur, max_seq_len, pad_id)


class PackedDataset(Dataset):
    """Pack the samples of ``dataset`` greedily, in order, into samples of ``max_seq_len`` tokens.

    A sample is appended to the current pack while it fits; otherwise the pack is padded and a
    new one starts. A sample longer than ``max_seq_len`` is cut to ``max_seq_len`` (its labels
    are already shifted, so the kept positions keep their true targets). Each pack is
    ``{"tokens", "labels", "input_pos", "seq_lens"}``: ``input_pos`` restarts at 0 for every
    document (RoPE positions), ``seq_lens`` lists the document lengths and ends with the
    padding's length when there is padding, so ``sum(seq_lens) == max_seq_len``. Padding is a
    document of its own (token ``pad_id``, label -100), which keeps every mask row non-empty.

    A sample left with no target label after the cut (all -100) is not packed: it would only
    take room. ``dropped`` lists the indices of such samples in ``dataset``; the inner
    instruction/chat data sets already drop theirs at their own ``max_seq_len``, so this only
    happens when the pack is shorter than theirs. :func:`tunekit.data.data_report` on a
    ``PackedDataset`` reports on the samples at the shorter of the two lengths.

    Args:
        dataset: a map-style data set of ``{"tokens", "labels"}`` samples (labels shifted).
        max_seq_len: length of every packed sample.
        pad_id: padding token; default ``dataset.tokenizer.pad_id`` when there is one, else 0.
    """

    def __init__(self, dataset: Any, max_seq_len: int, *, pad_id: int | None = None) -> None:
        if not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len={max_seq_len!r} must be a positive integer.")
        if pad_id is None:
            pad_id = getattr(getattr(dataset, "tokenizer", None), "pad_id", 0)
        self.dataset = dataset
        self.max_seq_len = max_seq_len
        self.pad_id = int(pad_id)
        self.dropped: list[int] = []
        # stored compactly (4 bytes a position, not a Python int per list slot): a packed data
        # set of a million rows stays a few GB instead of tens
        self._packs: list[tuple[array, array, array, array]] = [
            (array("i", pk["tokens"]), array("i", pk["labels"]), array("i", pk["input_pos"]),
             array("i", pk["seq_lens"]))
            for pk in pack_stream((dataset[i] for i in range(len(dataset))), max_seq_len, self.pad_id,
                                  dropped=self.dropped)]

    @property
    def packs(self) -> list[dict[str, list[int]]]:
        """Every pack as lists (a copy; ``ds[i]`` reads one)."""
        return [self[i] for i in range(len(self))]

    def __len__(self) -> int:
        return len(self._packs)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens, labels, input_pos, seq_lens = self._packs[index]
        return {"tokens": tokens.tolist(), "labels": labels.tolist(), "input_pos": input_pos.tolist(),
                "seq_lens": seq_lens.tolist()}
