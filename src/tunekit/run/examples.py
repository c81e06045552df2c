"""Before/after examples: the model's greedy answers on held-out rows, and their exact-match counts.

A fine-tuning recipe with ``examples.show`` or ``examples.score`` > 0 answers the first rows of the
validation split (rows it never trains on) with greedy decoding (``tunekit.generation``) once
before training and once after, then prints the first ``examples.show`` of them (prompt, answer
before, answer after, expected) and, over the first ``examples.score`` rows, how many answers
equal the expected one exactly. Everything also goes to ``examples.json`` in the run directory.

It works on any data set whose samples are ``{"tokens", "labels"}`` with shifted labels
(``InstructDataset``, ``ChatDataset``): the prompt is what precedes the first target token, the
expected answer the targets up to the first end-of-sequence token (the first reply of a
conversation). Exact match is meaningful for tasks with one right answer (the bundled
``sort_letters`` task); on free-form data the printed examples are still a quick look.

Usage (what the recipes do)::

    probe = ExampleProbe.create(val_ds, tokenizer, show=4, score=64, max_new_tokens=16)
    probe.record_before(model, label="base")
    ... train ...
    probe.finish(model, output_dir)   # prints the table and the counts, writes examples.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tunekit.data import CROSS_ENTROPY_IGNORE_IDX
from tunekit.generation import TokenGenerator

__all__ = ["ExampleProbe", "HeldOutExample", "exact_match", "greedy_answers", "held_out_examples"]

#: Rows decoded together (prompts of one length share a batch).
_MAX_BATCH = 64
#: A prompt is shown in full up to this many characters, else its end.
_PROMPT_WIDTH = 72


@dataclass(frozen=True)
class HeldOutExample:
    """One held-out row: where it comes from, the prompt tokens and the expected answer."""

    row: int | None
    prompt: list[int]
    expected: str
    prompt_text: str


def _stop_ids(tokenizer: Any) -> list[int]:
    ids = getattr(tokenizer, "stop_ids", None)
    return sorted({int(i) for i in ids}) if ids else [int(tokenizer.eos_id)]


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PROMPT_WIDTH else "..." + flat[-(_PROMPT_WIDTH - 3):]


def held_out_examples(dataset: Any, tokenizer: Any, n: int) -> list[HeldOutExample]:
    """The first ``n`` samples of ``dataset`` whose first answer is complete, as examples.

    A sample whose first answer was cut by ``max_seq_len`` (no end-of-sequence token among its
    targets) is skipped: its expected text would be a fragment.
    """
    stops = set(_stop_ids(tokenizer))
    rows = getattr(dataset, "rows", None)
    out: list[HeldOutExample] = []
    for i in range(len(dataset)):
        if len(out) >= n:
            break
        sample = dataset[i]
        tokens, labels = list(sample["tokens"]), list(sample["labels"])
        first = next((j for j, t in enumerate(labels) if t != CROSS_ENTROPY_IGNORE_IDX), None)
        if first is None:
            continue
        answer: list[int] = []
        complete = False
        for t in labels[first:]:
            if t == CROSS_ENTROPY_IGNORE_IDX:
                break
            if t in stops:
                complete = True
                break
            answer.append(t)
        if not complete:
            continue
        prompt = tokens[: first + 1]
        out.append(HeldOutExample(row=None if rows is None else int(rows[i]), prompt=prompt,
                                  expected=tokenizer.decode(answer).strip(),
                                  prompt_text=_one_line(tokenizer.decode(prompt))))
    return out


def greedy_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                   max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, stripped), up to a stop token.

    Prompts of the same length are decoded as one batch (``TokenGenerator`` takes equal-length
    rows), so a task with a few prompt lengths costs a few batches.
    """
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    answers = [""] * len(prompts)
    stops = _stop_ids(tokenizer)
    with TokenGenerator(model) as gen:
        for _, idx in sorted(by_len.items()):
            for start in range(0, len(idx), _MAX_BATCH):
                chunk = idx[start:start + _MAX_BATCH]
                res = gen.generate([list(prompts[i]) for i in chunk], max_new_tokens=max_new_tokens,
                                   temperature=0.0, stop_tokens=stops, seed=0)
                for i, toks in zip(chunk, res.tokens):
                    answers[i] = tokenizer.decode(toks).strip()
    return answers


def exact_match(answers: Sequence[str], examples: Sequence[HeldOutExample]) -> int:
    """How many answers equal the expected text exactly (surrounding whitespace ignored)."""
    return sum(a.strip() == e.expected for a, e in zip(answers, examples))


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "0/0"


