"""Bad data files: each gives one DataFormatError paragraph naming the file, where, and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunekit.data import ChatDataset, DataFormatError, DataSettingError, InstructDataset
from tunekit.tokenizers import SentencePieceTokenizer, tiny_tokenizer

REC = {"instruction": "Name a colour.", "output": "Blue."}
CHAT_OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def _error(make) -> str:
    with pytest.raises(DataFormatError) as e:
        make()
    msg = str(e.value)
    assert "\n" not in msg, msg  # one paragraph
    return msg


def _has(msg: str, *words: str) -> None:
    missing = [w for w in words if w.lower() not in msg.lower()]
    assert not missing, (missing, msg)


def test_non_utf8_bytes_name_offset_line_and_reencode(tok, tmp_path: Path) -> None:
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(REC).encode() + b"\n" + '{"instruction": "Caf\u00e9", "output": "x"}'.encode("latin-1") + b"\n")
    msg = _error(lambda: InstructDataset(tok, p))
    offset = p.read_bytes().index(b"\xe9")
    _has(msg, str(p), "not valid UTF-8", f"byte offset {offset}", "line 2", "e9", "re-encode", "iconv")


def test_utf8_bom_is_read_and_utf16_is_refused(tok, tmp_path: Path) -> None:
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([REC, REC]).encode())
    assert len(InstructDataset(tok, p, split="all")) == 2
    q = tmp_path / "utf16.json"
    q.write_bytes(json.dumps([REC]).encode("utf-16"))
    _has(_error(lambda: InstructDataset(tok, q)), str(q), "UTF-16", "re-encode it as UTF-8")


@pytest.mark.parametrize("name, content, words", [
    ("empty.json", b"", ["is empty (0 bytes)", "no records"]),
    ("empty.jsonl", b"", ["is empty (0 bytes)"]),
    ("blank.jsonl", b"\n  \n\n", ["holds only whitespace"]),
    ("list.json", b"[]", ["holds no records", "at least one record"]),
])
def test_empty_files(tok, tmp_path: Path, name: str, content: bytes, words: list[str]) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    _has(_error(lambda: InstructDataset(tok, p)), str(p), "dataset.source", *words)


def test_one_row_with_validation_says_val_fraction_zero(tok, tmp_path: Path) -> None:
    p = tmp_path / "one.json"
    p.write_text(json.dumps([REC]))
    with pytest.raises(DataSettingError) as e:
        InstructDataset(tok, p, val_fraction=0.1)
    _has(str(e.value), str(p), "only 1 record", "val_fraction=0.1", "nothing for training",
         "dataset.val_fraction=0", "add rows")
    assert len(InstructDataset(tok, p, val_fraction=0.0)) == 1


@pytest.mark.parametrize("content, words", [
    ([1, 2], ["record 1: expected an object with 'instruction' and 'output', got the number 1", "record 2"]),
    (["a", "b"], ["record 1:", "the string \"a\""]),
    ([REC, [REC]], ["record 2:", "a list of 1 item"]),
    ("text", ["holds a JSON string, not a list of records"]),
    (7, ["holds a JSON number"]),
    ({"data": [REC]}, ["single JSON object", "'data' holds a list"]),
])
def test_json_that_is_not_a_list_of_objects(tok, tmp_path: Path, content, words) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps(content))
    _has(_error(lambda: InstructDataset(tok, p)), str(p), *words)


def test_wrong_field_type_names_row_field_and_value(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC, {"instruction": "Add.", "output": 42}, {**REC, "input": None},
                             {**REC, "input": ["x"]}]))
    msg = _error(lambda: InstructDataset(tok, p))
    _has(msg, str(p), "2 malformed row(s) of 4", "record 2: field 'output' must be a string, got the number 42",
         "record 4: field 'input' must be a string, got a list", "string fields 'instruction' and 'output'")


def test_jsonl_bad_line_is_named_with_an_excerpt(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(REC) + "\n" + '{"instruction": "x", "output": "y",}' + "\n" + json.dumps(REC) + "\n")
    msg = _error(lambda: InstructDataset(tok, p))
    _has(msg, str(p), "line 2: not valid JSON", "column", "trailing commas", "fix or delete that line")
    p.write_text("".join('{"broken\n' for _ in range(7)))
    _has(_error(lambda: InstructDataset(tok, p)), "7 lines that are not valid JSON", "line 1:", "2 more lines")


def test_invalid_json_list_names_line_and_column(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text('[{"instruction": "x",\n  "output": "y"\n,]')
    _has(_error(lambda: InstructDataset(tok, p)), str(p), "not valid JSON", "line 3, column")


@pytest.mark.parametrize("name, content, fmt, words", [
    ("d.json", b"PAR1\x15\x04\x15\x00junk", "Parquet", ["Rename it to d.parquet"]),  # content wins over the name
    ("d.jsonl.gz", b"\x1f\x8b\x08\x00", "gzip", ["Decompress it", ".parquet"]),
    ("d.xlsx", b"PK\x03\x04", "Excel", ["pandas.read_excel(path).to_parquet", "dataset.source=data.parquet"]),
])
def test_other_formats_say_which_formats_are_read(tok, tmp_path: Path, name, content, fmt, words) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    msg = _error(lambda: InstructDataset(tok, p))
    _has(msg, str(p), fmt, *words)


def test_json_in_a_txt_file_is_read(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.txt"
    p.write_text(json.dumps([REC, REC]))
    assert len(InstructDataset(tok, p, split="all")) == 2
    p.write_text("Name a colour. Blue.\n")
    _has(_error(lambda: InstructDataset(tok, p)), "plain text", ".jsonl")


@pytest.mark.parametrize("messages, words", [
    ([{"role": "human", "content": "Hi"}, {"role": "gpt", "content": "Hello."}],
     ["messages[0].role 'human' is not a known role (write 'user')", "'system', 'user', 'assistant'"]),
    ([{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hello."}],
     ["messages[1].role 'robot' is not a known role;"]),
    ([], ["'messages' is empty"]),
    ([{"role": "user", "content": "Hi"}], ["no 'assistant' turn"]),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
     ["no 'assistant' turn"]),
    ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "S"},
      {"role": "assistant", "content": "x"}], ["only the first message may be one"]),
])
def test_chat_rows(tok, tmp_path: Path, messages, words) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(CHAT_OK) + "\n" + json.dumps({"messages": messages}) + "\n")
    msg = _error(lambda: ChatDataset(tok, p))
    _has(msg, str(p), "line 2:", *words, "ending with 'assistant'")


def test_settings(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC] * 4))
    with pytest.raises(DataSettingError, match="dataset.template='alpacca'.*'alpaca', 'llama2_chat'"):
        InstructDataset(tok, p, template="alpacca")
    with pytest.raises(DataSettingError, match="max_seq_len=1 must be an integer >= 2"):
        InstructDataset(tok, p, max_seq_len=1)
    with pytest.raises(DataSettingError, match="dataset.val_fraction='x'"):
        InstructDataset(tok, p, val_fraction="x")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="holds no data file.*dataset.source"):
        InstructDataset(tok, empty)


def test_jsonl_lines_split_on_newlines_only(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rec = {"instruction": "Keep this\u2028separator and this\x85one.", "output": "Done."}
    p.write_bytes((json.dumps(rec, ensure_ascii=False) + "\r\n" + json.dumps(REC) + "\r\n").encode())
    ds = InstructDataset(tok, p, split="all")
    assert ds.rows == [1, 2]


def test_json_list_followed_by_more_text(tok, tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps([REC], indent=1) + "\n" + json.dumps([REC]) + "\n")
    _has(_error(lambda: InstructDataset(tok, p)), str(p), "followed by more text at line 7, column 1", "Remove what follows")
