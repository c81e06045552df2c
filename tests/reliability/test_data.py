"""Bad input, data class: data files, data-set settings and tokenizer files, through the real recipe.

Every case runs ``python -m recipes.lora_finetune`` as a user would, with a data set (or
tokenizer) that cannot work, and asserts exit status 1, no traceback, one paragraph that names
the file / row / key and says the fix, and that the user's files are byte-identical afterwards
(nothing is written next to them, no checkpoint is saved). The runs fail at data loading, before
any training step.

The nothing-to-learn cases go through ``tunekit.run.data.check_learnable`` (``data_report``
before training: refuse a data set with nothing to learn, warn about heavy truncation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability._harness import (
    assert_ok,
    assert_unchanged,
    assert_user_error,
    run_recipe,
    run_tunekit,
    snapshot,
)

# Each case stops at data loading; these keep any run that got further short.
FAST = ["epochs=1", "max_steps_per_epoch=2", "batch_size=4", "metric_logger.also_stdout=false"]

REC = {"instruction": "Name a colour.", "output": "Blue."}
CHAT_OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
LONG = "Describe, in full detail, every part of the long and winding road to the old mill. " * 6


def _records(n: int = 8) -> list[dict]:
    return [{"instruction": f"Name colour number {i}.", "output": f"Colour {i} is blue."} for i in range(n)]


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _run_with_data(tmp_path: Path, name: str, content: bytes, *overrides: str,
                   dataset: str = "alpaca") -> tuple[object, Path]:
    """Write the data file, run the recipe on it, check the data dir is untouched."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / name
    path.write_bytes(content)
    before = snapshot(data_dir)
    proc = run_recipe("lora_finetune", tmp_path / "run", f"dataset={dataset}",
                      f"dataset.source={path}", *FAST, *overrides)
    assert_unchanged(before, data_dir)
    return proc, path


def _no_checkpoint(run_dir: Path) -> None:
    saved = sorted(p.name for p in run_dir.glob("*") if p.name.startswith(("epoch_", "step_")))
    assert not saved, f"a refused run saved {saved}"


# ---------------------------------------------------------------------------- data files

NON_UTF8 = (b'[{"instruction": "Name a colour.", "output": "Blue."},\n'
            b' {"instruction": "Caf\xe9 au lait?", "output": "Yes."}]')  # Latin-1, not UTF-8
BAD_BYTE = NON_UTF8.index(b"\xe9")

