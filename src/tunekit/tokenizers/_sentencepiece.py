"""SentencePiece tokenizer with Llama 2's encoding rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

_DOWNLOAD_HINT = (
    "Fetch a model's tokenizer with `tunekit download <repo>` (for example "
    "`tunekit download meta-llama/Llama-2-7b-hf`), or regenerate the bundled tiny one with "
    "`python scripts/make_tokenizer.py tokenizer`."
)

#: The tiny 512-piece tokenizer trained on the bundled text (scripts/make_tokenizer.py).
TINY_TOKENIZER_PATH: Path = Path(__file__).resolve().parents[1] / "assets" / "tokenizer" / "tokenizer.model"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and the recipes need from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]: ...

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str: ...


class SentencePieceTokenizer:
    """A SentencePiece model used the way Meta's Llama 2 reference code uses it.

    ``encode`` is ``sp.encode(text)`` with optional BOS/EOS around it (dummy prefix, byte
    fallback and digit splitting come from the model file), so ids equal Meta's
    ``Tokenizer.encode`` and Hugging Face's legacy Llama tokenizer for text that does not
    start with whitespace.

    Llama 2 has no padding token (its ``pad_id`` is -1). ``pad_id`` here is ``eos_id`` when the
    model defines none: padded positions always carry label -100 and are masked out of
    attention or sit after the last real token, so the id only has to be a valid embedding
    row, and EOS is harmless where a pad leaks into generation output.

    Args:
        path: path to a SentencePiece ``tokenizer.model`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a SentencePiece model.
    """

    def __init__(self, path: str | Path) -> None:
        import sentencepiece as spm

        p = Path(path).expanduser()
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise FileNotFoundError(f"Tokenizer file {str(p)!r} {what}. {_DOWNLOAD_HINT}")
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(str(p))
        except (OSError, RuntimeError) as e:
            raise ValueError(
                f"Tokenizer file {str(p)!r} is not a SentencePiece model ({e}). Llama 2 ships its "
                f"tokenizer as `tokenizer.model`; a `tokenizer.json` alone is not supported. "
                f"{_DOWNLOAD_HINT}"
            ) from None
        self.path = p
        self.sp = sp
        self.vocab_size: int = sp.vocab_size()
        self.bos_id: int = sp.bos_id()
        self.eos_id: int = sp.eos_id()
        self.unk_id: int = sp.unk_id()
        self.pad_id: int = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(
                f"Tokenizer file {str(p)!r} defines no BOS or EOS token (bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}); Llama 2 style training needs both."
            )
        self._special = {self.bos_id, self.eos_id, self.pad_id}

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Encode ``text`` to token ids, optionally wrapped in BOS/EOS.

        Args:
            text: the string to encode; special-token strings such as ``"<s>"`` are encoded as
                plain text, as Llama 2 does.
            add_bos: prepend ``bos_id``.
            add_eos: append ``eos_id``.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = self.sp.encode(text)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = True
    ) -> list[list[int]]:
        """Encode several strings at once (same rules as ``encode``)."""
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch() takes strings; items {bad[:5]} are not str")
        head = [self.bos_id] if add_bos else []
        tail = [self.eos_id] if add_eos else []
        return [head + ids + tail for ids in self.sp.encode(texts)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Decode token ids to text.

        Args:
            ids: token ids (a list, or a 1-D tensor). Ids outside the vocabulary, such as the
                ``-100`` of masked labels, are dropped.
            skip_special: drop BOS/EOS/pad. When False they are written as ``<s>`` / ``</s>``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special:
            return self.sp.decode([i for i in ids if i not in self._special])
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._special:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of one id (``"▁the"``, ``"<0x0A>"``, ``"<s>"``)."""
        return self.sp.id_to_piece(i)


def llama2_tokenizer(path: str | Path) -> SentencePieceTokenizer:
    """Llama 2's SentencePiece tokenizer (the ``tokenizer`` config component).

    Args:
        path: path to the model's ``tokenizer.model``.
    """
    return SentencePieceTokenizer(path)


def tiny_tokenizer() -> SentencePieceTokenizer:
    """The bundled 512-piece tokenizer of the tiny embedded model."""
    return SentencePieceTokenizer(TINY_TOKENIZER_PATH)
