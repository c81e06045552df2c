"""Where rows come from: local JSON/JSONL/CSV/TSV/Parquet/Arrow/text files, globs, directories and
Hub data sets from the local Hugging Face cache, with column mapping and row-numbered errors.

``load_rows(source, ...)`` is the one loader every format uses (instruct, chat, text, preference):
it resolves ``source`` to files, checks the columns a format needs, and yields ``(row, record)``
with ``column_map`` applied. JSON and JSONL are read by tunekit's own reader (errors name the
line / record); CSV, TSV, Parquet and Arrow through Hugging Face ``datasets`` in streaming mode
(nothing is converted or cached on disk), one file at a time so every error names its file and
row. Nothing here tokenizes.
"""

from __future__ import annotations

import difflib
import glob as globlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.data._loading import BUNDLED_DATA, DataFormatError, DataSettingError, load_records

__all__ = ["READ_FORMATS", "RowSource", "load_rows"]

#: Suffix -> reader. ``.txt`` is raw text for ``format=text`` (one document per file) and a
#: JSON file otherwise (the historical behaviour).
READ_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                ".arrow": "arrow", ".txt": "text"}
_HF_BUILDER = {"csv": "csv", "parquet": "parquet", "arrow": "arrow"}
_SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                "test": ("test", "testing", "eval")}
#: Column names people use for a field, best first (to suggest a column_map).
_SYNONYMS = {
    "instruction": ("question", "prompt", "query", "instruction_text", "input_text", "problem"),
    "input": ("context", "input_context"),
    "output": ("answer", "response", "completion", "target", "output_text", "solution"),
    "messages": ("conversations", "conversation", "dialog", "dialogue", "chat"),
    "text": ("content", "document", "body", "raw", "passage"),
    "prompt": ("question", "instruction", "query"),
    "chosen": ("chosen_response", "preferred", "accepted"),
    "rejected": ("rejected_response", "dispreferred"),
}


def _read_hint() -> str:
    return ("tunekit reads .json (a list of records), .jsonl, .csv, .tsv, .parquet and .arrow files, "
            ".txt (raw text, dataset=text), directories and globs of them, and Hub data sets from the "
            "local Hugging Face cache")