CASES = {
    # id: (file name, content, extra overrides, dataset group, needles: file/row words AND the fix)
    "non_utf8_bytes": (
        "latin1.json", NON_UTF8,
        (), "alpaca", ["not valid UTF-8", f"byte offset {BAD_BYTE}", "line 2, column 22",
                       "e9", "re-encode the file as UTF-8", "iconv"]),
    "utf16_file": (
        "utf16.jsonl", _jsonl(_records(4)).decode().encode("utf-16"),
        (), "alpaca", ["UTF-16", "Re-encode it as UTF-8", "iconv"]),
    "one_row_with_validation": (
        "one.json", json.dumps([REC]).encode(),
        (), "alpaca", ["only 1 record", "dataset.val_fraction=0.1", "nothing for training",
                       "dataset.val_fraction=0", "add rows"]),
    "empty_file": (
        "empty.json", b"",
        (), "alpaca", ["is empty (0 bytes)", "no records", "dataset.source"]),
    "unknown_template": (
        "ok.json", json.dumps(_records()).encode(),
        ("dataset.template=vicuna",), "alpaca",
        ["dataset.template='vicuna'", "'alpaca', 'llama2_chat'", "dataset.template=alpaca"]),
    "json_list_of_numbers": (
        "numbers.json", b"[1, 2, 3]",
        (), "alpaca", ["3 malformed row(s) of 3", "record 1: expected an object with 'instruction' "
                       "and 'output', got the number 1", "string fields 'instruction' and 'output'"]),
    "row_missing_field": (
        "missing.json", json.dumps([REC, {"instruction": "Say hi."}, REC]).encode(),
        (), "alpaca", ["record 2: missing the field 'output'", "string fields 'instruction' and 'output'"]),
    "field_of_wrong_type": (
        "types.json", json.dumps([REC, {"instruction": "Add 40 and 2.", "output": 42}]).encode(),
        (), "alpaca", ["record 2: field 'output' must be a string, got the number 42",
                       "string fields 'instruction' and 'output'"]),
    "jsonl_one_bad_line": (
        "bad.jsonl", _jsonl(_records(3)) + b'{"instruction": "x", "output": "y",}\n' + _jsonl(_records(3)),
        (), "alpaca", ["line 4: not valid JSON", "column", "fix or delete that line"]),
    "chat_unknown_role": (
        "roles.jsonl", _jsonl([CHAT_OK, {"messages": [{"role": "user", "content": "Hi"},
                                                      {"role": "bot", "content": "Hello."}]}]),
        (), "chat", ["line 2: messages[1].role 'bot' is not a known role (write 'assistant')",
                     "'system', 'user', 'assistant'"]),
    "chat_empty_messages": (
        "empty_messages.jsonl", _jsonl([CHAT_OK, {"messages": []}, CHAT_OK]),
        (), "chat", ["line 2: 'messages' is empty", "ending with 'assistant'"]),
    "chat_no_assistant_turn": (
        "no_reply.jsonl", _jsonl([CHAT_OK, {"messages": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Hi"}]}]),
        (), "chat", ["line 2: 'messages' has no 'assistant' turn", "ending with 'assistant'"]),
    # CSV and Parquet are read now: a CSV whose columns are not the format's, a damaged Parquet file
    "csv_file": (
        "data.csv", b"question,answer\nName a colour.,Blue.\n",
        (), "alpaca", ["has no column 'instruction' or 'output'", "['question', 'answer']",
                       "dataset.column_map='{instruction: question, output: answer}'"]),
    "parquet_file": (
        "data.parquet", b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x00\x00PAR1",
        (), "alpaca", ["cannot be read as Parquet", "Check that the file is complete"]),
    # a weight file given as the data: it used to be "not valid UTF-8 ... re-encode it with iconv"
    "safetensors_given_as_data": (
        "model.json", (40).to_bytes(8, "little") + b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        + b"\x00" * 4,
        (), "alpaca", ["is a safetensors weight file, not text", "UTF-8 .json", "Point dataset.source at the data file"]),
    "binary_given_as_data": (
        "data.jsonl", bytes(range(256)) * 4,
        (), "alpaca", ["is a binary file, not text", "Point dataset.source at the data file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_file(tmp_path: Path, case: str) -> None:
    name, content, overrides, dataset, needles = CASES[case]
    proc, path = _run_with_data(tmp_path, name, content, *overrides, dataset=dataset)
    # A setting names its key; everything else names the file.
    assert_user_error(proc, *needles, *([] if overrides else [str(path)]))
    _no_checkpoint(tmp_path / "run")


# ---------------------------------------------------------------------------- nothing to learn


def test_every_response_truncated_away_is_refused(tmp_path: Path) -> None:
    rows = [{"instruction": LONG + str(i), "output": "Yes."} for i in range(8)]
    proc, path = _run_with_data(tmp_path, "long_prompts.json", json.dumps(rows).encode(), "max_seq_len=64")
    assert_user_error(proc, "Nothing to learn", str(path), "max_seq_len=64", "0 target tokens",
                      "keeps 95% of the samples whole", "`max_seq_len=")
    _no_checkpoint(tmp_path / "run")


def test_packed_with_tiny_max_seq_len_is_refused(tmp_path: Path) -> None:
    proc, path = _run_with_data(tmp_path, "short.json", json.dumps(_records()).encode(),
                                "packed=true", "max_seq_len=16")
    assert_user_error(proc, "Nothing to learn", str(path), "max_seq_len=16", "0 target tokens", "`max_seq_len=")
    _no_checkpoint(tmp_path / "run")


def test_heavy_truncation_warns_and_trains(tmp_path: Path) -> None:
    rows = _records(6) + [{"instruction": "Tell the story.", "output": LONG}] * 4
    proc, path = _run_with_data(tmp_path, "some_long.json", json.dumps(rows).encode(),
                                "max_seq_len=160", "dataset.val_fraction=0")
    assert_ok(proc, "4 of the 10 samples (40%)", str(path), "max_seq_len=160", "keeps 95% of the samples whole")


# ---------------------------------------------------------------------------- tokenizer files


def _tokenizer_case(tmp_path: Path, name: str, content: bytes) -> tuple[object, Path]:
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    path = tok_dir / name
    path.write_bytes(content)
    before = snapshot(tok_dir)
    proc = run_recipe("lora_finetune", tmp_path / "run", "tokenizer=llama2", f"tokenizer.path={path}", *FAST)
    assert_unchanged(before, tok_dir)
    _no_checkpoint(tmp_path / "run")
    return proc, path


TOKENIZER_CASES = {
    "random_bytes": ("tokenizer.model", bytes((i * 151 + 7) % 256 for i in range(4096)),
                     ["4096 bytes of binary data"]),
    "html_error_page": ("tokenizer.model",
                        b"<!DOCTYPE html>\n<html><head><title>401 Unauthorized</title></head>"
                        b"<body>Access to this model is restricted.</body></html>\n",
                        ["an HTML page", "access token"]),
    "empty_file": ("tokenizer.model", b"", ["empty (0 bytes)"]),
    "tokenizer_json": ("tokenizer.json",
                       json.dumps({"version": "1.0", "added_tokens": [], "normalizer": None,
                                   "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}).encode(),
                       ["Hugging Face `tokenizer.json`", "reads the `tokenizer.model`"]),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_bad_tokenizer_file(tmp_path: Path, case: str) -> None:
    name, content, needles = TOKENIZER_CASES[case]
    proc, path = _tokenizer_case(tmp_path, name, content)
    assert_user_error(proc, str(path), "is not a SentencePiece model", *needles,
                      "tunekit download", "tokenizer.path")


def test_data_file_that_is_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "data.json"
    d.mkdir()
    proc = run_tunekit("validate", "lora_finetune", "dataset=alpaca", f"dataset.source={d}")
    assert_user_error(proc, f"'{d}' is a directory, not a file", "Set dataset.source to the path of a local .json")
