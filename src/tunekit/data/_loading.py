"""Reading local JSON / JSONL records, bundled data names, and the train/validation split."""

from __future__ import annotations

import json
import random
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
    """A data file or one of its rows is not in the expected format."""


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
        f"Data file {str(p)!r} {what}. Give the path of a local .json (a list of records) or "
        f".jsonl (one record per line) file, or a bundled data set: {', '.join(sorted(BUNDLED_DATA))}."
    )


def load_records(path: Path) -> tuple[list[Any], str]:
    """Read records from a JSON list or a JSONL file.

    Returns:
        (records, row_word): ``row_word`` says how rows are numbered in errors, ``"line"`` for
        JSONL (1-based line numbers, blank lines skipped) or ``"record"`` for a JSON list
        (1-based position).
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data" means several documents: JSONL after all
                raise DataFormatError(
                    f"Data file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, "
                    f"column {e.colno}. Expected a list of records, or one record per line in a .jsonl file."
                ) from None
        else:
            if isinstance(data, dict):
                raise DataFormatError(
                    f"Data file {str(path)!r} holds a single JSON object (keys: "
                    f"{sorted(data)[:8]}); expected a list of records, or one record per line "
                    f"in a .jsonl file."
                )
            if not isinstance(data, list):
                raise DataFormatError(
                    f"Data file {str(path)!r} holds a JSON {type(data).__name__}; expected a list of records."
                )
            return [(i + 1, r) for i, r in enumerate(data)], "record"
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"Data file {str(path)!r}, line {lineno}: not valid JSON ({e.msg} at column "
                f"{e.colno}). A .jsonl file needs one JSON object per line."
            ) from None
    return rows, "line"


def normalize_split(split: str) -> str:
    """``"train"``, ``"validation"`` (alias ``"val"``) or ``"all"``."""
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"split={split!r} is not one of 'train', 'validation' (or 'val'), 'all'.")
    return s


def split_indices(n: int, split: str, val_fraction: float, seed: int, source: Path) -> list[int]:
    """Deterministic train/validation partition of ``range(n)``, each part in file order.

    The validation part is ``round(n * val_fraction)`` rows (at least one when
    ``val_fraction > 0``) drawn with ``random.Random(seed)``; the training part is the rest.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1).")
    split = normalize_split(split)
    if split == "all":
        return list(range(n))
    n_val = 0 if val_fraction == 0 else max(1, round(n * val_fraction))
    if split == "validation" and n_val == 0:
        raise ValueError(
            f"split='validation' was asked of {str(source)!r} but val_fraction=0 leaves no "
            f"validation set; set val_fraction > 0."
        )
    if n_val >= n:
        raise ValueError(
            f"{str(source)!r} has {n} rows: val_fraction={val_fraction} would leave no training rows."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    if split == "validation":
        return sorted(val)
    return [i for i in range(n) if i not in val]


def format_problems(path: Path, row_word: str, problems: list[tuple[int, str]], total: int) -> str:
    """One paragraph naming the file and the first few bad rows."""
    head = "; ".join(f"{row_word} {row}: {msg}" for row, msg in problems[:5])
    more = f" ({len(problems) - 5} more rows have problems)" if len(problems) > 5 else ""
    return f"Data file {str(path)!r} has {len(problems)} malformed row(s) of {total}: {head}{more}."
