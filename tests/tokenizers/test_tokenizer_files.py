"""A tokenizer path that holds the wrong thing: one paragraph with the path, what it is, the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tunekit.tokenizers import (
    TINY_TOKENIZER_PATH,
    SentencePieceTokenizer,
    TokenizerError,
    TokenizerFileNotFoundError,
    llama2_tokenizer,
)

HTML = (b"<!DOCTYPE html>\n<html lang=\"en\"><head><title>401 Unauthorized</title></head>\n"
        b"<body><p>Access to model meta-llama/Llama-2-7b-hf is restricted.</p></body></html>\n")
FIX = ("tunekit download", "tokenizer.path")


def _error(path: Path) -> str:
    with pytest.raises(TokenizerError) as e:
        llama2_tokenizer(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "is not a SentencePiece model" in msg
    for words in FIX:
        assert words in msg, (words, msg)
    return msg


def _hf_tokenizer_json(path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"<unk>": 0, "a": 1, "b": 2, "ab": 3},
                                                    merges=[("a", "b")], unk_token="<unk>"))
    tk.save(str(path))


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.write_bytes(bytes((i * 151 + 7) % 256 for i in range(4096)))
    assert "4096 bytes of binary data" in _error(p)


def test_html_error_page(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.write_bytes(HTML)
    msg = _error(p)
    assert "HTML page" in msg and "access token" in msg


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.touch()
    assert "empty (0 bytes)" in _error(p)


def test_tokenizer_json_with_and_without_a_model_beside_it(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.json"
    _hf_tokenizer_json(p)
    msg = _error(p)
    assert "Hugging Face `tokenizer.json`" in msg and "sits beside it" not in msg
    shutil.copy(TINY_TOKENIZER_PATH, tmp_path / "tokenizer.model")
    msg = _error(p)
    assert f"set `tokenizer.path={tmp_path / 'tokenizer.model'}`" in msg
    assert SentencePieceTokenizer(tmp_path / "tokenizer.model").vocab_size == 512


def test_git_lfs_pointer_and_tiktoken_file(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 499723\n")
    assert "Git LFS pointer" in _error(p) and "git lfs pull" in _error(p)
    p.write_text("IQ== 0\nIg== 1\nIw== 2\n")
    assert "tiktoken" in _error(p)


def test_text_file(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.write_text("hello world\n")
    assert "text file starting 'hello world'" in _error(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(TokenizerFileNotFoundError) as e:
        llama2_tokenizer(str(missing))
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    assert str(missing) in str(e.value) and all(w in str(e.value) for w in FIX)
    shutil.copy(TINY_TOKENIZER_PATH, tmp_path / "tokenizer.model")
    with pytest.raises(TokenizerFileNotFoundError, match="is a directory") as e:
        llama2_tokenizer(str(tmp_path))
    assert f"tokenizer.path={tmp_path / 'tokenizer.model'}" in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    shutil.copy(TINY_TOKENIZER_PATH, p)
    p.chmod(0)
    try:
        with pytest.raises(TokenizerError, match="cannot be read"):
            llama2_tokenizer(str(p))
    finally:
        p.chmod(0o644)
