"""Hugging Face ``tokenizer.json`` (the ``tokenizers`` library's format), as transformers reads it.

Llama 3, Mistral v0.3, Qwen2.5 and Qwen3 ship this file. The special tokens come from the
``tokenizer_config.json`` beside it, the extra stop tokens from ``generation_config.json`` and the
chat template from ``chat_template.jinja`` or ``tokenizer_config.json``: nothing is hard-coded per
family.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tunekit.tokenizers._files import (
    SPECIAL_TOKEN_KEYS,
    chat_template_from,
    describe_file,
    generation_stop_ids,
    read_json_beside,
    require_tokenizer_file,
    token_content,
)
from tunekit.tokenizers._sentencepiece import TokenizerError

#: The tiny byte-level BPE tokenizer.json + ChatML tokenizer_config.json (scripts/make_tokenizer.py hf).
TINY_HF_TOKENIZER_DIR: Path = Path(__file__).resolve().parents[1] / "assets" / "tokenizer" / "hf"

_HF_HINT = (
    "Fetch the model with `tunekit download <repo>` (for example `tunekit download "
    "Qwen/Qwen2.5-0.5B-Instruct`) or point `tokenizer.path` at the model's `tokenizer.json`."
)


def _open_tokenizer_json(p: Path) -> Any:
    """``tokenizers.Tokenizer.from_file`` with one-paragraph errors."""
    from tokenizers import Tokenizer as _RustTokenizer

    require_tokenizer_file(p, "tokenizer.json", _HF_HINT)
    try:
        return _RustTokenizer.from_file(str(p))
    except Exception as e:  # the Rust side raises a plain Exception for any parse error
        try:
            data = p.read_bytes()
        except OSError as err:
            raise TokenizerError(
                f"Tokenizer file {str(p)!r} cannot be read ({err.strerror or err}). Check its "
                f"permissions, or point `tokenizer.path` at a readable `tokenizer.json`.") from None
        what = describe_file(p, data)
        if data.lstrip().startswith(b"{") and "tokenizer.json" in what:
            what = "it is JSON in the tokenizer.json layout but the `tokenizers` library rejects it"
        raise TokenizerError(
            f"Tokenizer file {str(p)!r} is not a Hugging Face tokenizer.json the `tokenizers` library "
            f"can load: {what} (tokenizers says: {str(e).strip()}). {_HF_HINT}") from None


class HFTokenizer:
    """A ``tokenizer.json`` used the way transformers' ``AutoTokenizer`` uses it.

    ``encode(text, add_bos=False, add_eos=False)`` equals ``AutoTokenizer(...)(text,
    add_special_tokens=False)``: special-token strings in ``text`` (``<|im_end|>``) become their
    ids, as in transformers, which is also how a rendered chat template is tokenized.
    ``encode(text, add_bos=tok.adds_bos, add_eos=tok.adds_eos)`` equals ``AutoTokenizer.encode``.

    Args:
        path: the ``tokenizer.json``; ``tokenizer_config.json``, ``generation_config.json`` and
            ``chat_template.jinja`` are read from the same directory when present.

    Attributes:
        bos_id: BOS id, or None for models without one (Qwen); ``add_bos`` then adds nothing.
        eos_id: the ``eos_token`` of ``tokenizer_config.json``.
        pad_id: the ``pad_token``, else ``eos_id`` (padded positions never carry a label).
        stop_ids: ``eos_id`` plus every ``eos_token_id`` of ``generation_config.json``.
        adds_bos / adds_eos: whether the checkpoint's own convention (the post-processor of
            ``tokenizer.json``) adds BOS/EOS to a text.
        chat_template: the checkpoint's Jinja chat template, or None.
        special_tokens: ``{"bos_token": "<s>", ...}`` as a chat template sees them.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path).expanduser()
        self._tok = _open_tokenizer_json(p)
        self.path = p
        directory = p.parent
        config = read_json_beside(directory, "tokenizer_config.json")
        self.chat_template: str | None = chat_template_from(directory, config)
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens: dict[str, str] = {}
        ids: dict[str, int | None] = {}
        for key in SPECIAL_TOKEN_KEYS:
            content = token_content((config or {}).get(key))
            ids[key] = None
            if content is None:
                continue
            tid = self._tok.token_to_id(content)
            if tid is None:
                raise TokenizerError(
                    f"{str(directory / 'tokenizer_config.json')!r} names {key}={content!r}, but "
                    f"{str(p)!r} has no such token. The two files come from different models: "
                    f"restore both from the same repository (`tunekit download <repo>`).")
            self.special_tokens[key] = content
            ids[key] = tid
        if ids["eos_token"] is None:
            where = ("has no `eos_token`" if config is not None
                     else "is missing (it names the model's BOS/EOS/pad tokens)")
            raise TokenizerError(
                f"{str(directory / 'tokenizer_config.json')!r} {where}, so the end-of-text token of "
                f"{str(p)!r} is unknown. Copy the model's tokenizer_config.json next to its "
                f"tokenizer.json (`tunekit download <repo>` fetches both).")
        self.bos_id: int | None = ids["bos_token"]
        self.eos_id: int = ids["eos_token"]  # type: ignore[assignment]
        self.unk_id: int | None = ids["unk_token"]
        self.pad_id: int = ids["pad_token"] if ids["pad_token"] is not None else self.eos_id
        stops = [self.eos_id, *generation_stop_ids(directory)]
        self.stop_ids: list[int] = [i for n, i in enumerate(stops) if i not in stops[:n]]
        # What the tokenizer.json's post-processor adds is what transformers 5 adds (it no longer
        # rewrites the post-processor from tokenizer_config.json's add_bos_token / add_eos_token).
        probe = self._tok.encode("", add_special_tokens=True).ids
        self.adds_bos: bool = bool(probe) and self.bos_id is not None and probe[0] == self.bos_id
        self.adds_eos: bool = bool(probe) and probe[-1] == self.eos_id
        self._special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def __repr__(self) -> str:
        return f"HFTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        head = [self.bos_id] if add_bos and self.bos_id is not None else []
        return head + ids + ([self.eos_id] if add_eos else [])

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Encode ``text`` (special-token strings in it become their ids), optionally with BOS/EOS."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = True) -> list[list[int]]:
        """Encode several strings at once (same rules as ``encode``)."""
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch() takes strings; items {bad[:5]} are not str")
        out = self._tok.encode_batch(texts, add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in out]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Decode token ids; ids outside the vocabulary (the -100 of masked labels) are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry or added token, None when absent."""
        return self._tok.token_to_id(token)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of one id (``"Ġthe"``, ``"<|im_end|>"``)."""
        return self._tok.id_to_token(i)


def hf_tokenizer(path: str | Path) -> HFTokenizer:
    """A ``tokenizer.json`` tokenizer (the ``tokenizer=hf`` config component).

    Args:
        path: the model's ``tokenizer.json``.
    """
    return HFTokenizer(path)


def tiny_hf_tokenizer() -> HFTokenizer:
    """The bundled 512-entry byte-level BPE tokenizer with a ChatML chat template."""
    return HFTokenizer(TINY_HF_TOKENIZER_DIR / "tokenizer.json")
