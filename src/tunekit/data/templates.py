"""Prompt templates: Stanford Alpaca and the Llama 2 chat format.

Every ``tokenize_*`` function returns ``(tokens, targets)``: the token ids and, per token,
whether the model is trained to produce it (``True``) or only reads it (``False``). Datasets
turn that into shifted labels. BOS tokens are never targets.

Token layouts (``|`` separates what is read from what is a target when ``train_on_input`` is
False):

* Alpaca: ``<s> {prompt} | {output}</s>``, where ``{prompt}`` is the exact Stanford Alpaca
  text ending in ``"### Response:\\n"`` and prompt + output are encoded as one string (as the
  Stanford training code does), so the output's first piece has no leading ``"▁"``.
* Llama 2 chat: per user/assistant pair one segment
  ``<s> [INST] {user} [/INST] | {assistant} </s>``, each encoded as one string like Meta's
  reference ``chat_completion``; a system message is folded into the first user message as
  ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}``. ``[INST]`` and ``<<SYS>>`` are plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunekit.data._loading import describe_value
from tunekit.tokenizers import Tokenizer

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

Message = Mapping[str, Any]

#: The roles of a Llama 2 chat conversation.
CHAT_ROLES = ("system", "user", "assistant")
#: Role names of other chat formats (ShareGPT, OpenAI tools, ...) and what they mean here.
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                 "ai": "assistant", "chatgpt": "assistant", "prompter": "user", "sys": "system"}


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Stanford Alpaca prompt, with the ``### Input:`` block only when ``input`` is non-empty."""
    if input:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def _bos(tokenizer: Tokenizer) -> list[int]:
    """``[bos_id]``, or nothing for a tokenizer without a BOS token (Qwen's ``tokenizer.json``)."""
    bos = getattr(tokenizer, "bos_id", None)
    return [] if bos is None else [bos]


def _encode_pair(tokenizer: Tokenizer, prompt: str, full: str) -> tuple[list[int], int]:
    """Encode ``full`` (which starts with ``prompt``) and return (ids, ids that belong to prompt).

    Encoding the whole string keeps SentencePiece's tokenization of the joint text; the
    boundary is where the prompt's own encoding stops matching (pieces never span the boundary
    in these templates, which end the prompt with ``"\\n"`` or ``"]"``).
    """
    ids = tokenizer.encode(full, add_bos=False, add_eos=False)
    prompt_ids = tokenizer.encode(prompt, add_bos=False, add_eos=False)
    n = 0
    for a, b in zip(ids, prompt_ids):
        if a != b:
            break
        n += 1
    return ids, n


def tokenize_alpaca(
    tokenizer: Tokenizer,
    instruction: str,
    input: str,
    output: str,
    *,
    train_on_input: bool = False,
) -> tuple[list[int], list[bool]]:
    """Tokenize one Alpaca record as ``<s>{prompt}{output}</s>``.

    Args:
        tokenizer: the tokenizer.
        instruction: the task.
        input: optional context ("" for none).
        output: the response.
        train_on_input: also train on the prompt tokens.
    """
    prompt = alpaca_prompt(instruction, input)
    ids, n_prompt = _encode_pair(tokenizer, prompt, prompt + output)
    head = _bos(tokenizer)
    tokens = head + ids + [tokenizer.eos_id]
    targets = [False] * len(head) + [train_on_input or i >= n_prompt for i in range(len(ids))] + [True]
    return tokens, targets


def alpaca_generation_tokens(tokenizer: Tokenizer, instruction: str, input: str = "") -> list[int]:
    """The tokens to generate an Alpaca response from: ``<s>{prompt}``."""
    return tokenizer.encode(alpaca_prompt(instruction, input), add_bos=True, add_eos=False)