@dataclass
class ExampleProbe:
    """Held-out examples answered before and after training; see the module docstring."""

    tokenizer: Any
    examples: list[HeldOutExample]
    show: int
    score: int
    max_new_tokens: int
    before_label: str = "base"
    before: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, dataset: Any, tokenizer: Any, *, show: int, score: int,
               max_new_tokens: int) -> ExampleProbe:
        """Pick the first ``max(show, score)`` complete held-out rows of ``dataset``."""
        return cls(tokenizer=tokenizer, examples=held_out_examples(dataset, tokenizer, max(show, score)),
                   show=show, score=score, max_new_tokens=max_new_tokens)

    def answers(self, model: nn.Module) -> list[str]:
        """The model's greedy answers to every example."""
        return greedy_answers(model, self.tokenizer, [e.prompt for e in self.examples],
                              max_new_tokens=self.max_new_tokens)

    def record_before(self, model: nn.Module, *, label: str | None = None) -> None:
        """Answer the examples with the model as training receives it (``label`` names it)."""
        if label is not None:
            self.before_label = label
        self.before = self.answers(model)

    def summary(self, after: Sequence[str]) -> dict[str, Any]:
        """What ``examples.json`` holds: every row's answers and the exact-match counts."""
        n = min(self.score, len(self.examples))
        scored = self.examples[:n]
        return {
            "before_label": self.before_label,
            "exact_match": None if n == 0 else {
                "rows": n, "before": exact_match(self.before[:n], scored), "after": exact_match(after[:n], scored)},
            "examples": [{"row": e.row, "prompt": e.prompt_text, "expected": e.expected, "before": b, "after": a}
                         for e, b, a in zip(self.examples, self.before, after)],
        }

    def format(self, after: Sequence[str], *, after_label: str = "fine-tuned") -> str:
        """The printed table (first ``show`` rows) and the exact-match line."""
        width = max(len(self.before_label), len(after_label), len("expected")) + 1
        lines = [f"Held-out examples (validation rows this run never trained on), greedy decoding, "
                 f"{self.before_label} vs {after_label}:"]
        for e, b, a in list(zip(self.examples, self.before, after))[: self.show]:
            where = "" if e.row is None else f"row {e.row}: "
            lines.append(f"  {where}{e.prompt_text}")
            for name, text, judged in ((self.before_label, b, True), (after_label, a, True),
                                       ("expected", e.expected, False)):
                mark = ("  [right]" if text.strip() == e.expected else "  [wrong]") if judged else ""
                lines.append(f"    {(name + ':').ljust(width)} {json.dumps(text, ensure_ascii=False)}{mark}")
        stats = self.summary(after)["exact_match"]
        if stats is not None:
            n = stats["rows"]
            lines.append(f"Exact match on {n} held-out rows: {self.before_label} {_pct(stats['before'], n)}, "
                         f"{after_label} {_pct(stats['after'], n)}")
        if len(self.examples) < max(self.show, self.score):
            lines.append(f"(only {len(self.examples)} held-out rows with a complete answer were available)")
        return "\n".join(lines)

    def finish(self, model: nn.Module, output_dir: str | Path) -> dict[str, Any]:
        """Answer again with the trained model, print the table, write ``examples.json``."""
        after = self.answers(model)
        print(self.format(after), flush=True)
        record = self.summary(after)
        path = _free_name(Path(output_dir), "examples", ".json")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return record


def _free_name(directory: Path, stem: str, suffix: str) -> Path:
    """``stem.suffix``, or ``stem.N.suffix`` when a resumed run already wrote one (never overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    path, n = directory / f"{stem}{suffix}", 1
    while path.exists():
        path, n = directory / f"{stem}.{n}{suffix}", n + 1
    return path


def probe_for_run(examples_cfg: Any, val_ds: Any, tokenizer: Any, *, world_size: int,
                  resumed_at: int | None, rank: int = 0) -> ExampleProbe | None:
    """The recipes' entry: a probe when ``examples.show``/``score`` ask for one, else None.

    Prints why none is made when one was asked for but cannot run (no validation split, or
    several ranks: the sharded model is not decoded here).
    """
    show, score = int(examples_cfg.show), int(examples_cfg.score)
    if show == 0 and score == 0:
        return None
    why = None
    if val_ds is None:
        why = "the data set has no validation split (dataset.val_fraction=0)"
    elif world_size > 1:
        why = f"the model is sharded over {world_size} ranks; run `recipes.generate` on the checkpoint instead"
    if why is not None:
        if rank == 0:
            print(f"tunekit: note: examples.show/examples.score skipped: {why}.", file=sys.stderr, flush=True)
        return None
    probe = ExampleProbe.create(val_ds, tokenizer, show=show, score=score,
                                max_new_tokens=int(examples_cfg.max_new_tokens))
    probe.before_label = "base" if resumed_at is None else f"step {resumed_at}"
    return probe
