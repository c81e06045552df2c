"""SentencePieceTokenizer on the bundled tiny model: ids, specials, errors, HF/Meta parity."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from tunekit.tokenizers import (
    TINY_TOKENIZER_PATH,
    SentencePieceTokenizer,
    Tokenizer,
    llama2_tokenizer,
    tiny_tokenizer,
)

ROOT = Path(__file__).resolve().parents[2]

# Strings covering words, punctuation, digits, newlines, non-ASCII, emoji and the chat markers.
TEXTS = [
    "Hello world",
    "The cat sat on the mat.",
    "x 2024 y",
    "What is 12 + 30?",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there [/INST] Hello! ",
    "Below is an instruction.\n\n### Response:\n40",
    "tab\there, two  spaces and a trailing space ",
    "café naïve 😀 日本",
    "<s> and </s> are plain text here",
    "def add(a, b): return a + b",
]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def test_special_ids_and_vocab(tok: SentencePieceTokenizer) -> None:
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id) == (512, 0, 1, 2)
    assert tok.sp.pad_id() == -1  # like Llama 2: no pad piece in the model
    assert tok.pad_id == tok.eos_id == 2  # documented choice
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.id_to_piece(3) == "<0x00>" and tok.id_to_piece(258) == "<0xFF>"  # byte fallback
    assert isinstance(tok, Tokenizer)


def test_exact_ids(tok: SentencePieceTokenizer) -> None:
    assert tok.encode("The cat sat on the mat.") == [1, 297, 281, 270, 266, 270, 336, 265, 284, 270, 457, 2]
    assert tok.encode("Hello world", add_bos=False, add_eos=False) == [442, 487, 443, 288, 448, 264, 300, 338]
    assert tok.encode("Hello world", add_eos=False)[0] == 1
    assert tok.encode("Hello world", add_bos=False)[-1] == 2
    assert tok.encode("", add_bos=False, add_eos=False) == []


def test_llama_rules_digits_bytes_dummy_prefix(tok: SentencePieceTokenizer) -> None:
    pieces = [tok.id_to_piece(i) for i in tok.encode("x 2024 y", add_bos=False, add_eos=False)]
    assert pieces == ["▁", "x", "▁", "2", "0", "2", "4", "▁y"]  # split_digits, dummy prefix
    emoji = [tok.id_to_piece(i) for i in tok.encode("😀", add_bos=False, add_eos=False)]
    assert emoji == ["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]  # byte fallback, no unk
    # Special-token strings are plain text, never the control ids.
    ids = tok.encode("<s></s>", add_bos=False, add_eos=False)
    assert 1 not in ids and 2 not in ids and tok.decode(ids) == "<s></s>"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: SentencePieceTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert 0 not in ids  # byte fallback: nothing is unknown
    assert tok.decode(ids) == text


def test_decode_specials_tensors_and_ignored(tok: SentencePieceTokenizer) -> None:
    ids = tok.encode("Hello world") + tok.encode("The cat")
    # Without the specials the ids are one run: "▁The" keeps its space.
    assert tok.decode(ids) == "Hello world The cat"
    # With them, each segment decodes on its own (its dummy-prefix space dropped).
    assert tok.decode(ids, skip_special=False) == "<s>Hello world</s><s>The cat</s>"
    assert tok.decode(torch.tensor(ids + [-100, -100])) == "Hello world The cat"


def test_encode_batch(tok: SentencePieceTokenizer) -> None:
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS, add_bos=False, add_eos=False) == [
        tok.encode(t, add_bos=False, add_eos=False) for t in TEXTS
    ]
    with pytest.raises(TypeError, match=r"items \[1\]"):
        tok.encode_batch(["a", 3])  # type: ignore[list-item]


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="tunekit download") as e:
        llama2_tokenizer(str(missing))
    assert str(missing) in str(e.value)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        llama2_tokenizer(str(tmp_path))
    bad = tmp_path / "tokenizer.model"
    bad.write_text("not a sentencepiece model")
    with pytest.raises(ValueError, match="is not a SentencePiece model") as e:
        SentencePieceTokenizer(bad)
    assert str(bad) in str(e.value) and "tunekit download" in str(e.value)


def test_llama2_tokenizer_component() -> None:
    t = llama2_tokenizer(str(TINY_TOKENIZER_PATH))
    assert isinstance(t, SentencePieceTokenizer) and t.vocab_size == 512


def _load_script():
    spec = importlib.util.spec_from_file_location("make_tokenizer", ROOT / "scripts" / "make_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_bundled_assets_regenerate_exactly(tmp_path: Path) -> None:
    """The committed text, data and tokenizer are exactly what the script produces."""
    mod = _load_script()
    for name, text in mod.make_text().items():
        assert (mod.TEXT_DIR / name).read_text(encoding="utf-8") == text, name
    mod.DATA_DIR = tmp_path
    mod.write_data()
    for name in ("alpaca_tiny.json", "chat_tiny.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "src/tunekit/assets/data" / name).read_bytes()
    out = mod.train_tokenizer(out=tmp_path / "tokenizer.model")
    assert out.read_bytes() == TINY_TOKENIZER_PATH.read_bytes()


def test_bundled_text_size_and_words() -> None:
    files = sorted((ROOT / "src" / "tunekit" / "assets" / "text").glob("*.txt"))
    total = sum(f.stat().st_size for f in files)
    assert len(files) >= 5 and 150_000 <= total <= 300_000
    assets = ROOT / "src" / "tunekit" / "assets"
    mine = [assets / d for d in ("text", "data", "tokenizer")]
    assert sum(f.stat().st_size for d in mine for f in d.rglob("*") if f.is_file()) < 1_000_000
    words = " ".join(f.read_text() for f in files).split()
    assert len(set(words)) > 1500  # variety, not one sentence repeated


def test_parity_with_hf_llama_tokenizer(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    """HF's legacy Llama tokenizer built from the same tokenizer.model gives the same ids.

    transformers' conversion of a .model file needs protobuf. Text starting with whitespace is
    left out: transformers 5 collapses leading spaces there, while Meta's reference (plain
    sentencepiece, which we follow) keeps them. So is text containing "<s>"/"</s>": HF parses
    those as control tokens, Meta's reference (and we) encode them as plain text.
    """
    pytest.importorskip("google.protobuf")
    transformers = pytest.importorskip("transformers")
    shutil.copy(TINY_TOKENIZER_PATH, tmp_path / "tokenizer.model")
    hf = transformers.LlamaTokenizer.from_pretrained(str(tmp_path), legacy=True)
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id, len(hf)) == (1, 2, 0, 512)
    for text in [t for t in TEXTS if "<s>" not in t]:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, add_bos=False, add_eos=False) == ids, text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
