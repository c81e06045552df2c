"""The tokenizer of a model directory as GGUF metadata (what llama.cpp rebuilds its tokenizer from).

Two tokenizer models are written, as llama.cpp's own converter writes them:

* ``llama`` (SentencePiece ``tokenizer.model``: Llama 2, Mistral): every piece with its score
  and type (normal, unknown, control, unused, byte).
* ``gpt2`` (byte-level BPE ``tokenizer.json``: Llama 3, Qwen): the vocabulary in id order, the
  merges, the types (added special tokens are control tokens, other added tokens user-defined)
  and the pre-tokenizer's name (``llama-bpe``, ``qwen2``, ``gpt-2``) that selects llama.cpp's
  splitting rules; it is recognised from the pre-tokenizer's regular expression.

BOS/EOS/unknown/pad ids, ``add_bos``/``add_eos`` and the chat template come from the same files
tunekit's own tokenizers read (``tokenizer_config.json``, ``chat_template.jinja``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunekit.tokenizers import LLAMA3_PATTERN, SentencePieceTokenizer, TokenizerError, tokenizer_from_dir

__all__ = ["GGUFVocab", "pad_vocab", "read_vocab"]

# llama.cpp token types (gguf.TokenType values).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The pre-tokenizer regular expression -> the name llama.cpp knows its splitting rules by.
_QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_NAMES = {LLAMA3_PATTERN: "llama-bpe", _QWEN2_PATTERN: "qwen2"}


class VocabError(ValueError):
    """A tokenizer llama.cpp could not be given (one paragraph: file and fix)."""


@dataclass
class GGUFVocab:
    """Everything the ``tokenizer.*`` GGUF keys hold."""

    model: str                       # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str                         # llama.cpp pre-tokenizer name ("default" for SentencePiece)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    source: str = ""


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        value = value.get("content")
    return value if isinstance(value, str) else None


def _sentencepiece(tok: Any, d: Path) -> GGUFVocab:
    sp = tok.sp
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif sp.is_byte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    config = _json(d / "tokenizer_config.json")
    pad = sp.pad_id()
    return GGUFVocab(
        model="llama", pre="default", tokens=tokens, types=types, scores=scores,
        bos_id=sp.bos_id() if sp.bos_id() >= 0 else None, eos_id=sp.eos_id() if sp.eos_id() >= 0 else None,
        unk_id=sp.unk_id() if sp.unk_id() >= 0 else None, pad_id=pad if pad >= 0 else None,
        add_bos=bool(config.get("add_bos_token", True)), add_eos=bool(config.get("add_eos_token", False)),
        chat_template=getattr(tok, "chat_template", None) or config.get("chat_template") or _jinja(d),
        source=str(tok.path),
    )


def _jinja(d: Path) -> str | None:
    p = d / "chat_template.jinja"
    return p.read_text(encoding="utf-8") if p.is_file() else None


def _pre_name(spec: dict[str, Any], path: Path) -> str:
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern in _PRE_NAMES:
                return _PRE_NAMES[pattern]
            raise VocabError(
                f"{path}: its pre-tokenizer splits text with a regular expression llama.cpp has no rules for "
                f"under a known name ({str(pattern)[:60]!r}...), so a GGUF file would tokenize text differently "
                f"from the model's training. GGUF export knows Llama 3's (llama-bpe) and Qwen2's (qwen2) "
                f"patterns and plain GPT-2 byte-level splitting; convert this model with llama.cpp's "
                f"convert_hf_to_gguf.py, which recognises more tokenizers."
            )
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return "gpt-2"
    return "default"


def _byte_level_bpe(tok: Any, d: Path) -> GGUFVocab:
    path = d / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {int(t["id"]): t for t in spec.get("added_tokens") or [] if isinstance(t, dict) and "id" in t}
    for i, t in added.items():
        vocab.setdefault(str(t.get("content")), i)
    size = max(tok.vocab_size, max(vocab.values(), default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = NORMAL
    for i, t in added.items():
        tokens[i] = str(t.get("content"))
        types[i] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    config = _json(d / "tokenizer_config.json")
    pad = _token_content(config.get("pad_token"))
    return GGUFVocab(
        model="gpt2", pre=_pre_name(spec, path), tokens=tokens, types=types, merges=merges,
        bos_id=tok.bos_id, eos_id=tok.eos_id, unk_id=tok.unk_id,
        pad_id=None if pad is None else tok.token_to_id(pad),
        add_bos=bool(tok.adds_bos), add_eos=bool(tok.adds_eos), chat_template=tok.chat_template,
        source=str(path),
    )


def read_vocab(d: Path) -> GGUFVocab:
    """The GGUF tokenizer metadata of the tokenizer files in model directory ``d``.

    Raises:
        VocabError: no tokenizer, or one llama.cpp could not reproduce (naming the file and the fix).
    """
    try:
        tok = tokenizer_from_dir(d)
    except TokenizerError as err:
        raise VocabError(f"the model's tokenizer cannot be read, and a GGUF file needs it: {err}") from None
    kind = type(tok).__name__
    if kind == "SentencePieceTokenizer":
        return _sentencepiece(tok, d)
    if kind == "HFTokenizer":
        spec = _json(d / "tokenizer.json")
        model = spec.get("model") or {}
        decoder = spec.get("decoder") or {}
        if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
            return _byte_level_bpe(tok, d)
        if (d / "tokenizer.model").is_file():  # Mistral: llama.cpp reads the SentencePiece file
            try:
                return _sentencepiece(SentencePieceTokenizer(str(d / "tokenizer.model")), d)
            except TokenizerError:
                pass
        raise VocabError(
            f"{d / 'tokenizer.json'} is a SentencePiece-style tokenizer ({model.get('type')} with "
            f"{'byte fallback' if model.get('byte_fallback') else decoder.get('type', 'no')} decoding), which "
            f"llama.cpp reads from the SentencePiece file instead: put the model's tokenizer.model beside it "
            f"(it comes with the same download) and export again."
        )
    raise VocabError(
        f"{getattr(tok, 'path', d)} is Meta's tiktoken tokenizer.model (Llama 3 in Meta format), which GGUF "
        f"export does not translate. Export the HF-format files of the same model instead (the repository's "
        f"top level, with tokenizer.json and config.json: `tunekit download` fetches them), or a checkpoint "
        f"of a run that used them."
    )


def pad_vocab(v: GGUFVocab, n: int) -> None:
    """Fill the vocabulary up to the model's ``n`` embedding rows with unused ``[PAD{i}]`` tokens, as
    llama.cpp's converter does (Qwen2.5's tokenizer has 151665 tokens for 151936 rows): llama.cpp takes
    its vocabulary size from the token list and checks it against the embedding.

    Raises:
        VocabError: the tokenizer has more tokens than the model has rows.
    """
    have = len(v.tokens)
    if have > n:
        raise VocabError(
            f"{v.source} has {have} tokens but the model has only {n} embedding rows: they are not the same "
            f"model's files (or the embedding was cut). Use the tokenizer the model was trained with."
        )
    v.tokens += [f"[PAD{i}]" for i in range(have, n)]
    v.types += [UNUSED] * (n - have)
    if v.scores is not None:
        v.scores += [-1000.0] * (n - have)
