"""In-memory data sets of every format, yielding ``{"tokens", "labels"}`` with shifted labels.

One loading path for all of them (:class:`FormatDataset`): ``load_rows`` resolves the source,
the columns are checked, every row is validated (row-numbered errors), one split is kept, and the
split is tokenized once (or read back from the tokenization cache) into compact arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tunekit.data._loading import DataFormatError, DataSettingError, format_problems, split_indices
from tunekit.data._tokenized import (
    CROSS_ENTROPY_IGNORE_IDX,
    TokenizedSamples,
    build_sample,
    cache_key,
    load_cached,
    save_cached,
    tokenizer_fingerprint,
)
from tunekit.data.formats import CHAT_TEMPLATES, Format, encode_or_raise, make_format
from tunekit.data.sources import RowSource, load_rows

__all__ = ["CHAT_TEMPLATES", "CROSS_ENTROPY_IGNORE_IDX", "ChatDataset", "FormatDataset", "InstructDataset",
           "TextDataset", "build_sample", "check_max_seq_len", "text_chunks", "validated_rows"]

#: ``cache="auto"`` caches data sets of at least this many bytes (small ones tokenize in no time).
AUTO_CACHE_BYTES = 1 << 20


def check_max_seq_len(max_seq_len: Any) -> None:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise DataSettingError(
            f"max_seq_len={max_seq_len!r} must be an integer >= 2 (the longest sample, in tokens, "
            f"that training sees); set e.g. max_seq_len=512."
        )


def validated_rows(src: RowSource, fmt: Format) -> list[tuple[int, Any]]:
    """Every ``(row, record)`` of ``src``, checked against ``fmt``; bad rows in one paragraph."""
    src.check_columns(fmt.required, fmt.optional, alternatives=fmt.alternatives, fmt=fmt.name)
    rows = list(src)
    label = str(src.files[0]) if len(src.files) == 1 else src.label
    if not rows:
        raise DataFormatError(
            f"Data file {label!r} holds no records (it is empty, or an empty list). Point "
            f"dataset.source at a file with at least one record. {fmt.hint}")
    problems = [(row, msg) for row, rec in rows if (msg := fmt.check(rec))]
    if problems:
        raise DataFormatError(format_problems(Path(label), src.row_word, problems, len(rows), rowsource=src)
                              + " " + fmt.hint)
    return rows


def text_chunks(docs: Iterable[tuple[int, list[int]]], max_seq_len: int) -> Iterator[tuple[int, list[int]]]:
    """Documents (already with BOS/EOS) joined and cut into windows of ``max_seq_len + 1`` tokens
    that overlap by one, so every position of a window has its true next token as target.

    Yields ``(row of the document the window starts in, tokens)``; a last window of one token
    (nothing to predict) is not yielded.
    """
    buf: list[int] = []
    pos = 0  # start of the next window in buf
    starts: list[tuple[int, int]] = []  # (offset in buf where a document starts, its row)
    for row, ids in docs:
        starts.append((len(buf), row))
        buf += ids
        while len(buf) - pos >= max_seq_len + 1:
            while len(starts) > 1 and starts[1][0] <= pos:
                starts.pop(0)
            yield starts[0][1], buf[pos: pos + max_seq_len + 1]
            pos += max_seq_len
        if pos > (1 << 16):  # drop what every later window is past
            buf, starts = buf[pos:], [(off - pos, r) for off, r in starts]
            pos = 0
    if len(buf) - pos >= 2:
        while len(starts) > 1 and starts[1][0] <= pos:
            starts.pop(0)
        yield starts[0][1], buf[pos:]


class FormatDataset(Dataset):
    """A split of any format (instruct, chat, text), tokenized once into compact arrays.

    Args:
        tokenizer: the tokenizer.
        source: a file, directory, glob, bundled name or cached Hub data set id (see
            :func:`tunekit.data.load_rows`).
        format: ``instruct`` | ``chat`` | ``text``.
        template: the instruct template (``alpaca``, ``llama2_chat``) or chat layout (``auto``,
            ``model``, ``llama2_chat``).
        max_seq_len: samples are cut to this many tokens (text: the window length).
        train_on_input: also take the loss on the prompt (instruct, chat).
        split / val_fraction / split_seed: the deterministic train/validation holdout.
        column_map, data_files, subset, source_split, revision: passed to ``load_rows``.
        cache: ``True`` / ``False`` / ``"auto"`` (data of 1 MiB or more): keep the tokenized
            split in the tokenization cache (``TUNEKIT_CACHE``).

    Attributes:
        rows: the 1-based source rows of the samples (``ds[i]`` comes from ``rows[i]``).
        dropped_rows: source rows of the split left with no target token after truncation.
        source: the resolved file (or the directory / glob / repo); ``row_word``: how rows are
            numbered; ``cache_hit``: the split was read from the cache.
    """

    format_name = ""

    def __init__(self, tokenizer: Any, source: str | Path, *, format: str | None = None,
                 template: str | None = None, max_seq_len: int = 512, train_on_input: bool = False,
                 split: str = "train", val_fraction: float = 0.1, split_seed: int = 0,
                 column_map: Mapping[str, str] | None = None, data_files: str | Sequence[str] | None = None,
                 subset: str | None = None, source_split: str = "train", revision: str | None = None,
                 cache: bool | str = "auto") -> None:
        check_max_seq_len(max_seq_len)
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_input = bool(train_on_input)
        self.split = split
        self.format = make_format(format or self.format_name, tokenizer, template=template,
                                  train_on_input=self.train_on_input)
        self.template = self.format.template
        src = load_rows(source, data_files=data_files, subset=subset, source_split=source_split,
                        revision=revision, column_map=column_map, text_files=self.format.name == "text")
        self.rowsource = src
        self.source: Any = src.files[0] if len(src.files) == 1 else src.label
        self.row_word = src.row_word
        key = self._cache_key(src, cache, split=split, val_fraction=val_fraction, split_seed=split_seed)
        self.cache_hit = False
        if key is not None and (cached := load_cached(key)) is not None:
            self._samples, self.cache_hit = cached, True
            return
        rows = validated_rows(src, self.format)
        idx = split_indices(len(rows), split, val_fraction, split_seed, Path(str(self.source)), self.row_word)
        picked = [rows[i] for i in idx]
        self._samples = self._tokenize(src, picked)
        if key is not None:
            save_cached(key, self._samples)

    def _cache_key(self, src: RowSource, cache: bool | str, **split: Any) -> str | None:
        if cache not in (True, False, "auto"):
            raise DataSettingError(f"dataset.cache={cache!r} must be true, false or auto (cache data of 1 MiB "
                                   f"or more).")
        if cache is False:
            return None
        if cache == "auto" and sum(f.stat().st_size for f in src.files) < AUTO_CACHE_BYTES:
            return None
        tok = tokenizer_fingerprint(self.tokenizer)
        if tok is None:
            return None
        return cache_key(data=src.fingerprint(), tokenizer=tok, format=self.format.name, template=self.template,
                         train_on_input=self.train_on_input, max_seq_len=self.max_seq_len, **split)

    def _tokenize(self, src: RowSource, picked: list[tuple[int, Any]]) -> TokenizedSamples:
        fmt = self.format
        if fmt.name == "text":
            docs = ((row, fmt.encode(rec)[0]) for row, rec in picked)
            chunks = list(text_chunks(docs, self.max_seq_len))
            return TokenizedSamples(((ids, [True] * len(ids)) for _, ids in chunks),
                                    [row for row, _ in chunks], self.max_seq_len)
        encoded = (encode_or_raise(fmt, rec, src.where(row)) for row, rec in picked)
        return TokenizedSamples(encoded, [row for row, _ in picked], self.max_seq_len)

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


class InstructDataset(FormatDataset):
    """Alpaca-style instruction data (``instruction``, optional ``input``, ``output``).

    Loss on the response and its EOS (``train_on_input``: every token but BOS). ``template``:
    ``"alpaca"`` (Stanford Alpaca prompt) or ``"llama2_chat"`` (the record as one ``[INST]``
    turn). Other arguments as :class:`FormatDataset`.
    """

    format_name = "instruct"
    hint = "Each record needs string fields 'instruction' and 'output', and may have 'input'."

    def __init__(self, tokenizer: Any, source: str | Path, *, template: str = "alpaca", **kwargs: Any) -> None:
        kwargs.pop("format", None)
        super().__init__(tokenizer, source, format="instruct", template=template, **kwargs)


class ChatDataset(FormatDataset):
    """Chat data: OpenAI ``messages`` (``role``/``content``) or ShareGPT ``conversations``
    (``from``/``value``, human/gpt), rendered by the model's chat template or Llama 2's layout.

    ``template``: ``"auto"`` (the default: the model's template when the tokenizer carries one,
    Llama 2's ``[INST]`` layout otherwise), ``"model"`` or ``"llama2_chat"``. Loss on each
    assistant reply and its end-of-turn tokens (``train_on_input``: every token but BOS);
    tool / function-call messages are refused. Other arguments as :class:`FormatDataset`.
    """

    format_name = "chat"
    hint = ("Each row needs 'messages': an optional 'system' message, then 'user' and "
            "'assistant' messages alternating, each {'role': ..., 'content': ...}, ending with 'assistant'.")

    def __init__(self, tokenizer: Any, source: str | Path, *, template: str = "auto", **kwargs: Any) -> None:
        kwargs.pop("format", None)
        super().__init__(tokenizer, source, format="chat", template=template, **kwargs)


class TextDataset(FormatDataset):
    """Raw text for continued pre-training: a ``text`` column, or ``.txt`` files (one document per
    file). Documents are tokenized with BOS and EOS, joined, and cut into windows of
    ``max_seq_len`` positions; the loss is on every token. The validation holdout is by document.
    Other arguments as :class:`FormatDataset`.
    """

    format_name = "text"

    def __init__(self, tokenizer: Any, source: str | Path, **kwargs: Any) -> None:
        kwargs.pop("format", None)
        kwargs.pop("template", None)
        super().__init__(tokenizer, source, format="text", **kwargs)
