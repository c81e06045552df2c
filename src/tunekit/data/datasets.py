"""Instruction and chat data sets that yield ``{"tokens", "labels"}`` with shifted labels."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunekit.data._loading import (
    DataFormatError,
    DataSettingError,
    describe_value,
    format_problems,
    load_records,
    resolve_source,
    split_indices,
)
from tunekit.data.chat_template import ChatTemplateError, chat_tokens, check_chat_messages, tokenizer_chat_template
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


def _check_max_seq_len(max_seq_len: Any) -> None:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise DataSettingError(
            f"max_seq_len={max_seq_len!r} must be an integer >= 2 (the longest sample, in tokens, "
            f"that training sees); set e.g. max_seq_len=512."
        )


def load_split(source: str | Path, check: Callable[[Any], str | None], hint: str, *, split: str,
               val_fraction: float, split_seed: int) -> tuple[Path, str, list[int], list[Any]]:
    """Read ``source``, validate every row with ``check``, and keep one split.

    Returns:
        (path, row_word, rows, records): the resolved file, how its rows are numbered
        (``"record"`` or ``"line"``), the 1-based source row numbers (record position or
        JSONL line) of the split in file order, and the records.
    """
    path = resolve_source(source)
    rows, row_word = load_records(path)
    if not rows:
        raise DataFormatError(
            f"Data file {str(path)!r} holds no records (an empty list). Point dataset.source at "
            f"a file with at least one record. {hint}")
    problems = [(row, msg) for row, rec in rows if (msg := check(rec))]
    if problems:
        raise DataFormatError(format_problems(path, row_word, problems, len(rows)) + " " + hint)
    idx = split_indices(len(rows), split, val_fraction, split_seed, path, row_word)
    return path, row_word, [rows[i][0] for i in idx], [rows[i][1] for i in idx]


def check_instruct_record(rec: Any) -> str | None:
    """What is wrong with an Alpaca record, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'instruction' and 'output', got {describe_value(rec)}"
    for key in ("instruction", "output"):
        if key not in rec:
            return f"missing the field '{key}' (it has {sorted(rec)})"
        if not isinstance(rec[key], str):
            return f"field '{key}' must be a string, got {describe_value(rec[key])}"
    if rec.get("input") is not None and not isinstance(rec["input"], str):
        return f"field 'input' must be a string, got {describe_value(rec['input'])}"
    return None


def check_chat_record(rec: Any) -> str | None:
    """What is wrong with a chat record, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'messages', got {describe_value(rec)}"
    if "messages" not in rec:
        return f"missing the field 'messages' (it has {sorted(rec)})"
    return validate_messages(rec["messages"])


def check_model_chat_record(rec: Any) -> str | None:
    """What is wrong with a chat record for the model's own template, or None."""
    if not isinstance(rec, Mapping):
        return f"expected an object with 'messages', got {describe_value(rec)}"
    if "messages" not in rec:
        return f"missing the field 'messages' (it has {sorted(rec)})"
    return check_chat_messages(rec["messages"])


#: Layouts ``ChatDataset(template=...)`` accepts.
CHAT_TEMPLATES = ("llama2_chat", "model")


def _check_has_chat_template(tokenizer: Tokenizer) -> None:
    if not tokenizer_chat_template(tokenizer):
        raise DataSettingError(
            f"dataset.template=model uses the chat template the model ships, but the tokenizer "
            f"{str(getattr(tokenizer, 'path', type(tokenizer).__name__))!r} carries none (a "
            f"SentencePiece tokenizer.model never does). Use a tokenizer.json with its "
            f"tokenizer_config.json (tokenizer=hf), or set dataset.template=llama2_chat.")


def _model_chat_samples(tokenizer: Tokenizer, records: Sequence[Any], rows: Sequence[int], path: Path,
                        row_word: str, train_on_input: bool) -> Iterable[tuple[list[int], list[bool]]]:
    """``chat_tokens`` per record; a record the template refuses is named by file and row."""
    for row, rec in zip(rows, records):
        try:
            yield chat_tokens(tokenizer, rec["messages"], train_on_input=train_on_input)
        except ChatTemplateError as e:
            raise DataFormatError(f"Data file {str(path)!r}, {row_word} {row}: {e}") from None


