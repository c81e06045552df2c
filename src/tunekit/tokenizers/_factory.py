"""Pick the tokenizer a model directory ships: ``tokenizer.json`` (HF), or a ``tokenizer.model``
that is either tiktoken ranks (Meta-format Llama 3) or a SentencePiece model (Llama 2, Mistral)."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from tunekit.tokenizers._hf import HFTokenizer
from tunekit.tokenizers._sentencepiece import SentencePieceTokenizer, Tokenizer, TokenizerFileNotFoundError
from tunekit.tokenizers._tiktoken import TiktokenTokenizer


def sniff_tokenizer_model(path: Path) -> str:
    """``"tiktoken"`` when the file's first line is ``<base64> <int>``, else ``"sentencepiece"``."""
    with path.open("rb") as f:
        first = f.readline(4096).strip()
    parts = first.split(b" ")
    if len(parts) == 2 and parts[1].isdigit():
        try:
            base64.b64decode(parts[0], validate=True)
            return "tiktoken"
        except (binascii.Error, ValueError):
            pass
    return "sentencepiece"


def tokenizer_from_file(path: str | Path) -> Tokenizer:
    """The tokenizer for one file: ``*.json`` -> HF, a tiktoken file -> Llama 3, else SentencePiece."""
    p = Path(path).expanduser()
    if p.suffix == ".json":
        return HFTokenizer(p)
    if p.is_file() and sniff_tokenizer_model(p) == "tiktoken":
        return TiktokenTokenizer(p)
    return SentencePieceTokenizer(p)


def _saved_model_dirs(run: Path) -> list[Path]:
    """``model/`` of each complete ``epoch_N`` / ``step_N`` checkpoint under ``run``, newest first."""
    if not run.is_dir():
        return []
    saved = [d for d in run.iterdir() if re.fullmatch(r"(epoch|step)_\d+", d.name) and (d / "COMPLETE").is_file()]
    saved.sort(key=lambda d: (d / "COMPLETE").stat().st_mtime_ns, reverse=True)
    return [d / "model" for d in saved]


def tokenizer_from_dir(path: str | Path) -> Tokenizer:
    """The tokenizer a model directory ships, chosen from the files present.

    ``tokenizer.json`` wins (it is what transformers loads, with ``tokenizer_config.json`` beside
    it); otherwise ``tokenizer.model`` is read as tiktoken ranks or SentencePiece, by its content.
    A tunekit checkpoint (``RUN/epoch_N``) is looked into (``model/``), a run directory stands for
    its newest complete checkpoint, an HF download's ``original/`` is looked into last; a file
    path is used as is. (The ``tokenizer=auto`` config component.)

    Raises:
        TokenizerFileNotFoundError: the directory holds neither file (names what it holds).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return tokenizer_from_file(p)
    for d in (p, p / "model", p / "original", *_saved_model_dirs(p)):
        if (d / "tokenizer.json").is_file():
            return HFTokenizer(d / "tokenizer.json")
        if (d / "tokenizer.model").is_file():
            return tokenizer_from_file(d / "tokenizer.model")
    if not p.is_dir():
        raise TokenizerFileNotFoundError(
            f"Tokenizer directory {str(p)!r} does not exist. Point it at the model's directory (the one "
            f"with tokenizer.json or tokenizer.model); `tunekit download <repo>` fetches one.")
    held = sorted(x.name for x in p.iterdir())[:12]
    raise TokenizerFileNotFoundError(
        f"Directory {str(p)!r} holds no tokenizer.json nor tokenizer.model (it holds "
        f"{', '.join(held) if held else 'nothing'}). Copy the model's tokenizer files into it, or point "
        f"at the directory the model was downloaded to (`tunekit download <repo>`).")