@dataclass
class RowSource:
    """The files of a data set and how to read them (``iter(source)`` yields ``(row, record)``).

    Attributes:
        label: what messages call the data (the file, the directory, the glob or the Hub repo).
        files: the data files, in reading order.
        row_word: how rows are numbered (``"line"``, ``"record"``, ``"row"``; ``"document"`` for
            text files); with several files rows are numbered across them.
        column_map: format field -> column of the data (applied to every record).
        text_files: read ``.txt`` files as raw text (one document per file) instead of JSON.
    """

    label: str
    files: list[Path]
    row_word: str = "row"
    column_map: dict[str, str] = field(default_factory=dict)
    text_files: bool = False
    streaming: bool = False

    def file_rows(self, path: Path) -> Iterator[tuple[int, Any]]:
        """``(row, raw record)`` of one file, rows numbered within the file (1-based)."""
        kind = READ_FORMATS.get(path.suffix.lower(), "json")
        if kind == "text" and self.text_files:
            yield 1, {"text": _read_text(path)}
        elif kind in _HF_BUILDER:
            yield from _hf_rows(path, kind)
        elif self.streaming and path.suffix.lower() == ".jsonl":
            yield from _jsonl_rows(path)
        else:
            rows, _ = load_records(path)
            yield from rows

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """``(row, record)`` with ``column_map`` applied; rows count across files from 1."""
        n = 0
        # (first cross-file row, file, its own row there): a new span where the file's own numbering
        # stops following the count (a new file, a skipped blank line), so ``locate`` can name it
        self._spans: list[tuple[int, Path, int]] = []
        for path in self.files:
            expect = None
            for row, rec in self.file_rows(path):
                n += 1
                if row != expect:
                    self._spans.append((n, path, row))
                expect = row + 1
                yield (row if len(self.files) == 1 else n), self.mapped(rec)

    def locate(self, row: int) -> tuple[Path, str]:
        """The file that holds cross-file ``row`` and how that file numbers it (``line 11``)."""
        if len(self.files) == 1:
            return self.files[0], f"{self.row_word} {row}"
        span = next((sp for sp in reversed(getattr(self, "_spans", [])) if sp[0] <= row), None)
        if span is None:
            return Path(self.label), f"{self.row_word} {row}"
        first, path, own = span
        return path, f"{_row_word_of(path, self.text_files)} {own + row - first}"

    def row_label(self, row: int) -> str:
        """``row 3`` of one file; ``row 41 (b.jsonl, line 11)`` of a directory, glob or Hub set."""
        if len(self.files) == 1:
            return f"{self.row_word} {row}"
        path, own = self.locate(row)
        names = [f.name for f in self.files]
        name = path.name if names.count(path.name) == 1 else str(path)
        return f"{self.row_word} {row} ({name}, {own})"

    def explain(self, msg: str) -> str:
        """A row problem with the user's own column named beside the format field it maps to."""
        for fld, col in self.column_map.items():
            if col != fld:
                msg = msg.replace(f"field '{fld}'", f"field '{fld}' (your column '{col}')")
        return msg

    def mapped(self, rec: Any) -> Any:
        if not self.column_map or not isinstance(rec, Mapping):
            return rec
        out = dict(rec)
        for fld, col in self.column_map.items():
            if col in rec:
                out[fld] = rec[col]
        return out

    def where(self, row: int) -> str:
        """``Data file 'x.csv', row 3`` (the file of a cross-file row number when there are several)."""
        path, own = self.locate(row)
        return f"Data file {str(path)!r}, {own}"

    def fingerprint(self) -> str:
        """sha256 over every file's name and bytes (what the tokenization cache is keyed by)."""
        h = hashlib.sha256()
        for path in self.files:
            h.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        h.update(repr(sorted(self.column_map.items())).encode())
        return h.hexdigest()

    def check_columns(self, required: Sequence[str], optional: Sequence[str] = (), *,
                      alternatives: Mapping[str, Sequence[str]] | None = None, fmt: str = "") -> None:
        """Refuse, in one paragraph, data whose first record lacks a column the format reads.

        ``alternatives``: a field that may come under another name (chat: ``messages`` or the
        ShareGPT ``conversations``).
        """
        first = next(iter(self.file_rows(self.files[0])), None)
        if first is None or not isinstance(first[1], Mapping):
            return  # an empty file or non-object rows: the row checks say what is wrong
        columns = [str(c) for c in first[1]]
        sep = next((c for c in ";\t|" if len(columns) == 1 and c in columns[0]), None)
        if sep is not None and _suffix_kind(self.files[0]) == "csv":
            name = {";": "semicolons", "\t": "tabs", "|": "'|'"}[sep]
            fix = (f"rename it to {self.files[0].stem}.tsv (a .tsv file is read tab-separated)" if sep == "\t"
                   else "save it comma-separated (e.g. pandas: pd.read_csv(path, sep=" + repr(sep)
                   + ").to_csv(new_path, index=False))")
            raise DataFormatError(
                f"Data file {str(self.files[0])!r} reads as one column {columns[0]!r}: its fields are separated "
                f"by {name}, and a {self.files[0].suffix} file is read comma-separated. {fix[0].upper() + fix[1:]}, "
                f"and point dataset.source at the new file.")
        for fld, col in self.column_map.items():
            if col not in first[1]:
                close = difflib.get_close_matches(col, columns, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataSettingError(
                    f"dataset.column_map maps {fld!r} to the column {col!r}, but data file "
                    f"{str(self.files[0])!r} has no such column{hint}; its columns are {columns}. "
                    f"Fix the mapping, e.g. dataset.column_map='{{{fld}: {close[0] if close else columns[0]}}}'.")
        have = set(columns) | set(self.column_map)
        alternatives = alternatives or {}
        missing = [f for f in required if f not in have and not any(a in have for a in alternatives.get(f, ()))]
        if not missing:
            return
        used = set(self.column_map.values()) | {f for f in required if f in have}
        free = [c for c in columns if c not in used]
        guess: dict[str, str] = {}
        for fld in missing:
            pick = next((c for c in _SYNONYMS.get(fld, ()) if c in free), None) \
                or next((c for c in free if fld in c.lower()), None) or (free[0] if free else None)
            if pick is not None:
                guess[fld] = pick
                free.remove(pick)
        fields = " and ".join(repr(f) for f in required)
        opt = f" (and optionally {', '.join(repr(o) for o in optional)})" if optional else ""
        fix = ("dataset.column_map='{" + ", ".join(f"{k}: {v}" for k, v in {**self.column_map, **guess}.items())
               + "}'") if guess else "dataset.column_map='{FIELD: COLUMN}'"
        raise DataFormatError(
            f"Data file {str(self.files[0])!r} has no column {' or '.join(repr(m) for m in missing)}: "
            f"the {fmt + ' ' if fmt else ''}format reads {fields}{opt}, and the file's columns are "
            f"{columns}. Map your columns onto the format's fields: {fix} (format field: your column).")


def _read_text(path: Path) -> str:
    """A ``.txt`` document: UTF-8 (BOM dropped), Windows / old-Mac line endings read as ``\\n``
    (as Python's text mode and the perplexity reader do), so a file saved on Windows trains on the
    same tokens as its Unix copy."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(
            f"Data file {str(path)!r} is not valid UTF-8 at byte offset {e.start} (line {line}): "
            f"tunekit reads UTF-8 text. Re-encode it, e.g. `iconv -f LATIN1 -t UTF-8 {path.name} > "
            f"{path.stem}.utf8.txt`, and point dataset.source at the new file.") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` of a JSONL file read line by line (streaming: never the whole file)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):  # binary lines split on b"\n" only, like load_records
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    f"Data file {str(path)!r}, line {lineno}: not valid UTF-8 (column {e.start + 1} holds the bytes "
                    f"{raw[e.start:e.start + 4].hex(' ')}). tunekit reads UTF-8 text; re-encode the file (e.g. "
                    f"`iconv -f CP1252 -t UTF-8 {path.name} > {path.stem}.utf8.jsonl`) and point dataset.source "
                    f"at the new file.") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                if lineno == 1 and line.lstrip().startswith("["):
                    raise DataFormatError(
                        f"Data file {str(path)!r} starts with '[' over several lines: it looks like a JSON list of "
                        f"records, not JSON Lines (one record per line). Rename it to {path.stem}.json (a .json "
                        f"file is read as a list of records), or write one record per line.") from None
                raise DataFormatError(
                    f"Data file {str(path)!r}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}). A .jsonl "
                    f"file needs one complete JSON object per line (no line breaks inside a record, no trailing "
                    f"commas); fix or delete that line.") from None


def _hf_rows(path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV/TSV/Parquet/Arrow file through HF ``datasets`` (streaming: no cache written)."""
    import datasets  # lazy: a second to import

    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {"sep": "\t"} if path.suffix.lower() == ".tsv" else {}
    if path.stat().st_size == 0:
        raise DataFormatError(
            f"Data file {str(path)!r} is empty (0 bytes): there are no rows to train on. Point "
            f"dataset.source at the data file itself; if a script wrote it, check that it finished.")
    try:
        if kind == "csv":  # a CSV cell is text: keep "2", "1.50", "007" as written (an empty cell: null)
            kwargs["converters"] = {c: _csv_cell for c in _csv_columns(path, kwargs.get("sep", ","))}
        ds = datasets.load_dataset(_HF_BUILDER[kind], data_files=[str(path)], split="train",
                                   streaming=True, **kwargs)
        n = 0
        for n, rec in enumerate(ds, start=1):
            yield n, rec
    except DataFormatError:
        raise
    except Exception as e:  # pyarrow / pandas parse errors: name the file and what the reader said
        what = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataFormatError(
            f"Data file {str(path)!r} cannot be read as {kind.upper() if kind == 'csv' else kind.title()}"
            f" ({what}). Check that the file is complete and really is {kind} (its suffix decides the "
            f"reader); {_read_hint()}.") from None


def _plain(value: Any) -> Any:
    """An OmegaConf list/dict as plain Python (for messages)."""
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    except ImportError:
        return value


def _row_word_of(path: Path, text_files: bool) -> str:
    """How one file numbers its rows: ``line`` (JSONL), ``record`` (JSON), ``document``, ``row``."""
    kind = _suffix_kind(path) or "json"
    if kind == "json":
        return "line" if path.suffix.lower() == ".jsonl" else "record"
    if kind == "text":
        return "document" if text_files else "record"
    return "row"


def _csv_cell(cell: str) -> str | None:
    return cell if cell != "" else None


def _csv_columns(path: Path, sep: str) -> list[str]:
    """The header of a CSV/TSV file (pandas' reading of it, BOM and quoting included)."""
    import pandas as pd  # lazy: comes with datasets

    return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]


