"""Meta-format Llama 3 ``tokenizer.model``: tiktoken BPE ranks, one ``<base64 token> <rank>`` a line.

The file holds the mergeable ranks only. The special tokens and the pre-tokenizer pattern are the
ones Meta publishes with Llama 3 (its reference ``tokenizer.py``): 256 special tokens numbered
after the ranks, ``<|begin_of_text|>`` first. Extra stop tokens come from a
``generation_config.json`` beside the file, and a chat template from ``tokenizer_config.json`` /
``chat_template.jinja`` there; without one, the Llama 3 chat layout Meta's reference code
encodes is used (``tunekit.tokenizers.LLAMA3_CHAT_TEMPLATE``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from pathlib import Path

from tunekit.tokenizers._files import (
    chat_template_from,
    describe_file,
    generation_stop_ids,
    read_json_beside,
    require_tokenizer_file,
)
from tunekit.tokenizers._sentencepiece import (
    TokenizerError,
    describe_tokenizer_file,
)

#: Llama 3's pre-tokenizer pattern (published with the model).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_NUM_SPECIAL = 256
#: Llama 3.1 special tokens, in id order after the ranks (128000 onwards), named as its published
#: tokenizer.json names them. Llama 3.0 and 3.2 differ only in the names of a few slots; the ids
#: of BOS, EOS, the header tokens and ``<|eot_id|>`` are the same in all three.
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(3, _NUM_SPECIAL - 8)),
)
assert len(LLAMA3_SPECIAL_TOKENS) == _NUM_SPECIAL

#: The Llama 3 chat layout (Meta's reference ``ChatFormat``), written as a Jinja chat template:
#: ``<|begin_of_text|>`` then per message ``<|start_header_id|>{role}<|end_header_id|>\n\n``
#: ``{content stripped}<|eot_id|>``, and an open assistant header for a generation prompt.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_HINT = (
    "Point `tokenizer.path` at the `tokenizer.model` of a Meta-format Llama 3 download "
    "(`original/tokenizer.model` of the Hub repository), or use `tokenizer=hf` with the "
    "model's `tokenizer.json`."
)


def load_ranks(p: Path) -> dict[bytes, int]:
    """Read tiktoken BPE ranks, naming the file and line of the first malformed entry."""
    require_tokenizer_file(p, "tokenizer.model", _HINT)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TokenizerError(
            f"Tokenizer file {str(p)!r} cannot be read ({e.strerror or e}). Check its permissions.") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            if len(parts) != 2 or not token:
                raise ValueError
        except (binascii.Error, ValueError, IndexError):
            what = describe_file(p, data) if not ranks else (
                f"line {n} is {line[:60].decode('utf-8', 'replace')!r}, not '<base64 token> <rank>'")
            raise TokenizerError(f"Tokenizer file {str(p)!r} is not a tiktoken BPE file: {what}. {_HINT}") from None
        ranks[token] = rank
    if not ranks:
        what = describe_tokenizer_file(p, data[:512], len(data)) if not data.strip() else "it holds no ranks"
        raise TokenizerError(f"Tokenizer file {str(p)!r} is not a tiktoken BPE file: {what}. {_HINT}")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(
            f"Tokenizer file {str(p)!r} has ranks that are not 0..{len(ranks) - 1}, each once (a truncated "
            f"or edited file). Restore the model's `tokenizer.model`. {_HINT}")
    return ranks


class TiktokenTokenizer:
    """Llama 3's tiktoken tokenizer, as Meta's reference code builds it.

    Special-token strings in ``text`` become their ids (as transformers does with the same
    tokenizer, and as a rendered chat template needs); ``bos_id`` is ``<|begin_of_text|>``,
    ``eos_id`` ``<|end_of_text|>``, ``pad_id`` ``<|finetune_right_pad_id|>``, and ``stop_ids``
    ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>`` plus the ``eos_token_id`` of a
    ``generation_config.json`` beside the file.

    Args:
        path: the tiktoken ``tokenizer.model``.
    """

    adds_bos = True
    adds_eos = False

    def __init__(self, path: str | Path) -> None:
        import tiktoken

        p = Path(path).expanduser()
        ranks = load_ranks(p)
        self.path = p
        base = len(ranks)
        self.special_ids: dict[str, int] = {t: base + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(name=p.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=self.special_ids)
        self.vocab_size: int = base + len(LLAMA3_SPECIAL_TOKENS)
        self.bos_id: int = self.special_ids["<|begin_of_text|>"]
        self.eos_id: int = self.special_ids["<|end_of_text|>"]
        self.pad_id: int = self.special_ids["<|finetune_right_pad_id|>"]
        stops = [self.eos_id, self.special_ids["<|eom_id|>"], self.special_ids["<|eot_id|>"],
                 *generation_stop_ids(p.parent)]
        self.stop_ids: list[int] = [i for n, i in enumerate(stops) if i not in stops[:n]]
        config = read_json_beside(p.parent, "tokenizer_config.json")
        self.chat_template: str = chat_template_from(p.parent, config) or LLAMA3_CHAT_TEMPLATE
        self.special_tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                               "pad_token": "<|finetune_right_pad_id|>"}
        self._special = set(self.special_ids.values())

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Encode ``text`` (special-token strings become their ids), optionally with BOS/EOS."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = self._enc.encode(text, allowed_special="all")
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = True) -> list[list[int]]:
        """Encode several strings (same rules as ``encode``)."""
        return [self.encode(t, add_bos, add_eos) for t in texts]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Decode token ids; ids outside the vocabulary (the -100 of masked labels) are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special:
            ids = [i for i in ids if i not in self._special]
        return self._enc.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """The id of a special token or of a single-token string, None otherwise."""
        if token in self.special_ids:
            return self.special_ids[token]
        try:
            return self._enc.encode_single_token(token.encode("utf-8"))
        except KeyError:
            return None

    def id_to_piece(self, i: int) -> str:
        """The bytes of one id as text (special tokens by name)."""
        return self._enc.decode_single_token_bytes(i).decode("utf-8", "replace")


def llama3_tokenizer(path: str | Path) -> TiktokenTokenizer:
    """Llama 3's tiktoken tokenizer (the ``tokenizer=llama3`` config component).

    Args:
        path: the model's Meta-format ``tokenizer.model``.
    """
    return TiktokenTokenizer(path)
