"""Reading local JSON / JSONL records, bundled data names, and the train/validation split."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Directory of the bundled data sets.
ASSETS_DATA_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "data"
#: Bundled data sets by name; ``source="alpaca_tiny"`` is the same as the file's path.
BUNDLED_DATA = {
    "alpaca_tiny": ASSETS_DATA_DIR / "alpaca_tiny.json",
    "chat_tiny": ASSETS_DATA_DIR / "chat_tiny.jsonl",
}
#: Directory of the bundled plain-English text (for pre-training the tiny model).
ASSETS_TEXT_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "text"

SPLITS = ("train", "validation", "all")
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


class DataFormatError(ValueError):
    """A data file or one of its rows is not in the expected format.

    ``str(err)`` is one user-facing paragraph naming the file, the row (``record N`` of a JSON
    list, ``line N`` of a JSONL file) and the fix. Every user-caused data error is one of these
    (recipes print it without a traceback).
    """


class DataSettingError(DataFormatError):
    """A data-set setting (template, split, val_fraction, max_seq_len) cannot work with the data."""


def bundled_text_files() -> list[Path]:
    """The bundled text corpus files, sorted by name."""
    return sorted(ASSETS_TEXT_DIR.glob("*.txt"))


def resolve_source(source: str | Path) -> Path:
    """A data file path; a bundled name (``"alpaca_tiny"``, ``"chat_tiny"``) maps to its file."""
    p = Path(source).expanduser()
    if p.is_file():
        return p
    if str(source) in BUNDLED_DATA:
        return BUNDLED_DATA[str(source)]
    what = "is a directory, not a file" if p.is_dir() else "does not exist"
    raise FileNotFoundError(
        f"Data file {str(p)!r} {what}. Set dataset.source to the path of a local .json (a list "
        f"of records) or .jsonl (one record per line) file, or to a bundled data set: "
        f"{', '.join(sorted(BUNDLED_DATA))}."
    )


#: File suffixes the JSON reader accepts (anything else is sniffed, and refused when it is
#: recognisably another format).
READ_SUFFIXES = (".json", ".jsonl")
#: Formats people often hand a JSON loader, by suffix, with the words the message uses.
_OTHER_FORMATS = {
    ".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".pq": "Parquet", ".arrow": "Arrow",
    ".feather": "Feather", ".xlsx": "Excel", ".xls": "Excel", ".txt": "plain text",
    ".gz": "gzip-compressed", ".zip": "zip", ".zst": "zstd-compressed", ".bz2": "bzip2-compressed",
}
_MAGIC = ((b"PAR1", "Parquet"), (b"ARROW1", "Arrow"), (b"\x1f\x8b", "gzip-compressed"),
          (b"PK\x03\x04", "zip"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"), (b"BZh", "bzip2-compressed"))
_CONVERT_HINT = (
    "tunekit reads .json (a list of records), .jsonl, .csv, .tsv, .parquet and .arrow files (and .txt "
    "as raw text with dataset=text); convert it first, e.g. with pandas: `pandas.read_{reader}(path)"
    ".to_parquet('data.parquet')`, then pass `dataset.source=data.parquet`."
)
#: Formats the loader reads under their own suffix (a file of that kind under another name).
_SUFFIX_OF = {"CSV": ".csv", "TSV": ".tsv", "Parquet": ".parquet", "Arrow": ".arrow"}


def _magic_format(head: bytes) -> str | None:
    """The name of a binary format the file's first bytes announce, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _other_format(path: Path, head: bytes) -> str | None:
    """The name of a non-JSON format the file recognisably is (by content, then suffix), or None."""
    if path.suffix.lower() in (".xlsx", ".xls"):  # a zip (or OLE) container by content: say Excel
        return "Excel"
    return _magic_format(head) or _OTHER_FORMATS.get(path.suffix.lower())


def _refuse_other_format(path: Path, fmt: str) -> DataFormatError:
    reader = {"Feather": "feather", "Excel": "excel"}.get(fmt, "json")
    what = f"a {fmt} file" if fmt not in ("zip",) else "a zip archive"
    if fmt == "plain text":
        return DataFormatError(
            f"Data file {str(path)!r} looks like plain text, not JSON. For raw text (continued "
            f"pre-training) use dataset=text; for records, " + _CONVERT_HINT.format(reader="json")
        )
    if fmt in _SUFFIX_OF:
        return DataFormatError(
            f"Data file {str(path)!r} is {what}, but its name ends in {path.suffix or '(no suffix)'!r}, "
            f"and the suffix decides the reader. Rename it to {path.stem}{_SUFFIX_OF[fmt]} (tunekit reads "
            f"{fmt} files) and point dataset.source at the new name."
        )
    if reader == "json":  # compressed: say so and ask for the uncompressed file
        return DataFormatError(
            f"Data file {str(path)!r} is {what}, which the data loader does not read. Decompress "
            f"it and pass the file inside: tunekit reads .json (a list of records), .jsonl, .csv, "
            f".tsv, .parquet and .arrow files."
        )
    return DataFormatError(
        f"Data file {str(path)!r} is {what}, which the data loader does not read. "
        + _CONVERT_HINT.format(reader=reader)
    )


