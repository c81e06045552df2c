"""Tokenizers: one protocol, three file formats (see docs/architecture.md).

* SentencePiece ``tokenizer.model`` (Llama 2): :class:`SentencePieceTokenizer`.
* Hugging Face ``tokenizer.json`` (Llama 3, Mistral v0.3, Qwen): :class:`HFTokenizer`.
* Meta-format Llama 3 ``tokenizer.model`` (tiktoken ranks): :class:`TiktokenTokenizer`.

:func:`tokenizer_from_dir` picks one from the files a model directory holds.
"""

from tunekit.tokenizers._factory import tokenizer_from_dir, tokenizer_from_file
from tunekit.tokenizers._hf import TINY_HF_TOKENIZER_DIR, HFTokenizer, hf_tokenizer, tiny_hf_tokenizer
from tunekit.tokenizers._sentencepiece import (
    TINY_TOKENIZER_PATH,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    TokenizerFileNotFoundError,
    llama2_tokenizer,
    tiny_tokenizer,
)
from tunekit.tokenizers._tiktoken import (
    LLAMA3_CHAT_TEMPLATE,
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    TiktokenTokenizer,
    llama3_tokenizer,
)

__all__ = [
    "HFTokenizer",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "TINY_HF_TOKENIZER_DIR",
    "TINY_TOKENIZER_PATH",
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerError",
    "TokenizerFileNotFoundError",
    "hf_tokenizer",
    "llama2_tokenizer",
    "llama3_tokenizer",
    "tiny_hf_tokenizer",
    "tiny_tokenizer",
    "tokenizer_from_dir",
    "tokenizer_from_file",
]
