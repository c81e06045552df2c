"""What ``recipes.generate`` feeds the model and where it stops, per the checkpoint's own files.

- Plain text: the prompt, with BOS when the checkpoint's tokenizer adds one to plain text
  (Llama: yes; Qwen: no BOS at all).
- ``template=alpaca``: the Alpaca instruction (``prompt``) with its optional ``input``.
- Chat (``chat=true`` or ``messages=``): the conversation rendered with the checkpoint's own
  Jinja chat template and ``add_generation_prompt=True`` - the ids ``apply_chat_template``
  gives; a tokenizer without a template (Llama 2's SentencePiece) gets Meta's Llama 2 layout.
- Stop tokens: the tokenizer's ``stop_ids`` (EOS, ``generation_config.json``'s ``eos_token_id``
  list, ``<|eot_id|>`` / ``<|eom_id|>`` for Meta's Llama 3 files), never a per-family list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.data import (
    ChatTemplateError,
    DataFormatError,
    alpaca_generation_tokens,
    chat_generation_tokens,
    check_chat_messages,
    llama2_chat_generation_tokens,
)

__all__ = ["Prompt", "PromptError", "build_prompt", "read_messages", "stop_token_ids"]

_FIX_MESSAGES = ("Give messages= as a list, e.g. messages='[{role: user, content: Hi}]', or the path of a "
                 ".json / .yaml file holding such a list (or an object with a 'messages' list).")


class PromptError(ValueError):
    """A prompt setting that cannot be used (one paragraph naming the setting and the fix)."""


@dataclass(frozen=True)
class Prompt:
    """The prompt's token ids, the text to echo before the reply, and how it was formatted."""

    tokens: list[int]
    shown: str
    layout: str


def _load_file(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return rows[0] if len(rows) == 1 else rows
        return json.loads(text)
    except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PromptError(f"messages={str(path)!r}: the file is not valid {path.suffix.lstrip('.') or 'JSON'} "
                          f"({' '.join(str(err).split())}). {_FIX_MESSAGES}") from None


def read_messages(value: Any) -> list[dict[str, str]]:
    """The conversation ``messages=`` gives: a list of ``{role, content}``, a JSON/YAML string
    of one, or a ``.json`` / ``.jsonl`` / ``.yaml`` file holding one (or a ``{"messages": [...]}``
    object, as a chat data set's row).

    Raises:
        PromptError: naming ``messages``, what is wrong (file, entry, field) and the fix.
    """
    source = "messages"
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        path = Path(text).expanduser()
        if text[:1] in "[{":
            try:
                value = json.loads(text)
            except ValueError:
                import yaml

                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError as err:
                    raise PromptError(f"messages={text[:60]!r} is neither JSON nor YAML "
                                      f"({' '.join(str(err).split())[:200]}). {_FIX_MESSAGES}") from None
        elif path.is_file():
            source = f"messages={str(path)!r}"
            try:
                value = _load_file(path)
            except OSError as err:
                raise PromptError(f"{source}: cannot be read ({err.strerror or err}).") from None
        else:
            raise PromptError(f"messages={text[:80]!r} is not an existing file nor a JSON/YAML list. "
                              f"{_FIX_MESSAGES}")
    if isinstance(value, Mapping) and "messages" in value:
        value = value["messages"]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = [dict(m) if isinstance(m, Mapping) else m for m in value]
    problem = check_chat_messages(value, need_assistant=False)
    if problem is None and value[-1]["role"] != "user":
        problem = (f"the conversation ends with a {value[-1]['role']!r} message; the model replies to the "
                   f"last 'user' message, so end it with one")
    if problem is not None:
        raise PromptError(f"{source}: {problem}. {_FIX_MESSAGES}")
    return value


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: Any, *, prompt: str, chat: bool = False, template: str | None = None,
                 input: str | None = None, system_prompt: str | None = None, messages: Any = None) -> Prompt:
    """The prompt ``recipes.generate`` feeds the model (see the module docstring).

    Raises:
        PromptError: bad ``messages``, or a chat template that refuses them.
    """
    if template == "alpaca":
        return Prompt(alpaca_generation_tokens(tokenizer, prompt, input or ""),
                      f"{prompt}\n\n{input}" if input else prompt, "alpaca")
    if chat or messages is not None:
        msgs = read_messages(messages) if messages is not None else [{"role": "user", "content": prompt}]
        if system_prompt is not None and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}, *msgs]
        try:
            if _has_template(tokenizer):
                tokens, layout = chat_generation_tokens(tokenizer, msgs), "the checkpoint's chat template"
            else:
                tokens, layout = llama2_chat_generation_tokens(tokenizer, msgs), "Llama 2 chat ([INST])"
        except (ChatTemplateError, DataFormatError) as err:
            raise PromptError(f"{'messages' if messages is not None else 'chat=true'}: {err}") from None
        return Prompt(tokens, msgs[-1]["content"], layout)
    return Prompt(tokenizer.encode(prompt, add_bos=getattr(tokenizer, "adds_bos", True), add_eos=False),
                  prompt, "plain text")


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids that end a reply: the tokenizer's ``stop_ids`` (from the checkpoint's files), else EOS."""
    stops = [int(i) for i in (getattr(tokenizer, "stop_ids", None) or [tokenizer.eos_id]) if i is not None]
    return list(dict.fromkeys(stops))
