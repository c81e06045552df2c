"""Regenerate ``data/sort_letters.json``: the task of the embedded default run.

The task: "Sort the letters: d b a c" -> "a b c d". Three to five distinct letters, drawn from the
20 lowercase letters that the bundled tokenizer (``assets/tokenizer/tokenizer.model``) holds as one
``"▁x"`` piece each, so every letter is one token in the prompt and in the answer. The bundled
tiny base model (pre-trained on plain English text) cannot do it (0 of 64 held-out rows right);
the default LoRA run (507 steps on these rows) gets 63 of 64 right (see docs/recipes.md).

Every row is unique; the recipe's validation split (``dataset.val_fraction``) holds out rows whose
inputs training never sees, and the run's before/after examples come from there.

Pure standard library and deterministic: the same seed gives the same bytes. From the repo root::

    python src/tunekit/assets/build_sort_letters.py          # rewrite the file
    python src/tunekit/assets/build_sort_letters.py --check  # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

#: The letters with a one-token "▁x" piece in the bundled tokenizer (no j, k, q, v, x, z).
LETTERS = "abcdefghilmnoprstuwy"
INSTRUCTION = "Sort the letters: "
OUT = Path(__file__).resolve().parent / "data" / "sort_letters.json"


def records(n: int = 3000, *, seed: int = 0, min_len: int = 3, max_len: int = 5) -> list[dict[str, str]]:
    """``n`` unique rows ``{"instruction": "Sort the letters: d b a c", "output": "a b c d"}``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        letters = rng.sample(LETTERS, rng.randint(min_len, max_len))
        instruction = INSTRUCTION + " ".join(letters)
        if instruction in seen:
            continue
        seen.add(instruction)
        rows.append({"instruction": instruction, "output": " ".join(sorted(letters))})
    return rows


def render(rows: list[dict[str, str]]) -> str:
    """The file's text: a JSON list, one record per line (small diffs, easy to read)."""
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    text = render(records())
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from what this script writes'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
