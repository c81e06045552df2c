"""Tokenized samples stored compactly, and the on-disk tokenization cache.

The cache (``TUNEKIT_CACHE``, default ``~/.cache/tunekit``) holds the tokenized split of an
in-memory data set under a key made of the data's bytes, the tokenizer's files, the format and
its settings and ``max_seq_len``: the second run of a sweep reads the arrays back instead of
tokenizing again. Entries are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_VERSION", "TokenizedSamples", "build_sample", "cache_dir", "tokenizer_fingerprint"]

#: Bumped whenever tokenization or the stored layout changes (old entries are then ignored).
CACHE_VERSION = 1

CROSS_ENTROPY_IGNORE_IDX = -100


def build_sample(tokens: list[int], targets: list[bool], max_seq_len: int) -> dict[str, list[int]]:
    """Shifted labels from per-token target flags, then truncation to ``max_seq_len``.

    ``labels[i] = tokens[i + 1]`` where token ``i + 1`` is a target, else -100; the last label
    is -100. Truncation keeps the first ``max_seq_len`` positions and their labels, so the last
    kept position still learns the true next token; an EOS is never invented at the cut (a
    model should not learn to stop mid-answer).
    """
    labels = [t if keep else CROSS_ENTROPY_IGNORE_IDX for t, keep in zip(tokens[1:], targets[1:])]
    labels.append(CROSS_ENTROPY_IGNORE_IDX)
    return {"tokens": tokens[:max_seq_len], "labels": labels[:max_seq_len]}


class TokenizedSamples:
    """The tokenized samples of one split, stored compactly, without those left with no target.

    Each sample is kept as its tokens (``array('i')``, cut to ``max_seq_len + 1`` so the last
    kept position still has its true next token) and its shifted target mask (one byte per
    position: 1 where ``labels[i] != -100``). The untruncated masks of every sample, dropped ones
    included, stay available to :func:`tunekit.data.data_report` (one byte per token).

    A sample whose targets all fall beyond ``max_seq_len`` would train on nothing (a batch of
    them gives loss 0, and a validation set of them nan); it is dropped here and counted.

    Args:
        encoded: ``(tokens, targets)`` per sample, as the ``tokenize_*`` templates return them.
        rows: the 1-based source row of each sample.
        max_seq_len: samples are cut to this many positions.
    """

    def __init__(self, encoded: Iterable[tuple[list[int], list[bool]]], rows: Sequence[int],
                 max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.all_rows: list[int] = list(rows)
        self.full_masks: list[bytes] = []
        self.rows: list[int] = []
        self.dropped_rows: list[int] = []
        self._tokens: list[array] = []
        self._masks: list[bytes] = []
        for row, (tokens, targets) in zip(self.all_rows, encoded):
            mask = bytes(targets[1:]) + b"\x00"  # shifted: position i predicts token i + 1
            self.full_masks.append(mask)
            if b"\x01" not in mask[:max_seq_len]:
                self.dropped_rows.append(row)
                continue
            self.rows.append(row)
            self._tokens.append(array("i", tokens[: max_seq_len + 1]))
            self._masks.append(mask[:max_seq_len])

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens, mask = self._tokens[index], self._masks[index]
        n = len(mask)
        labels = [t if m else CROSS_ENTROPY_IGNORE_IDX for t, m in zip(tokens[1:n + 1], mask)]
        labels += [CROSS_ENTROPY_IGNORE_IDX] * (n - len(labels))
        return {"tokens": tokens[:n].tolist(), "labels": labels}

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as flat numpy arrays (what the cache stores)."""
        def cat(items: Sequence[Any], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
            lens = np.fromiter((len(x) for x in items), dtype=np.int64, count=len(items))
            flat = (np.concatenate([np.frombuffer(x, dtype=dtype) for x in items]) if items
                    else np.zeros(0, dtype=dtype))
            return flat, lens
        tok, tok_len = cat(self._tokens, np.int32)
        mask, mask_len = cat(self._masks, np.uint8)
        full, full_len = cat(self.full_masks, np.uint8)
        return {"max_seq_len": np.array([self.max_seq_len]),
                "all_rows": np.array(self.all_rows, dtype=np.int64),
                "rows": np.array(self.rows, dtype=np.int64),
                "dropped_rows": np.array(self.dropped_rows, dtype=np.int64),
                "tok": tok, "tok_len": tok_len, "mask": mask, "mask_len": mask_len, "full": full, "full_len": full_len}

    @classmethod
    def from_arrays(cls, a: Any) -> TokenizedSamples:
        self = cls((), (), int(a["max_seq_len"][0]))
        self.all_rows, self.rows = a["all_rows"].tolist(), a["rows"].tolist()
        self.dropped_rows = a["dropped_rows"].tolist()

        def split(flat: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
            return np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []
        self._tokens = [array("i", x.astype(np.int32).tobytes()) for x in split(a["tok"], a["tok_len"])]
        self._masks = [x.tobytes() for x in split(a["mask"], a["mask_len"])]
        self.full_masks = [x.tobytes() for x in split(a["full"], a["full_len"])]
        return self


def cache_dir() -> Path:
    """``$TUNEKIT_CACHE`` or ``~/.cache/tunekit``."""
    return Path(os.environ.get("TUNEKIT_CACHE") or Path.home() / ".cache" / "tunekit").expanduser()


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 of the tokenizer's files (and the config/template beside them); None without a path."""
    path = getattr(tokenizer, "path", None)
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    for p in (Path(path), Path(path).with_name("tokenizer_config.json"), Path(path).with_name("chat_template.jinja")):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def load_cached(key: str) -> TokenizedSamples | None:
    path = cache_dir() / "tokenized" / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as a:
            return TokenizedSamples.from_arrays(a)
    except (OSError, ValueError, KeyError) as e:  # a damaged entry: tokenize again (and rewrite it)
        print(f"tunekit: warning: ignoring the damaged tokenization cache entry {str(path)!r} ({e}).",
              file=sys.stderr, flush=True)
        return None


def save_cached(key: str, samples: TokenizedSamples) -> None:
    """Write the entry atomically; a cache that cannot be written only costs the next run time."""
    folder = cache_dir() / "tokenized"
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **samples.arrays())
        os.replace(tmp, folder / f"{key}.npz")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        print(f"tunekit: warning: cannot write the tokenization cache in {str(folder)!r} ({e.strerror or e}); "
              f"set TUNEKIT_CACHE to a writable directory, or dataset.cache=false.", file=sys.stderr, flush=True)