def message_list_problem(messages: Any, roles: Sequence[str]) -> str | None:
    """What is wrong with the shape of a ``messages`` list, or None: a non-empty list of objects,
    each with a string ``role`` among ``roles`` and a string ``content`` (the order of turns is
    the caller's rule)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return f"'messages' must be a list of {{'role', 'content'}} objects, got {describe_value(messages)}"
    if not messages:
        return "'messages' is empty (a conversation needs a 'user' and an 'assistant' message)"
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            return f"messages[{i}] must be an object with 'role' and 'content', got {describe_value(m)}"
        for key in ("role", "content"):
            if key not in m:
                return f"messages[{i}] is missing the field '{key}' (it has {sorted(map(str, m))})"
            if not isinstance(m[key], str):
                parts = (" (OpenAI content parts [{'type': 'text', 'text': ...}] are not read: join their "
                         "texts into one string)" if key == "content" and isinstance(m[key], list) else "")
                return f"messages[{i}].{key} must be a string, got {describe_value(m[key])}{parts}"
        if m["role"] not in roles:
            alias = _ROLE_ALIASES.get(m["role"].lower())
            fix = f" (write {alias!r})" if alias else ""
            return (f"messages[{i}].role {m['role']!r} is not a known role{fix}; roles are "
                    f"{', '.join(repr(r) for r in roles)}")
    return None


def validate_messages(messages: Any, *, final_role: str = "assistant") -> str | None:
    """Return a description of what is wrong with a Llama 2 chat ``messages`` list, or None.

    Valid: an optional leading ``system`` message, then ``user`` and ``assistant`` messages
    alternating, starting with ``user`` and ending with ``final_role``; each message a mapping
    with a string ``role`` and a string ``content``.
    """
    problem = message_list_problem(messages, CHAT_ROLES)
    if problem is not None:
        return problem
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return f"messages[{roles.index('system', 1)}] is a 'system' message; only the first message may be one"
    body = roles[1:] if roles[0] == "system" else roles
    if not body:
        return "'messages' has only a system message (no user or assistant turn)"
    for i, role in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            pos = i + (len(roles) - len(body))
            return (f"messages[{pos}].role is {role!r} but {want!r} was expected (an optional "
                    f"'system' first, then 'user' and 'assistant' alternating)")
    if body[-1] != final_role:
        if final_role == "assistant" and "assistant" not in body:
            return ("'messages' has no 'assistant' turn, so there is no reply to train on: the "
                    "last message must be from 'assistant'")
        return f"the last message must be from {final_role!r}, got {body[-1]!r}"
    return None


def _fold_system(messages: Sequence[Message]) -> list[Message]:
    if messages[0]["role"] != "system":
        return list(messages)
    first = messages[1]
    merged = {"role": first["role"], "content": B_SYS + messages[0]["content"] + E_SYS + first["content"]}
    return [merged, *messages[2:]]


def _check(messages: Sequence[Message], final_role: str) -> list[Message]:
    problem = validate_messages(messages, final_role=final_role)
    if problem:
        raise ValueError(f"Invalid Llama 2 chat messages: {problem}.")
    return _fold_system(messages)


def tokenize_llama2_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    *,
    train_on_input: bool = False,
) -> tuple[list[int], list[bool]]:
    """Tokenize a conversation in the Llama 2 chat format, one BOS...EOS segment per turn.

    Args:
        tokenizer: the tokenizer.
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` ending with
            an assistant message (see ``validate_messages``).
        train_on_input: also train on the ``[INST] ... [/INST]`` tokens.
    """
    dialog = _check(messages, "assistant")
    tokens: list[int] = []
    targets: list[bool] = []
    for user, answer in zip(dialog[::2], dialog[1::2]):
        prompt = f"{B_INST} {user['content'].strip()} {E_INST}"
        ids, n_prompt = _encode_pair(tokenizer, prompt, f"{prompt} {answer['content'].strip()} ")
        head = _bos(tokenizer)
        tokens += head + ids + [tokenizer.eos_id]
        targets += [False] * len(head) + [train_on_input or i >= n_prompt for i in range(len(ids))] + [True]
    return tokens, targets


def llama2_chat_generation_tokens(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[int]:
    """The tokens to generate the next assistant reply from (messages end with ``user``).

    Equals Meta's ``chat_completion`` prompt: the finished pairs as BOS...EOS segments, then
    ``<s>[INST] {user} [/INST]`` with no EOS.
    """
    dialog = _check(messages, "user")
    tokens: list[int] = []
    for user, answer in zip(dialog[:-1:2], dialog[1::2]):
        text = f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} "
        tokens += tokenizer.encode(text, add_bos=True, add_eos=True)
    last = f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}"
    return tokens + tokenizer.encode(last, add_bos=True, add_eos=False)


def instruct_messages(instruction: str, input: str, output: str | None = None) -> list[dict[str, str]]:
    """An instruction record as chat messages (user = instruction + blank line + input)."""
    user = f"{instruction}\n\n{input}" if input else instruction
    msgs = [{"role": "user", "content": user}]
    if output is not None:
        msgs.append({"role": "assistant", "content": output})
    return msgs


def tokenize_instruct_llama2_chat(
    tokenizer: Tokenizer, instruction: str, input: str, output: str, *, train_on_input: bool = False
) -> tuple[list[int], list[bool]]:
    """Tokenize an instruction record with the Llama 2 chat template (one user/assistant pair)."""
    return tokenize_llama2_chat(
        tokenizer, instruct_messages(instruction, input, output), train_on_input=train_on_input
    )


#: Templates ``InstructDataset(template=...)`` accepts.
INSTRUCT_TEMPLATES = {
    "alpaca": tokenize_alpaca,
    "llama2_chat": tokenize_instruct_llama2_chat,
}
