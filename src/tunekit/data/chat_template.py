"""The checkpoint's own Jinja chat template, rendered the way transformers renders it, and the
loss mask of its assistant turns.

``render_chat(template, messages, ...)`` uses the environment transformers'
``apply_chat_template`` uses (jinja2's immutable sandbox with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, the ``raise_exception`` and ``strftime_now``
globals, its ``tojson`` filter, and the special tokens by name: ``bos_token``, ``eos_token``...),
so ``chat_tokens`` gives the ids of ``apply_chat_template(messages, tokenize=True)``: the rendered
text is encoded with special-token strings parsed and nothing added around it.

Which tokens are targets is derived by rendering prefixes, so no ``{% generation %}`` tags are
needed: for assistant message ``i``, the conversation up to ``i`` rendered with
``add_generation_prompt=True`` ends where the reply starts, and the conversation up to and
including ``i`` ends where the reply (with its end-of-turn tokens) ends. Where a template moves
text between turns (Mistral v0.3 puts the system message in the last user turn), the reply's
text is looked up after the previous reply; a template that rewrites the replies themselves
(one that drops past reasoning, say) is refused with one paragraph rather than masked wrongly.
Token boundaries come from encoding the rendered text up to each boundary and comparing with the
whole conversation's ids, so the ids themselves are always those of the whole text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tunekit.data._loading import DataFormatError
from tunekit.data.templates import message_list_problem
from tunekit.tokenizers import Tokenizer

#: Roles a message may have in a training conversation.
ROLES = ("system", "user", "assistant", "tool")


class ChatTemplateError(DataFormatError):
    """The chat template cannot render these messages, or its turns cannot be told apart.

    ``str(err)`` is one paragraph naming the message and the fix.
    """


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers replaces jinja's tojson, which escapes HTML characters.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> Any:
    """Compile a chat template in transformers' environment (cached per template text)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (the mask comes from prefixes)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"The model's chat template is not valid Jinja (line {e.lineno}: {e.message}). Fix the "
            f"`chat_template` of tokenizer_config.json (or chat_template.jinja) beside the tokenizer, or "
            f"restore it from the model's repository.") from None