def _decode_utf8(path: Path, raw: bytes) -> str:
    """The file's text; a UTF-8 BOM is accepted, anything that is not UTF-8 is refused."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(
            f"Data file {str(path)!r} is UTF-16 encoded (it starts with a UTF-16 byte-order mark); "
            f"tunekit reads UTF-8. Re-encode it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 "
            f"{path.name} > {path.stem}.utf8{path.suffix}`, and point dataset.source at the new file."
        )
    if b"\x00" in raw[:8192]:  # text never holds NUL bytes: weights, an archive, a database
        kind = "a safetensors weight file" if raw[8:9] == b"{" and b'"dtype"' in raw[:8192] else "a binary file"
        raise DataFormatError(
            f"Data file {str(path)!r} is {kind}, not text: a data set is a UTF-8 .json (a list of records) "
            f"or .jsonl (one record per line) file. Point dataset.source at the data file (was the path of "
            f"another file given by mistake?)."
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start
        line = raw.count(b"\n", 0, start) + 1
        col = start - (raw.rfind(b"\n", 0, start) + 1) + 1
        bad = raw[start:start + 4].hex(" ")
        raise DataFormatError(
            f"Data file {str(path)!r} is not valid UTF-8: byte offset {start} (line {line}, column "
            f"{col}) holds the bytes {bad} ({e.reason}). tunekit reads UTF-8 text; re-encode the "
            f"file as UTF-8 (e.g. `iconv -f CP1252 -t UTF-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}` if it came from Windows/Excel, or `-f LATIN1`), and "
            f"point dataset.source at the new file."
        ) from None


def load_records(path: Path) -> tuple[list[tuple[int, Any]], str]:
    """Read records from a JSON list or a JSONL file.

    Returns:
        (rows, row_word): ``rows`` is ``[(row number, record), ...]`` and ``row_word`` says how
        rows are numbered in errors, ``"line"`` for JSONL (1-based line numbers, blank lines
        skipped) or ``"record"`` for a JSON list (1-based position).

    Raises:
        DataFormatError: the file is empty, not UTF-8, another format (CSV, Parquet, ...),
            not JSON, or not a list of records; the message names the file and where.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFormatError(
            f"Data file {str(path)!r} cannot be read ({e.strerror or e}). Check its permissions, "
            f"or point dataset.source at a readable .json / .jsonl file."
        ) from None
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES and (fmt := _other_format(path, raw[:8])) is not None:
        if fmt != "plain text" or raw.lstrip()[:1] not in (b"[", b"{"):
            raise _refuse_other_format(path, fmt)
    elif (fmt := _magic_format(raw[:8])) is not None:
        raise _refuse_other_format(path, fmt)  # e.g. a Parquet file saved as data.json
    text = _decode_utf8(path, raw)
    if not text.strip():
        what = "is empty (0 bytes)" if not raw else "holds only whitespace"
        raise DataFormatError(
            f"Data file {str(path)!r} {what}: there are no records to train on. Point "
            f"dataset.source at the data file itself (a .json list of records or a .jsonl file "
            f"with one record per line); if it was written by a script, check that the script "
            f"finished."
        )
    if suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data" and text.lstrip().startswith("["):
                raise DataFormatError(
                    f"Data file {str(path)!r} is not valid JSON: its list of records is followed by "
                    f"more text at line {e.lineno}, column {e.colno}. Remove what follows the "
                    f"closing ']' (or merge it into the list)."
                ) from None
            if e.msg != "Extra data":  # "Extra data" means several documents: JSONL after all
                raise DataFormatError(
                    f"Data file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, "
                    f"column {e.colno}. Fix that spot; the file must hold a JSON list of records "
                    f"([{{...}}, {{...}}]), or one JSON object per line in a .jsonl file."
                ) from None
        else:
            if isinstance(data, dict):
                lists = [k for k, v in data.items() if isinstance(v, list)]
                inner = (f" Its key {lists[0]!r} holds a list: save that list alone as the file."
                         if len(lists) == 1 else "")
                raise DataFormatError(
                    f"Data file {str(path)!r} holds a single JSON object (keys: "
                    f"{sorted(data)[:8]}), not a list of records.{inner} Expected a JSON list of "
                    f"records ([{{...}}, {{...}}]), or one record per line in a .jsonl file."
                )
            if not isinstance(data, list):
                raise DataFormatError(
                    f"Data file {str(path)!r} holds a JSON {_json_type(data)}, not a list of "
                    f"records. Expected a JSON list of records ([{{...}}, {{...}}]), or one record "
                    f"per line in a .jsonl file."
                )
            return [(i + 1, r) for i, r in enumerate(data)], "record"
    rows = []
    bad: list[tuple[int, str]] = []
    # split on "\n" only: str.splitlines() would also split inside strings holding U+2028 etc.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append((lineno, f"not valid JSON ({e.msg} at column {e.colno}: "
                                f"{_excerpt(line, e.colno)})"))
    if bad and bad[0][0] == 1 and text.lstrip().startswith("["):
        try:  # a pretty-printed JSON list saved as .jsonl: every line "bad", but the file is fine as .json
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list):
            raise DataFormatError(
                f"Data file {str(path)!r} holds one JSON list of {len(whole)} records spread over several lines, "
                f"not JSON Lines (one record per line): rename it to {path.stem}.json (a .json file is read as a "
                f"list of records), or write one record per line.")
    if bad:
        head = "; ".join(f"line {n}: {msg}" for n, msg in bad[:5])
        more = f" ({len(bad) - 5} more lines are bad)" if len(bad) > 5 else ""
        where = (f", {head}" if len(bad) == 1 else
                 f" has {len(bad)} lines that are not valid JSON (of {len(rows) + len(bad)}): {head}{more}")
        raise DataFormatError(
            f"Data file {str(path)!r}{where}. A .jsonl file needs one complete JSON object per "
            f"line (no line breaks inside a record, no trailing commas); fix or delete "
            f"{'that line' if len(bad) == 1 else 'those lines'}."
        )
    return rows, "line"


