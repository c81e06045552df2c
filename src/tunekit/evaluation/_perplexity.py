"""Perplexity of a text file, a JSONL/JSON file of texts, or a data set split (no harness needed).

Every document is scored on its own: a text document is ``BOS + tokens`` (each token predicted
from the ones before it); a data set sample is its ``tokens`` / shifted ``labels`` (only the
positions with a label count, as in training, so the figure is ``exp(validation loss)``).
A document longer than the context is scored in windows of ``max_length`` positions that
advance by ``stride``: each window scores only the positions no earlier window scored, with up
to ``max_length - stride`` positions of context before them (the Hugging Face "perplexity of
fixed-length models" method; ``stride == max_length`` gives disjoint windows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunekit.evaluation._errors import EvaluationError

__all__ = ["PerplexityResult", "perplexity", "read_texts", "text_documents"]

IGNORE = -100


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted totals of a perplexity evaluation.

    Attributes:
        nll_sum: summed negative log-likelihood (nats) of the scored tokens.
        tokens: scored tokens.
        documents: documents (texts or samples) scored.
        windows: forward windows run.
    """

    nll_sum: float
    tokens: int
    documents: int
    windows: int

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per scored token (the cross-entropy loss)."""
        return self.nll_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens,
                "documents": self.documents, "windows": self.windows}


_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".arrow", ".feather", ".xlsx", ".xls")


def read_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """The documents of a ``.txt`` file (the whole file is one), or of a ``.jsonl`` / ``.json`` file
    (each record's ``text_field``).

    Raises:
        EvaluationError: a missing or empty file, bad JSON, a record without ``text_field``
            (naming the file, the row and the fix).
    """
    p = Path(path).expanduser()
    where = f"`perplexity.source`={str(path)!r}"
    if not p.is_file():
        raise EvaluationError(f"{where}: no such file. Give a .txt file (scored as one document), a .jsonl/.json "
                              f"file of records with a {text_field!r} field, or `dataset` (the dataset group's split).")
    if p.suffix.lower() in _TABLE_SUFFIXES:  # read as raw text, a CSV's header and commas would be scored too
        raise EvaluationError(
            f"{where}: {p} is a {p.suffix.lower()[1:].upper()} table; perplexity.source reads a .txt file (one "
            f"document) or .jsonl/.json records. To score a column of texts of a table, use the data path: "
            f"perplexity.source=dataset dataset=text dataset.source={p} perplexity.split=all (its 'text' column; "
            f"another column with 'dataset.column_map={{text: COLUMN}}').")
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise EvaluationError(f"{where}: {p} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from err
    if p.suffix.lower() not in (".jsonl", ".json"):
        if not raw.strip():
            raise EvaluationError(f"{where}: {p} is empty; there is nothing to score. Give a file with text in it.")
        return [raw]
    if p.suffix.lower() == ".json":
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as err:
            raise EvaluationError(f"{where}: {p} is not valid JSON (line {err.lineno}: {err.msg}); fix the file "
                                  "or save it as .jsonl (one JSON object per line).") from err
        rows = rows if isinstance(rows, list) else [rows]
        numbered = list(enumerate(rows, start=1))
        row_word = "record"
    else:
        numbered = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise EvaluationError(f"{where}: line {n} of {p} is not valid JSON ({err.msg}); each line of a "
                                      ".jsonl file is one JSON object, e.g. {\"text\": \"...\"}.") from err
        row_word = "line"
    texts = []
    for n, row in numbered:
        value = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise EvaluationError(
                f"{where}: {row_word} {n} of {p} has no string field {text_field!r} (it has: {keys or 'nothing'}). "
                f"Name the field that holds the text with perplexity.text_field=<field>.")
        texts.append(value)
    if not texts:
        raise EvaluationError(f"{where}: {p} holds no records; there is nothing to score.")
    return texts


def text_documents(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """``(tokens, labels)`` per text: ``BOS + ids`` shifted, so every text token is predicted."""
    docs = []
    for text in texts:
        ids = list(tokenizer.encode(text, add_bos=True, add_eos=False))
        if tokenizer.bos_id is None or not ids or ids[0] != tokenizer.bos_id:
            ids = [tokenizer.eos_id, *ids]  # no BOS: condition the first token on EOS (as the harness does)
        if len(ids) >= 2:
            docs.append((ids[:-1], ids[1:]))
    return docs


def _windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first scored)`` position ranges covering ``n`` positions."""
    out, prev_end, begin = [], 0, 0
    while prev_end < n:
        end = min(begin + max_length, n)
        out.append((begin, end, prev_end))
        prev_end = end
        begin += stride
    return out


@torch.inference_mode()
def perplexity(model: torch.nn.Module, documents: Sequence[tuple[Sequence[int], Sequence[int]]], *,
               max_length: int | None = None, stride: int | None = None, batch_size: int = 8,
               device: torch.device | str | None = None) -> PerplexityResult:
    """Score ``documents`` (``(tokens, shifted labels)`` pairs, ``-100`` = not scored).

    Args:
        model: a ``TransformerDecoder`` (eval mode).
        documents: from :func:`text_documents` or a data set's samples.
        max_length: positions per window (default: the model's ``max_seq_len``).
        stride: how far each window advances (default ``max_length``: disjoint windows).
        batch_size: windows per forward pass.
        device: where the model is (default: its parameters' device).
    """
    max_length = int(max_length or model.max_seq_len)
    stride = int(stride or max_length)
    if not 1 <= stride <= max_length:
        raise EvaluationError(f"`perplexity.stride`={stride}: must be between 1 and the window length "
                              f"{max_length} (`perplexity.max_length`); e.g. {max(1, max_length // 2)}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    jobs = []  # (tokens, labels with the already-scored positions ignored)
    for tokens, labels in documents:
        for begin, end, first in _windows(len(tokens), max_length, stride):
            lab = list(labels[begin:end])
            lab[:first - begin] = [IGNORE] * (first - begin)
            jobs.append((list(tokens[begin:end]), lab))
    jobs.sort(key=lambda j: -len(j[0]))
    nll, count = 0.0, 0
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        width = max(len(t) for t, _ in chunk)
        tokens = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, (t, lab) in enumerate(chunk):
            tokens[row, :len(t)] = torch.tensor(t)
            labels[row, :len(lab)] = torch.tensor(lab)
        logits = model(tokens.to(device)).float()
        labels = labels.to(device)
        nll += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                     reduction="sum"))
        count += int((labels != IGNORE).sum())
    return PerplexityResult(nll_sum=nll, tokens=count, documents=len(documents), windows=len(jobs))