def _suffix_kind(path: Path) -> str | None:
    return READ_FORMATS.get(path.suffix.lower())


def _split_of(path: Path, root: Path) -> str | None:
    """The split a file's path names by the Hub's conventions (``train-0000.parquet``, ``test/``)."""
    rel = str(path.relative_to(root)).lower()
    for split, words in _SPLIT_WORDS.items():
        if any(re.search(rf"(^|[/_.\-]){w}([/_.\-]|$)", rel) for w in words):
            return split
    return None


def _data_files_in(root: Path, label: str, *, data_files: Sequence[str] | None, subset: str | None,
                   source_split: str, text_files: bool) -> list[Path]:
    """The data files of a directory (a Hub snapshot or a folder), by subset and split."""
    if data_files:
        files = sorted({Path(p) for pat in data_files for p in globlib.glob(str(root / pat), recursive=True)})
        if not files:
            raise DataSettingError(
                f"dataset.data_files={list(data_files)} matches no file in {label!r} ({str(root)!r}). "
                f"Patterns are relative to it, e.g. dataset.data_files='[data/train-*.parquet]'.")
        return [f for f in files if f.is_file()]
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and _suffix_kind(p) and p.name not in _METADATA
                        and not any(part.startswith(".") for part in p.relative_to(root).parts)
                        and (text_files or _suffix_kind(p) != "text"))
    if subset:
        inside = [p for p in candidates if subset in p.relative_to(root).parts[:-1]
                  or p.name.startswith(subset + "-") or p.name.startswith(subset + "_")]
        if not inside:
            subsets = sorted({p.relative_to(root).parts[0] for p in candidates if len(p.relative_to(root).parts) > 1})
            raise DataSettingError(
                f"dataset.subset={subset!r}: {label!r} has no subset of that name (folders: {subsets or 'none'}). "
                f"Set dataset.subset to one of them, or dataset.subset=null.")
        candidates = inside
    if not candidates:
        if label == str(root):  # a local directory (perhaps given by mistake for a file)
            raise DataFormatError(
                f"Data source {label!r} is a directory, not a file, and holds no data file ({_read_hint()}). "
                f"Set dataset.source to the path of a local .json, .jsonl, .csv or .parquet file (or a "
                f"directory that holds such files), or set dataset.data_files to the files' pattern.")
        raise DataFormatError(
            f"{label!r} ({str(root)!r}) holds no data file: {_read_hint()}. Point dataset.source at a "
            f"file, or set dataset.data_files to the files' pattern.")
    by_split: dict[str | None, list[Path]] = {}
    for p in candidates:
        by_split.setdefault(_split_of(p, root), []).append(p)
    named = sorted(s for s in by_split if s)
    if not named:
        if source_split != "train":
            raise DataSettingError(
                f"dataset.source_split={source_split!r}: no file of {label!r} names a split, so it holds "
                f"only 'train'. Set dataset.source_split=train (tunekit holds out dataset.val_fraction "
                f"for validation).")
        return candidates
    if source_split not in by_split:
        raise DataSettingError(
            f"dataset.source_split={source_split!r}: {label!r} has the splits {named}. Set "
            f"dataset.source_split to one of them.")
    return by_split[source_split]