def _json_type(value: Any) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def describe_value(value: Any, width: int = 30) -> str:
    """A JSON value for a message: ``the number 5``, ``the string 'abc'``, ``a list``."""
    kind = _json_type(value)
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return f"an object with keys {sorted(map(str, value))[:6]}"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > width:
        text = text[: width - 3] + "..."
    return f"the {kind} {text}" if kind != "null" else "null"


def _excerpt(line: str, col: int, width: int = 40) -> str:
    """A short quote of ``line`` around 1-based column ``col``."""
    start = max(0, col - 1 - width // 2)
    piece = line[start:start + width]
    return ("..." if start else "") + repr(piece)[1:-1] + ("..." if start + width < len(line) else "")


def normalize_split(split: str) -> str:
    """``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``."""
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise DataSettingError(
            f"split={split!r} is not one of 'train', 'validation' (or 'val'), 'all'.")
    return s


def check_val_fraction(val_fraction: Any) -> float:
    """``val_fraction`` as a float in [0, 1), else a one-paragraph error naming the key."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise DataSettingError(
            f"dataset.val_fraction={val_fraction!r} must be a number in [0, 1): the share of rows "
            f"held out for validation (0.1 holds out 10%; 0 trains on every row and skips "
            f"validation)."
        )
    return float(val_fraction)


def split_indices(n: int, split: str, val_fraction: float, seed: int, source: Path,
                  row_word: str = "row") -> list[int]:
    """Deterministic train/validation partition of ``range(n)``, each part in file order.

    The validation part is ``round(n * val_fraction)`` rows (at least one when
    ``val_fraction > 0``) drawn with ``random.Random(seed)``; the training part is the rest.

    Raises:
        DataSettingError: ``val_fraction`` leaves one of the two parts empty.
    """
    val_fraction = check_val_fraction(val_fraction)
    split = normalize_split(split)
    if split == "all":
        return list(range(n))
    n_val = 0 if val_fraction == 0 else max(1, round(n * val_fraction))
    if split == "validation" and n_val == 0:
        raise DataSettingError(
            f"A validation split was asked of {str(source)!r} but dataset.val_fraction=0 leaves "
            f"no validation set; set dataset.val_fraction above 0 (e.g. 0.1)."
        )
    if n_val >= n:
        rows = f"{n} {row_word}{'s' if n != 1 else ''}"
        raise DataSettingError(
            f"Data file {str(source)!r} has only {rows}: dataset.val_fraction={val_fraction} "
            f"holds out {n_val} for validation, which leaves nothing for training. Set "
            f"dataset.val_fraction=0 to train on every row without validation, or add rows "
            f"(at least {n_val + 1} for this val_fraction"
            f"{'; a text file is one document: split it into several .txt files' if row_word == 'document' else ''})."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    if split == "validation":
        return sorted(val)
    return [i for i in range(n) if i not in val]


def format_problems(path: Path, row_word: str, problems: list[tuple[int, str]], total: int, *,
                    rowsource: Any = None) -> str:
    """One paragraph naming the file and the first few bad rows.

    With ``rowsource`` (a :class:`tunekit.data.sources.RowSource`), each row also names the file
    of a directory / glob that holds it, and a mapped field names the user's column.
    """
    if rowsource is not None:
        head = "; ".join(f"{rowsource.row_label(row)}: {rowsource.explain(msg)}" for row, msg in problems[:5])
    else:
        head = "; ".join(f"{row_word} {row}: {msg}" for row, msg in problems[:5])
    more = f" ({len(problems) - 5} more {row_word}s have problems)" if len(problems) > 5 else ""
    what = "Data set" if rowsource is not None and len(rowsource.files) > 1 else "Data file"
    return f"{what} {str(path)!r} has {len(problems)} malformed row(s) of {total}: {head}{more}."
