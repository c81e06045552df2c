"""The data formats: what a record holds, how it is checked and tokenized, and where the loss is.

A :class:`Format` turns one record into ``(tokens, targets)`` (per-token flags: ``True`` where the
token is a training target). Loss masks:

- ``instruct`` (Alpaca ``instruction`` / optional ``input`` / ``output``): the response and its
  EOS; ``train_on_input=True``: every token but BOS.
- ``chat`` (OpenAI ``messages`` with ``role``/``content``, or ShareGPT ``conversations`` with
  ``from``/``value`` and human/gpt roles): each assistant reply and its end-of-turn tokens;
  ``train_on_input=True``: every token but BOS.
- ``text`` (a ``text`` column or ``.txt`` files): every token; documents are joined with EOS and
  cut into ``max_seq_len`` windows (``train_on_input`` does not apply).
- ``preference`` (``prompt``, ``chosen``, ``rejected``): loaded and checked here; tokenized by
  the preference data set.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from tunekit.data._loading import DataFormatError, DataSettingError, describe_value
from tunekit.data.chat_template import ChatTemplateError, chat_tokens, check_chat_messages, tokenizer_chat_template
from tunekit.data.templates import INSTRUCT_TEMPLATES, tokenize_llama2_chat, validate_messages
from tunekit.tokenizers import Tokenizer

__all__ = ["FORMATS", "Format", "make_format", "resolve_chat_template", "sharegpt_to_messages"]

FORMATS = ("instruct", "chat", "text", "preference")
#: Layouts ``format=chat`` accepts; ``auto`` = the model's template when the tokenizer has one.
CHAT_TEMPLATES = ("auto", "llama2_chat", "model")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                   "system": "system"}
_TOOL_ROLES = ("tool", "function", "function_call", "function_response", "observation", "ipython", "tool_call")


@dataclass(frozen=True)
class Format:
    """One data format bound to a tokenizer and its settings.

    Attributes:
        name: ``instruct`` | ``chat`` | ``text`` | ``preference``.
        required / optional: the record fields it reads (after ``column_map``).
        alternatives: other names a required field may come under (``conversations``).
        check: what is wrong with a record (a phrase) or None.
        encode: record -> ``(tokens, targets)``.
        hint: one sentence on what a row must hold (ends error paragraphs).
        loss: one line on where the loss is taken.
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    check: Callable[[Any], str | None]
    encode: Callable[[Any], tuple[list[int], list[bool]]]
    hint: str
    loss: str
    alternatives: Mapping[str, tuple[str, ...]] | None = None
    template: str = ""


def _not_object(rec: Any, fields: str) -> str:
    return f"expected an object with {fields}, got {describe_value(rec)}"


def check_instruct_record(rec: Any) -> str | None:
    """What is wrong with an Alpaca record, or None."""
    if not isinstance(rec, Mapping):
        return _not_object(rec, "'instruction' and 'output'")
    for key in ("instruction", "output"):
        if key not in rec:
            return f"missing the field '{key}' (it has {sorted(map(str, rec))})"
        if not isinstance(rec[key], str):
            return f"field '{key}' must be a string, got {describe_value(rec[key])}"
    if rec.get("input") is not None and not isinstance(rec["input"], str):
        return f"field 'input' must be a string, got {describe_value(rec['input'])}"
    return None