#: Files of ``datasets.Dataset.save_to_disk`` / Hub repos that describe the data rather than hold it.
_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json", "dataset_infos.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a Hub data set repo, from the Hugging Face cache only (no network)."""
    from huggingface_hub import constants, snapshot_download

    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                                else constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True,
                                      cache_dir=cache))
    except Exception:
        rev = f" at revision {revision!r}" if revision else ""
        cached = sorted(d.name[len("datasets--"):].replace("--", "/", 1)
                        for d in Path(cache).glob("datasets--*--*") if d.is_dir())
        close = difflib.get_close_matches(repo_id, cached, n=3, cutoff=0.75)
        near = f" (cached data sets with a close name: {', '.join(close)})" if close else ""
        if repo_id in cached:  # cached, but not at the revision asked for
            repo = Path(cache) / ("datasets--" + repo_id.replace("/", "--"))
            have = sorted(p.name for p in (repo / "refs").glob("*") if p.is_file()) \
                + sorted(p.name[:12] for p in (repo / "snapshots").glob("*") if p.is_dir())
            near = f" ({repo_id} is cached at {', '.join(have) or 'no revision'}: set dataset.revision to one of them)"
        fetch = f"download {repo_id} --repo-type dataset" + (f" --revision {revision}" if revision else "")
        raise DataFormatError(
            f"dataset.source={repo_id!r} is neither a local file or directory nor a data set{rev} in "
            f"the local Hugging Face cache ({cache}){near}. Fetch it once with `tunekit "
            f"{fetch}` (then it is read offline), or point "
            f"dataset.source at a local file: {_read_hint()}.") from None


def load_rows(source: str | os.PathLike[str], *, data_files: str | Sequence[str] | None = None,
              subset: str | None = None, source_split: str = "train", revision: str | None = None,
              column_map: Mapping[str, str] | None = None, text_files: bool = False,
              streaming: bool = False) -> RowSource:
    """Resolve ``source`` to its data files (nothing is read yet but what resolving needs).

    Args:
        source: a file (``.json``, ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``, ``.arrow``,
            ``.txt``), a directory or a glob of them, a bundled name (``alpaca_tiny``), or a Hub
            data set id (``owner/name``) read from the local Hugging Face cache.
        data_files: patterns inside a directory / Hub snapshot (``data/train-*.parquet``).
        subset: a Hub subset (configuration): its folder or file-name prefix.
        source_split: the split of a directory / Hub data set to read (by its file names:
            ``train``, ``validation``, ``test``).
        revision: Hub branch, tag or commit (of the cached snapshot).
        column_map: format field -> your column, e.g. ``{"instruction": "question"}``.
        text_files: read ``.txt`` as raw text (``format=text``), one document per file.
        streaming: read JSONL line by line (a ``.json`` list is parsed whole; CSV, Parquet and
            Arrow are always read in batches).

    Returns:
        A :class:`RowSource`; ``iter(it)`` yields ``(row, record)``; ``check_columns`` refuses a
        missing column in one paragraph.

    Raises:
        DataFormatError / DataSettingError: one paragraph naming the source and the fix.
    """
    if column_map is not None and not isinstance(column_map, Mapping):
        raise DataSettingError(
            f"dataset.column_map={_plain(column_map)!r} must map the format's fields to your columns (FIELD: "
            f"COLUMN), e.g. dataset.column_map='{{instruction: question, output: answer}}', not a "
            f"{type(_plain(column_map)).__name__}.")
    cmap = {str(k): str(v) for k, v in (column_map or {}).items()}
    patterns = [data_files] if isinstance(data_files, str) else list(data_files or [])
    text = str(source)
    p = Path(text).expanduser()
    if p.is_file():
        files, label = [p], str(p)
    elif p.is_dir():
        files, label = _data_files_in(p, str(p), data_files=patterns, subset=subset, source_split=source_split,
                                      text_files=text_files), str(p)
    elif any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise DataFormatError(
                f"dataset.source={text!r} matches no file. Check the pattern (it is relative to the "
                f"directory you run from; `**` matches folders), or give the file itself.")
        label = text
    elif text in BUNDLED_DATA:
        files, label = [BUNDLED_DATA[text]], str(BUNDLED_DATA[text])
    elif _REPO_ID.match(text) and "/" in text and not text.startswith((".", "/", "~")):
        root = _hub_snapshot(text, revision)
        files = _data_files_in(root, text, data_files=patterns, subset=subset, source_split=source_split,
                               text_files=text_files)
        label = text
    else:
        raise FileNotFoundError(
            f"Data file {str(p)!r} does not exist. Set dataset.source to a local file, directory or "
            f"glob ({_read_hint()}), to a cached Hub data set id (owner/name), or to a bundled data "
            f"set: {', '.join(sorted(BUNDLED_DATA))}.")
    word = _row_word_of(files[0], text_files)
    if len(files) > 1:
        word = "document" if text_files and all(_suffix_kind(f) == "text" for f in files) else "row"
    return RowSource(label=label, files=files, row_word=word, column_map=cmap, text_files=text_files,
                     streaming=streaming)
