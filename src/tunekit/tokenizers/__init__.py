"""Tokenizers: a SentencePiece wrapper with Llama 2's rules (see docs/architecture.md)."""

from tunekit.tokenizers._sentencepiece import (
    TINY_TOKENIZER_PATH,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    TokenizerFileNotFoundError,
    llama2_tokenizer,
    tiny_tokenizer,
)

__all__ = [
    "TINY_TOKENIZER_PATH",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerError",
    "TokenizerFileNotFoundError",
    "llama2_tokenizer",
    "tiny_tokenizer",
]
