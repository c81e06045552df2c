"""Instruction and chat data sets that yield ``{"tokens", "labels"}`` with shifted labels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunekit.data._loading import (
    DataFormatError,
    format_problems,
    load_records,
    resolve_source,
    split_indices,
)
from tunekit.data.templates import INSTRUCT_TEMPLATES, tokenize_llama2_chat, validate_messages
from tunekit.tokenizers import Tokenizer

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


def load_split(source: str | Path, check: Callable[[Any], str | None], hint: str, *, split: str,
               val_fraction: float, split_seed: int) -> tuple[Path, list[int], list[Any]]:
    """Read ``source``, validate every row with ``check``, and keep one split.

    Returns:
        (path, rows, records): the resolved file, the 1-based source row numbers (record
        position or JSONL line) of the split in file order, and the records.
    """
    path = resolve_source(source)
    rows, row_word = load_records(path)
    if not rows:
        raise DataFormatError(f"Data file {str(path)!r} holds no records.")
    problems = [(row, msg) for row, rec in rows if (msg := check(rec))]
    if problems:
        raise DataFormatError(format_problems(path, row_word, problems, len(rows)) + " " + hint)
    idx = split_indices(len(rows), split, val_fraction, split_seed, path)
    return path, [rows[i][0] for i in idx], [rows[i][1] for i in idx]


def _check_max_seq_len(max_seq_len: int) -> None:
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ValueError(f"max_seq_len={max_seq_len!r} must be an integer >= 2.")


def check_instruct_record(rec: Any) -> str | None:
    """What is wrong with an Alpaca record, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'instruction' and 'output', got {type(rec).__name__}"
    for key in ("instruction", "output"):
        if key not in rec:
            return f"missing the field '{key}' (it has {sorted(rec)})"
        if not isinstance(rec[key], str):
            return f"field '{key}' must be a string, got {type(rec[key]).__name__}"
    if rec.get("input") is not None and not isinstance(rec["input"], str):
        return f"field 'input' must be a string, got {type(rec['input']).__name__}"
    return None


def check_chat_record(rec: Any) -> str | None:
    """What is wrong with a chat record, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'messages', got {type(rec).__name__}"
    if "messages" not in rec:
        return f"missing the field 'messages' (it has {sorted(rec)})"
    return validate_messages(rec["messages"])


class InstructDataset(Dataset):
    """Alpaca-style instruction data (``instruction``, optional ``input``, ``output``).

    Args:
        tokenizer: the tokenizer (``encode``, ``bos_id``, ``eos_id``).
        source: path of a local ``.json`` (list of records) or ``.jsonl`` file, or a bundled
            name (``"alpaca_tiny"``).
        template: ``"alpaca"`` (Stanford Alpaca prompt) or ``"llama2_chat"`` (the record as one
            ``[INST]`` turn).
        max_seq_len: samples are cut to this many tokens.
        train_on_input: also take the loss on the prompt; by default only on the response
            and its EOS.
        split: ``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``.
        val_fraction: share of rows held out for validation (0: no validation set).
        split_seed: seed of the deterministic split.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        DataFormatError: the file or a row is malformed (names the file, row and field).
    """

    hint = "Each record needs string fields 'instruction' and 'output', and may have 'input'."

    def __init__(self, tokenizer: Tokenizer, source: str | Path, *, template: str = "alpaca",
                 max_seq_len: int = 512, train_on_input: bool = False, split: str = "train",
                 val_fraction: float = 0.1, split_seed: int = 0) -> None:
        if template not in INSTRUCT_TEMPLATES:
            raise ValueError(f"template={template!r} is not one of {sorted(INSTRUCT_TEMPLATES)}.")
        _check_max_seq_len(max_seq_len)
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self._tokenize: Callable[..., tuple[list[int], list[bool]]] = INSTRUCT_TEMPLATES[template]
        self.source, self.rows, self._records = load_split(
            source, check_instruct_record, self.hint,
            split=split, val_fraction=val_fraction, split_seed=split_seed)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        rec = self._records[index]
        tokens, targets = self._tokenize(self.tokenizer, rec["instruction"], rec.get("input") or "",
                                         rec["output"], train_on_input=self.train_on_input)
        return build_sample(tokens, targets, self.max_seq_len)


class ChatDataset(Dataset):
    """Chat data (``{"messages": [{"role", "content"}, ...]}``) in the Llama 2 chat format.

    Args:
        tokenizer: the tokenizer.
        source: path of a local ``.jsonl`` (or ``.json`` list) file, or ``"chat_tiny"``.
        max_seq_len: samples are cut to this many tokens.
        train_on_input: also take the loss on the system/user turns; by default only on the
            assistant replies and their EOS.
        split: ``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``.
        val_fraction: share of rows held out for validation (0: no validation set).
        split_seed: seed of the deterministic split.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        DataFormatError: the file or a row is malformed (names the file, row and field).
    """

    hint = ("Each row needs 'messages': an optional 'system' message, then 'user' and "
            "'assistant' messages alternating, each {'role': ..., 'content': ...}, ending with 'assistant'.")

    def __init__(self, tokenizer: Tokenizer, source: str | Path, *, max_seq_len: int = 512,
                 train_on_input: bool = False, split: str = "train", val_fraction: float = 0.1,
                 split_seed: int = 0) -> None:
        _check_max_seq_len(max_seq_len)
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self.source, self.rows, self._records = load_split(
            source, check_chat_record, self.hint,
            split=split, val_fraction=val_fraction, split_seed=split_seed)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        tokens, targets = tokenize_llama2_chat(self.tokenizer, self._records[index]["messages"],
                                               train_on_input=self.train_on_input)
        return build_sample(tokens, targets, self.max_seq_len)
