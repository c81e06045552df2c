"""The JSON files that travel beside a tokenizer: ``tokenizer_config.json``,
``generation_config.json`` and ``chat_template.jinja``.

Special tokens, stop tokens and the chat template are read from these files (what transformers
reads), never hard-coded per model family.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunekit.tokenizers._sentencepiece import TokenizerError, TokenizerFileNotFoundError, describe_tokenizer_file

#: The special-token roles a chat template sees by name (``{{ bos_token }}``), as in transformers.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_json_beside(directory: Path, name: str) -> dict[str, Any] | None:
    """``directory/name`` parsed as a JSON object, None when the file is absent.

    Raises:
        TokenizerError: the file exists but is not a JSON object (names the file, line and fix).
    """
    path = directory / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TokenizerError(
            f"{str(path)!r} is not UTF-8 text, so it cannot be the model's {name}. Restore the file "
            f"from the model's repository (`tunekit download <repo>`) or remove it.") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(
            f"{str(path)!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). Fix or "
            f"restore the model's {name} (`tunekit download <repo>` fetches it again).") from None
    except OSError as e:
        raise TokenizerError(
            f"{str(path)!r} cannot be read ({e.strerror or e}). Check its permissions.") from None
    if not isinstance(data, dict):
        raise TokenizerError(
            f"{str(path)!r} holds a JSON {type(data).__name__}, not an object; the model's {name} is "
            f"one JSON object. Restore it from the model's repository (`tunekit download <repo>`).")
    return data


def token_content(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string, or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def chat_template_from(directory: Path, config: dict[str, Any] | None) -> str | None:
    """The checkpoint's own chat template: ``chat_template.jinja`` if present, else the
    ``chat_template`` of ``tokenizer_config.json`` (a string, or a list of named templates of which
    ``"default"`` is used, as transformers does)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = (config or {}).get("chat_template")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
        raise TokenizerError(
            f"{str(directory / 'tokenizer_config.json')!r} holds several chat templates "
            f"({', '.join(repr(n) for n in named)}) and none is named 'default'. Name the one to train "
            f"with 'default' in that file, or save it as chat_template.jinja beside it.")
    return None


def generation_stop_ids(directory: Path) -> list[int]:
    """The ``eos_token_id`` of ``generation_config.json`` (an int or a list), [] without one."""
    gen = read_json_beside(directory, "generation_config.json") or {}
    eos = gen.get("eos_token_id")
    values: Iterable[Any] = eos if isinstance(eos, list) else [eos]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def describe_file(path: Path, data: bytes) -> str:
    """What a file that is not the expected tokenizer format is, in words, with the right loader."""
    import sentencepiece as spm

    if data.strip():
        try:
            spm.SentencePieceProcessor(model_proto=data)
            return "it is a SentencePiece model (the Llama 2 / Mistral v0.1 format): read it with `tokenizer=llama2`"
        except (RuntimeError, OSError, TypeError):
            pass
    return describe_tokenizer_file(path, data[:512], len(data)).replace(" that SentencePiece cannot parse", "")


def require_tokenizer_file(p: Path, name: str, hint: str) -> None:
    """Refuse a ``tokenizer.path`` that is not a file: a directory (naming the ``name`` file inside
    it, when there is one) or a missing path (naming the other tokenizer files beside it); ``hint``
    says how to get the file.

    Raises:
        TokenizerFileNotFoundError: ``p`` is not a file.
    """
    if p.is_file():
        return
    if p.is_dir():
        inside = p / name
        fix = f" It holds a `{name}`: set `tokenizer.path={inside}`." if inside.is_file() else ""
        raise TokenizerFileNotFoundError(
            f"Tokenizer path {str(p)!r} is a directory, not a tokenizer file.{fix} {hint}")
    raise TokenizerFileNotFoundError(f"Tokenizer file {str(p)!r} does not exist.{other_tokenizer_hint(p)} {hint}")


def other_tokenizer_hint(path: Path) -> str:
    """`` Beside it: ... use tokenizer=auto`` when the directory holds another tokenizer file."""
    d = path.parent
    found = [f for f in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model")
             if f != path.name and (d / f).is_file()]
    if not found:
        return ""
    return (f" The directory holds {' and '.join(found)}: `tokenizer=auto` picks the tokenizer a checkpoint "
            f"ships from its files.")