def sharegpt_to_messages(conversations: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """ShareGPT ``[{"from": "human", "value": ...}, ...]`` as ``messages``; ``(None, problem)`` if bad."""
    if not isinstance(conversations, list):
        return None, (f"'conversations' must be a list of {{'from', 'value'}} objects, got "
                      f"{describe_value(conversations)}")
    out = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            return None, (f"conversations[{i}] must be an object with 'from' and 'value' (ShareGPT), got "
                          f"{describe_value(turn)}")
        who = str(turn["from"]).lower()
        if who in _TOOL_ROLES:
            return None, _tool_problem(f"conversations[{i}].from", turn["from"])
        if who not in _SHAREGPT_ROLES:
            return None, (f"conversations[{i}].from {turn['from']!r} is not a ShareGPT role; roles are "
                          f"'system', 'human', 'gpt'")
        out.append({"role": _SHAREGPT_ROLES[who], "content": turn["value"]})
    return out, None


def _tool_problem(where: str, role: Any) -> str:
    what = f"{where} holds {role!r}" if where.endswith("]") else f"{where} is {role!r}"
    return (f"{what}: tool / function-call messages are not supported here (ShareGPT's "
            f"function turns have no agreed layout, and Llama 2's [INST] layout has no place for them; a "
            f"model chat template that renders 'tool' messages takes OpenAI-style rows with "
            f"dataset.template=model); drop those turns or rows")


def chat_messages(rec: Any, *, allow_tool: bool = False) -> tuple[Any, str | None]:
    """The record's conversation as ``messages`` (OpenAI or ShareGPT), or ``(None, problem)``.

    ``allow_tool``: leave OpenAI ``tool`` messages and ``tool_calls`` to the model's chat template
    (which says whether it renders them); Llama 2's layout has no place for them.
    """
    if not isinstance(rec, Mapping):
        return None, _not_object(rec, "'messages' (or ShareGPT 'conversations')")
    if "messages" in rec:
        msgs = rec["messages"]
        if isinstance(msgs, list) and not allow_tool:
            for i, m in enumerate(msgs):
                if isinstance(m, Mapping) and str(m.get("role", "")).lower() in _TOOL_ROLES:
                    return None, _tool_problem(f"messages[{i}].role", m.get("role"))
                if isinstance(m, Mapping) and m.get("tool_calls"):
                    return None, _tool_problem(f"messages[{i}]", "tool_calls")
        return msgs, None
    if "conversations" in rec:
        return sharegpt_to_messages(rec["conversations"])
    return None, f"missing the field 'messages' (or ShareGPT 'conversations'); it has {sorted(map(str, rec))}"


def resolve_chat_template(tokenizer: Any, template: str) -> str:
    """``auto`` -> ``model`` when the tokenizer carries a chat template, else ``llama2_chat``.

    Llama 2's layout needs a BOS and an EOS token; a tokenizer with neither a template nor a
    BOS (most modern BPE tokenizers shipped without their config) gets one paragraph.
    """
    if template not in CHAT_TEMPLATES:
        raise DataSettingError(
            f"dataset.template={template!r} is not a layout of ChatDataset (format=chat); the valid ones are "
            f"{', '.join(repr(t) for t in CHAT_TEMPLATES)}. Set dataset.template=model (the chat template "
            f"the tokenizer carries), dataset.template=llama2_chat (Llama 2's [INST] turns) or "
            f"dataset.template=auto (the first when there is one).")
    if template == "model" and isinstance(tokenizer, Tokenizer) and not tokenizer_chat_template(tokenizer):
        raise DataSettingError(
            f"dataset.template=model uses the chat template the model ships, but the tokenizer "
            f"{str(getattr(tokenizer, 'path', type(tokenizer).__name__))!r} carries none (a "
            f"SentencePiece tokenizer.model never does). Use a tokenizer.json with its "
            f"tokenizer_config.json (tokenizer=hf), or set dataset.template=llama2_chat (or auto).")
    if template != "auto" or not isinstance(tokenizer, Tokenizer):
        return "llama2_chat" if template == "auto" else template
    if tokenizer_chat_template(tokenizer):
        return "model"
    if getattr(tokenizer, "bos_id", None) is None or getattr(tokenizer, "eos_id", None) is None:
        raise DataSettingError(
            f"dataset.template=auto: the tokenizer {str(getattr(tokenizer, 'path', ''))!r} carries no chat "
            f"template and has no BOS token, so neither the model's layout nor Llama 2's [INST] layout "
            f"fits. Put the model's tokenizer_config.json (with its chat_template) or chat_template.jinja "
            f"beside the tokenizer, or train on instruction data (dataset=alpaca).")
    if type(tokenizer).__name__ != "SentencePieceTokenizer":  # Llama 2's own tokenizer: expected
        print(f"tunekit: note: the tokenizer {str(getattr(tokenizer, 'path', ''))!r} carries no chat "
              f"template; chat data uses Llama 2's [INST] layout (set dataset.template to choose).",
              file=sys.stderr, flush=True)
    return "llama2_chat"


def _chat_format(tokenizer: Any, template: str, train_on_input: bool) -> Format:
    layout = resolve_chat_template(tokenizer, template)
    check_msgs = check_chat_messages if layout == "model" else validate_messages

    allow_tool = layout == "model"

    def check(rec: Any) -> str | None:
        msgs, problem = chat_messages(rec, allow_tool=allow_tool)
        return problem or check_msgs(msgs)

    def encode(rec: Any) -> tuple[list[int], list[bool]]:
        msgs, _ = chat_messages(rec, allow_tool=allow_tool)
        if layout == "model":
            return chat_tokens(tokenizer, msgs, train_on_input=train_on_input)
        return tokenize_llama2_chat(tokenizer, msgs, train_on_input=train_on_input)

    hint = ("Each row needs 'messages' (an optional 'system' message, then 'user' and 'assistant' "
            "alternating, each {'role', 'content'}, ending with 'assistant') or ShareGPT 'conversations' "
            "({'from': 'human'|'gpt'|'system', 'value'}).")
    return Format("chat", ("messages",), (), check, encode, hint,
                  "each assistant reply and its end-of-turn tokens (train_on_input: all but BOS)",
                  alternatives={"messages": ("conversations",)}, template=layout)


def _instruct_format(tokenizer: Any, template: str, train_on_input: bool) -> Format:
    if template not in INSTRUCT_TEMPLATES:
        raise DataSettingError(
            f"dataset.template={template!r} is not a template of the instruct format; the valid "
            f"ones are {', '.join(repr(t) for t in sorted(INSTRUCT_TEMPLATES))}. Set e.g. "
            f"dataset.template=alpaca (the Stanford Alpaca prompt) or "
            f"dataset.template=llama2_chat (the record as one [INST] turn).")
    tokenize = INSTRUCT_TEMPLATES[template]

    def encode(rec: Any) -> tuple[list[int], list[bool]]:
        return tokenize(tokenizer, rec["instruction"], rec.get("input") or "", rec["output"],
                        train_on_input=train_on_input)

    return Format("instruct", ("instruction", "output"), ("input",), check_instruct_record, encode,
                  "Each record needs string fields 'instruction' and 'output', and may have 'input'.",
                  "the response and its EOS (train_on_input: all but BOS)", template=template)


def check_text_record(rec: Any) -> str | None:
    if not isinstance(rec, Mapping):
        return _not_object(rec, "'text'")
    if "text" not in rec:
        return f"missing the field 'text' (it has {sorted(map(str, rec))})"
    if not isinstance(rec["text"], str):
        return f"field 'text' must be a string, got {describe_value(rec['text'])}"
    return None


def _text_format(tokenizer: Any) -> Format:
    def encode(rec: Any) -> tuple[list[int], list[bool]]:
        ids = tokenizer.encode(rec["text"], add_bos=True, add_eos=True)
        return ids, [True] * len(ids)

    return Format("text", ("text",), (), check_text_record, encode,
                  "Each row needs a string 'text' (or give .txt files: one document per file).",
                  "every token (documents joined with EOS, cut into max_seq_len windows)")


def check_preference_record(rec: Any) -> str | None:
    """What is wrong with a preference record (``prompt``, ``chosen``, ``rejected`` strings), or None."""
    if not isinstance(rec, Mapping):
        return _not_object(rec, "'prompt', 'chosen' and 'rejected'")
    for key in ("prompt", "chosen", "rejected"):
        if key not in rec:
            return f"missing the field '{key}' (it has {sorted(map(str, rec))})"
        if not isinstance(rec[key], str):
            return f"field '{key}' must be a string, got {describe_value(rec[key])}"
    if rec["chosen"] == rec["rejected"]:
        return "'chosen' and 'rejected' are the same text, so there is no preference to learn"
    return None


def _preference_format(tokenizer: Any) -> Format:
    def encode(rec: Any) -> tuple[list[int], list[bool]]:
        raise DataSettingError("the preference format is tokenized by the preference data set (DPO).")

    return Format("preference", ("prompt", "chosen", "rejected"), (), check_preference_record, encode,
                  "Each record needs string fields 'prompt', 'chosen' and 'rejected'.",
                  "chosen and rejected responses (DPO)")


def make_format(name: str, tokenizer: Any, *, template: str | None = None, train_on_input: bool = False) -> Format:
    """The :class:`Format` called ``name`` for this tokenizer; a bad name or template is one paragraph."""
    if name == "instruct":
        return _instruct_format(tokenizer, template or "alpaca", bool(train_on_input))
    if name == "chat":
        return _chat_format(tokenizer, template or "auto", bool(train_on_input))
    if name == "text":
        return _text_format(tokenizer)
    if name == "preference":
        return _preference_format(tokenizer)
    raise DataSettingError(
        f"dataset.format={name!r} is not a data format; the formats are {', '.join(FORMATS)}. Set "
        f"dataset.format=instruct (Alpaca records), chat (messages or ShareGPT), or text (raw text).")


def encode_or_raise(fmt: Format, rec: Any, where: str) -> tuple[list[int], list[bool]]:
    """``fmt.encode(rec)``; a template's refusal is named by file and row."""
    try:
        return fmt.encode(rec)
    except ChatTemplateError as e:
        raise DataFormatError(f"{where}: {e}") from None