#: Names a message's reasoning comes under; transformers fills the first two from any of them.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _with_reasoning_aliases(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` with its reasoning under every name templates read (as transformers)."""
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return dict(message)
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                special_tokens: Mapping[str, str] | None = None, **kwargs: Any) -> str:
    """Render ``messages`` with a chat template exactly as ``apply_chat_template(tokenize=False)``.

    Args:
        template: the Jinja template text.
        messages: ``[{"role": ..., "content": ...}, ...]`` (copied; the template never sees yours).
        add_generation_prompt: end with the header that opens an assistant reply.
        special_tokens: ``{"bos_token": "<s>", ...}`` made visible to the template by name.
        **kwargs: further template variables (``tools``, ``enable_thinking``...).

    Raises:
        ChatTemplateError: the template raised (``raise_exception``) or failed on these messages.
    """
    import jinja2

    compiled = compile_template(template)
    variables = {**(special_tokens or {}), "tools": None, "documents": None, **kwargs}
    try:
        return compiled.render(messages=[_with_reasoning_aliases(m) for m in messages],
                               add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the model's chat template refuses these messages: {e}") from None


def tokenizer_chat_template(tokenizer: Tokenizer) -> str | None:
    """The chat template a tokenizer carries (``None`` for one without, such as Llama 2's)."""
    if isinstance(tokenizer, Tokenizer):
        return getattr(tokenizer, "chat_template", None)
    return tokenizer.chat_template  # a stand-in (validate's) raises its own explanation here


def check_chat_messages(messages: Any, *, need_assistant: bool = True) -> str | None:
    """What is wrong with a conversation for a model chat template, or None.

    Each message is an object with a string ``role`` (one of ``ROLES``) and a string ``content``;
    a training conversation needs at least one ``assistant`` message. The order of turns is the
    template's business (it says so through ``raise_exception``).
    """
    problem = message_list_problem(messages, ROLES)
    if problem is not None:
        return problem
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return ("'messages' has no 'assistant' turn, so there is no reply to train on: add the "
                "assistant's reply")
    return None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _template_of(tokenizer: Tokenizer, template: str | None) -> str:
    chosen = template if template is not None else tokenizer_chat_template(tokenizer)
    if not chosen:
        where = getattr(tokenizer, "path", None)
        raise ChatTemplateError(
            f"The tokenizer{f' {str(where)!r}' if where else ''} carries no chat template, so the model's "
            f"chat layout is unknown. Put the model's tokenizer_config.json (with its `chat_template`) or "
            f"chat_template.jinja beside the tokenizer, or use a built-in layout (dataset.template=llama2_chat).")
    return chosen


def _reply_span(text: str, messages: Sequence[Mapping[str, Any]], i: int, full: str, cursor: int,
                special: Mapping[str, str], kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """Where assistant message ``i`` (with what closes its turn) lies in the rendered ``full``.

    ``before`` = messages[:i] with the generation prompt, ``upto`` = messages[:i + 1]; the reply
    is what ``upto`` adds to ``before``. Where ``upto`` is a prefix of ``full`` the span is
    ``[len(before), len(upto))``; where the template renders earlier turns differently once later
    ones exist (Mistral v0.3 moves the system message into the last user turn), the reply (from
    where its content starts to the end of ``upto``) is found in ``full`` after the previous one.
    """
    try:
        before = render_chat(text, messages[:i], add_generation_prompt=True, special_tokens=special, **kwargs)
    except ChatTemplateError:
        if i:
            raise
        before = ""  # a template that cannot render an empty conversation
    upto = render_chat(text, messages[: i + 1], special_tokens=special, **kwargs)
    if upto.startswith(before) and full.startswith(upto):
        return len(before), len(upto)
    # The reply starts where this turn's rendering stops agreeing with the same turn rendered
    # around another content (two, so a reply that starts like the template's own text is not
    # cut short); it ends with the rendering, end-of-turn tokens included.
    start = len(upto)
    for other in ("", "\x07"):
        alt = render_chat(text, [*messages[:i], {**messages[i], "content": other}], special_tokens=special, **kwargs)
        start = min(start, _common_prefix(upto, alt))
    reply = upto[start:]
    at = full.find(reply, cursor) if reply else -1
    if at < 0:
        raise ChatTemplateError(
            f"The model's chat template renders messages[{i}] (an assistant reply) differently once later "
            f"messages follow (it rewrites or drops earlier turns), so the reply's tokens cannot be "
            f"located by rendering prefixes. Train on every token (train_on_input=true), split the "
            f"conversation into one row per assistant reply, or use a chat template whose earlier turns "
            f"do not depend on later ones.")
    return at, at + len(reply)


def chat_tokens(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], *, train_on_input: bool = False,
                template: str | None = None, **template_kwargs: Any) -> tuple[list[int], list[bool]]:
    """Tokenize a conversation with the model's chat template, and say which tokens are targets.

    Args:
        tokenizer: a tokenizer with a ``chat_template`` (HF, tiktoken) or any tokenizer with
            ``template`` given.
        messages: the conversation; see :func:`check_chat_messages`.
        train_on_input: every token is a target (but a leading BOS); by default only the
            assistant replies and what the template closes them with (``<|eot_id|>``,
            ``<|im_end|>``, ``</s>``).
        template: a Jinja template to use instead of the tokenizer's.
        **template_kwargs: further template variables.

    Returns:
        ``(tokens, targets)``; ``tokens`` equals ``apply_chat_template(messages, tokenize=True)``.

    Raises:
        ChatTemplateError: bad messages, a template that refuses them, no template, or one whose
            rendering of a prefix is not a prefix of the whole conversation.
    """
    problem = check_chat_messages(messages)
    if problem:
        raise ChatTemplateError(f"Invalid chat messages: {problem}.")
    text = _template_of(tokenizer, template)
    special = getattr(tokenizer, "special_tokens", None) or {}
    full = render_chat(text, messages, special_tokens=special, **template_kwargs)
    ids = tokenizer.encode(full, add_bos=False, add_eos=False)
    bos = getattr(tokenizer, "bos_id", None)
    if train_on_input:
        return ids, [not (i == 0 and t == bos) for i, t in enumerate(ids)]
    targets = [False] * len(ids)
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        a, b = _reply_span(text, messages, i, full, cursor, special, template_kwargs)
        if b <= a:
            continue
        cursor = b
        start = _common_prefix(tokenizer.encode(full[:a], add_bos=False, add_eos=False), ids) if a else 0
        end = _common_prefix(tokenizer.encode(full[:b], add_bos=False, add_eos=False), ids)
        for k in range(start, end):
            targets[k] = True
    return ids, targets


def chat_generation_tokens(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], *,
                           template: str | None = None, **template_kwargs: Any) -> list[int]:
    """The tokens to generate the next assistant reply from: the conversation rendered with
    ``add_generation_prompt=True`` (equals ``apply_chat_template(..., add_generation_prompt=True)``)."""
    problem = check_chat_messages(messages, need_assistant=False)
    if problem:
        raise ChatTemplateError(f"Invalid chat messages: {problem}.")
    special = getattr(tokenizer, "special_tokens", None) or {}
    text = render_chat(_template_of(tokenizer, template), messages, add_generation_prompt=True,
                       special_tokens=special, **template_kwargs)
    return tokenizer.encode(text, add_bos=False, add_eos=False)