class InstructDataset(Dataset):
    """Alpaca-style instruction data (``instruction``, optional ``input``, ``output``).

    Every record of the split is tokenized once, here; samples whose response is cut away
    entirely by ``max_seq_len`` are dropped (``dropped_rows``) and the rest kept compactly.
    :func:`tunekit.data.data_report` summarises what truncation did.

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

    Attributes:
        rows: the 1-based source rows of the samples (``ds[i]`` comes from ``rows[i]``).
        dropped_rows: source rows of the split left with no target token after truncation.
        source: the resolved file; ``row_word``: ``"record"`` (JSON list) or ``"line"`` (JSONL).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        DataFormatError: the file or a row is malformed (names the file, row and field), or a
            setting cannot work (``DataSettingError``: template, split, val_fraction).
    """

    hint = "Each record needs string fields 'instruction' and 'output', and may have 'input'."

    def __init__(self, tokenizer: Tokenizer, source: str | Path, *, template: str = "alpaca",
                 max_seq_len: int = 512, train_on_input: bool = False, split: str = "train",
                 val_fraction: float = 0.1, split_seed: int = 0) -> None:
        if template not in INSTRUCT_TEMPLATES:
            raise DataSettingError(
                f"dataset.template={template!r} is not a template of InstructDataset; the valid "
                f"ones are {', '.join(repr(t) for t in sorted(INSTRUCT_TEMPLATES))}. Set e.g. "
                f"dataset.template=alpaca (the Stanford Alpaca prompt) or "
                f"dataset.template=llama2_chat (the record as one [INST] turn).")
        _check_max_seq_len(max_seq_len)
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self.split = split
        tokenize: Callable[..., tuple[list[int], list[bool]]] = INSTRUCT_TEMPLATES[template]
        self.source, self.row_word, rows, records = load_split(
            source, check_instruct_record, self.hint,
            split=split, val_fraction=val_fraction, split_seed=split_seed)
        self._samples = TokenizedSamples(
            (tokenize(tokenizer, r["instruction"], r.get("input") or "", r["output"],
                      train_on_input=self.train_on_input) for r in records),
            rows, max_seq_len)

    @property
    def rows(self) -> list[int]:
        return self._samples.rows

    @property
    def dropped_rows(self) -> list[int]:
        return self._samples.dropped_rows

    @property
    def split_rows(self) -> list[int]:
        """Source rows of every sample of the split, dropped ones included (``target_masks`` order)."""
        return self._samples.all_rows

    def target_masks(self) -> list[bytes]:
        """Untruncated shifted target masks of every sample of the split (dropped ones too)."""
        return self._samples.full_masks

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self._samples[index]


class ChatDataset(Dataset):
    """Chat data (``{"messages": [{"role", "content"}, ...]}``) in the Llama 2 chat format, or in
    the model's own chat template (``template="model"``).

    Tokenized once, here; conversations whose every assistant token is cut away by
    ``max_seq_len`` are dropped (``dropped_rows``), as in :class:`InstructDataset`.

    Args:
        tokenizer: the tokenizer.
        source: path of a local ``.jsonl`` (or ``.json`` list) file, or ``"chat_tiny"``.
        template: ``"llama2_chat"`` (``[INST]`` turns, the default) or ``"model"``: the Jinja
            chat template the tokenizer carries (``tokenizer_config.json`` /
            ``chat_template.jinja``), tokens equal to transformers' ``apply_chat_template``;
            the assistant turns are found by rendering prefixes
            (:func:`tunekit.data.chat_tokens`).
        max_seq_len: samples are cut to this many tokens.
        train_on_input: also take the loss on the system/user turns; by default only on the
            assistant replies and their EOS (or the template's end-of-turn tokens).
        split: ``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``.
        val_fraction: share of rows held out for validation (0: no validation set).
        split_seed: seed of the deterministic split.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        DataFormatError: the file or a row is malformed (names the file, row and field).
    """

    hint = ("Each row needs 'messages': an optional 'system' message, then 'user' and "
            "'assistant' messages alternating, each {'role': ..., 'content': ...}, ending with 'assistant'.")

    def __init__(self, tokenizer: Tokenizer, source: str | Path, *, template: str = "llama2_chat",
                 max_seq_len: int = 512, train_on_input: bool = False, split: str = "train",
                 val_fraction: float = 0.1, split_seed: int = 0) -> None:
        if template not in CHAT_TEMPLATES:
            raise DataSettingError(
                f"dataset.template={template!r} is not a layout of ChatDataset; the valid ones are "
                f"{', '.join(repr(t) for t in CHAT_TEMPLATES)}. Set dataset.template=model to use the "
                f"model's own chat template, or dataset.template=llama2_chat for Llama 2's [INST] turns.")
        _check_max_seq_len(max_seq_len)
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self.split = split
        model = template == "model"
        if model and isinstance(tokenizer, Tokenizer):  # a setting problem: named before the data
            _check_has_chat_template(tokenizer)
        self.source, self.row_word, rows, records = load_split(
            source, check_model_chat_record if model else check_chat_record, self.hint,
            split=split, val_fraction=val_fraction, split_seed=split_seed)
        if model:
            _check_has_chat_template(tokenizer)
            encoded = _model_chat_samples(tokenizer, records, rows, self.source, self.row_word,
                                          self.train_on_input)
        else:
            encoded = (tokenize_llama2_chat(tokenizer, r["messages"], train_on_input=self.train_on_input)
                       for r in records)
        self._samples = TokenizedSamples(encoded, rows, max_seq_len)

    @property
    def rows(self) -> list[int]:
        return self._samples.rows

    @property
    def dropped_rows(self) -> list[int]:
        return self._samples.dropped_rows

    @property
    def split_rows(self) -> list[int]:
        """Source rows of every sample of the split, dropped ones included (``target_masks`` order)."""
        return self._samples.all_rows

    def target_masks(self) -> list[bytes]:
        """Untruncated shifted target masks of every sample of the split (dropped ones too)."""
        return self._samples.full_masks

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self._samples[index]
