"""data_report(): what truncation leaves to learn, counted before training, and its messages."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tunekit.data import (
    ChatDataset,
    DataReport,
    InstructDataset,
    PackedDataset,
    data_report,
    padded_collate,
)
from tunekit.tokenizers import SentencePieceTokenizer, tiny_tokenizer

IGN = -100
LONG = "Describe, in full detail, every part of the long and winding road to the old mill. " * 6


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def _targets(ds) -> int:
    return sum(sum(lab != IGN for lab in ds[i]["labels"]) for i in range(len(ds)))


def _full_lengths(tok, path: Path, **kw) -> list[int]:
    """Untruncated sample lengths (max_seq_len large enough for everything)."""
    ds = InstructDataset(tok, path, split="all", max_seq_len=100_000, **kw)
    return [len(ds[i]["tokens"]) for i in range(len(ds))]


def test_report_of_untruncated_data(tok, tmp_path: Path) -> None:
    p = _write(tmp_path / "d.json", [{"instruction": f"Say {i}.", "output": f"{i} it is."} for i in range(10)])
    ds = InstructDataset(tok, p, split="all")
    r = data_report(ds)
    assert isinstance(r, DataReport)
    assert (r.samples, r.truncated, r.dropped) == (10, 0, 0)
    assert r.target_tokens == _targets(ds) > 0
    assert r.total_tokens == sum(len(ds[i]["tokens"]) for i in range(len(ds)))
    assert r.max_seq_len == 512
    # Whole sample = up to its last target position; the final EOS is only ever an input.
    assert r.len_for_95pct == max(_full_lengths(tok, p)) - 1
    assert r.problems() == [] and r.warnings() == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.samples = 3  # type: ignore[misc]


def test_every_response_cut_away_is_refused_with_numbers_and_fix(tok, tmp_path: Path) -> None:
    p = _write(tmp_path / "long.json", [{"instruction": LONG + str(i), "output": "Yes."} for i in range(6)])
    full = _full_lengths(tok, p)
    ds = InstructDataset(tok, p, split="all", max_seq_len=32)
    assert len(ds) == 0 and ds.dropped_rows == [1, 2, 3, 4, 5, 6]  # nothing trains on zero targets
    r = data_report(ds)
    assert (r.samples, r.truncated, r.dropped, r.target_tokens, r.total_tokens) == (6, 6, 6, 0, 0)
    assert r.len_for_95pct == max(full) - 1
    [msg] = r.problems()
    assert "\n" not in msg
    for words in ("Nothing to learn", "all 6 samples", str(p), "max_seq_len=32",
                  "0 target tokens", f"max_seq_len={r.len_for_95pct}", "95%"):
        assert words in msg, (words, msg)
    assert r.warnings() == []  # the refusal says it all


def test_partly_truncated_data_warns_and_drops_only_empty_samples(tok, tmp_path: Path) -> None:
    short = [{"instruction": f"Say {i}.", "output": "Fine."} for i in range(6)]
    cut = [{"instruction": "Tell a story.", "output": LONG}] * 2  # response cut, some kept
    gone = [{"instruction": LONG, "output": "Yes."}] * 2           # prompt alone too long
    p = _write(tmp_path / "mix.json", short + cut + gone)
    ds = InstructDataset(tok, p, split="all", max_seq_len=128)  # the Alpaca prompt is ~95 tokens here
    assert ds.rows == list(range(1, 9)) and ds.dropped_rows == [9, 10]
    r = data_report(ds)
    assert (r.samples, r.truncated, r.dropped) == (10, 4, 2)
    assert r.target_tokens == _targets(ds) > 0
    assert r.total_tokens == sum(len(ds[i]["tokens"]) for i in range(len(ds)))
    assert r.dropped_rows == (9, 10) and r.row_word == "record"
    assert r.problems() == []
    [msg] = r.warnings()
    for words in ("4 of the 10 samples", "40%", "max_seq_len=128", "2 of them", "records 9, 10",
                  f"max_seq_len={r.len_for_95pct}"):
        assert words in msg, (words, msg)


def test_few_truncated_samples_do_not_warn_but_dropped_ones_are_named(tok, tmp_path: Path) -> None:
    ok = [{"instruction": f"Say {i}.", "output": "Fine."} for i in range(9)]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ok + [{"instruction": LONG, "output": "x"}]))
    r = data_report(InstructDataset(tok, p, split="all", max_seq_len=128))
    assert (r.samples, r.truncated, r.dropped) == (10, 1, 1)  # 10% < 20%
    [msg] = r.warnings()
    assert "1 of the 10 samples" in msg and "line 10" in msg and "dropped" in msg


def test_len_for_95pct_is_the_95th_percentile(tok, tmp_path: Path) -> None:
    recs = [{"instruction": "Go.", "output": "word " * (i + 1)} for i in range(40)]
    p = _write(tmp_path / "d.json", recs)
    needed = sorted(n - 1 for n in _full_lengths(tok, p))
    r = data_report(InstructDataset(tok, p, split="all", max_seq_len=120))
    assert r.len_for_95pct == needed[37]  # ceil(0.95 * 40) = 38th smallest
    kept_whole = sum(n <= r.len_for_95pct for n in needed)
    assert kept_whole >= 38 and sum(n <= r.len_for_95pct - 1 for n in needed) < 38
    assert 0 < r.truncated == sum(n > 120 for n in needed) < 40


def test_train_on_input_counts_prompt_targets(tok, tmp_path: Path) -> None:
    p = _write(tmp_path / "long.json", [{"instruction": LONG, "output": "Yes."}])
    r = data_report(InstructDataset(tok, p, split="all", max_seq_len=32, train_on_input=True))
    # Every position but none is a target: BOS is read, never predicted; position 0 predicts
    # token 1, and the cut keeps the true next token as the last position's label.
    assert (r.dropped, r.target_tokens, r.total_tokens) == (0, 32, 32)
    assert r.truncated == 1 and r.problems() == []


def test_validation_split_is_reported_with_its_source(tok, tmp_path: Path) -> None:
    p = _write(tmp_path / "d.json", [{"instruction": LONG, "output": "Yes."}] * 10)
    r = data_report(InstructDataset(tok, p, split="validation", val_fraction=0.2, max_seq_len=32))
    assert r.samples == 2 and r.dropped == 2
    [msg] = r.problems()
    assert str(p) in msg and "validation split" in msg


def test_chat_dataset_report(tok, tmp_path: Path) -> None:
    conv = {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Sure."}]}
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(ok) + "\n" + json.dumps(conv) + "\n")
    ds = ChatDataset(tok, p, split="all", max_seq_len=40)
    assert len(ds) == 1 and ds.rows == [1] and ds.dropped_rows == [2]
    r = data_report(ds)
    assert (r.samples, r.truncated, r.dropped) == (2, 1, 1) and r.target_tokens == _targets(ds)
    assert "line 2" in r.warnings()[0]
    # The later turn of a multi-turn chat still trains when only the first reply survives.
    multi = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": LONG}, {"role": "assistant", "content": "Ok."}]}
    p.write_text(json.dumps(multi) + "\n")
    r = data_report(ChatDataset(tok, p, split="all", max_seq_len=40))
    assert (r.samples, r.truncated, r.dropped) == (1, 1, 0) and r.target_tokens > 0


def test_packed_report_uses_the_shorter_length(tok, tmp_path: Path) -> None:
    p = _write(tmp_path / "d.json", [{"instruction": f"Say the number {i} twice.", "output": f"{i} {i}."}
                                     for i in range(8)])
    inner = InstructDataset(tok, p, split="all", max_seq_len=512)
    packed = PackedDataset(inner, 8, pad_id=tok.pad_id)
    # Every prompt is longer than 8 tokens: nothing to learn, and nothing packed.
    assert len(packed) == 0 and packed.dropped == list(range(8))
    r = data_report(packed)
    assert (r.samples, r.truncated, r.dropped, r.target_tokens, r.max_seq_len) == (8, 8, 8, 0, 8)
    assert "max_seq_len=8" in r.problems()[0]
    # The same length on both sides (what the recipes do): the inner set drops them first.
    inner8 = InstructDataset(tok, p, split="all", max_seq_len=8)
    assert len(inner8) == 0 and data_report(PackedDataset(inner8, 8)) == r
    # Long enough: the report counts the real samples, not the packs.
    packed = PackedDataset(inner, 128, pad_id=tok.pad_id)
    r = data_report(packed)
    assert (r.samples, r.dropped) == (8, 0)
    assert r.target_tokens == sum(sum(lab != IGN for lab in pk["labels"]) for pk in packed.packs)


def test_generic_dataset_of_samples(tok) -> None:
    samples = [{"tokens": [1, 5, 6, 2], "labels": [IGN, 6, 2, IGN]},
               {"tokens": [1, 7], "labels": [IGN, IGN]}]
    r = data_report(samples)
    assert (r.samples, r.truncated, r.dropped, r.target_tokens, r.total_tokens) == (2, 0, 1, 2, 4)
    assert r.row_word == "sample" and r.dropped_rows == (1,)
    assert data_report([]).problems()[0].startswith("The data set holds no samples")


def test_kept_samples_are_unchanged_by_compact_storage(tok, tmp_path: Path) -> None:
    """A sample read back equals build_sample() of its tokenization, truncated or not."""
    from tunekit.data.datasets import build_sample
    from tunekit.data.templates import tokenize_alpaca

    recs = [{"instruction": "Tell a story.", "output": LONG}, {"instruction": "Hi.", "output": "Yo."}]
    p = _write(tmp_path / "d.json", recs)
    for max_len in (99, 150, 512):
        ds = InstructDataset(tok, p, split="all", max_seq_len=max_len)
        assert len(ds) == 2
        for i, rec in enumerate(recs):
            want = build_sample(*tokenize_alpaca(tok, rec["instruction"], "", rec["output"]), max_len)
            assert ds[i] == want
        batch = padded_collate([ds[i] for i in range(len(ds))], pad_id=tok.pad_id)
        assert (batch["labels"] != IGN).sum().item() == data_report(ds).target_tokens
