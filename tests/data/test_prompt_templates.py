"""Exact token layouts of the Alpaca and Llama 2 chat templates."""

from __future__ import annotations

import pytest

from tunekit.data import (
    ALPACA_PROMPT_NO_INPUT,
    ALPACA_PROMPT_WITH_INPUT,
    alpaca_generation_tokens,
    alpaca_prompt,
    llama2_chat_generation_tokens,
    tokenize_alpaca,
    tokenize_llama2_chat,
    validate_messages,
)
from tunekit.tokenizers import SentencePieceTokenizer, tiny_tokenizer


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def test_alpaca_prompts_are_stanford_wording() -> None:
    assert ALPACA_PROMPT_WITH_INPUT == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    )
    assert ALPACA_PROMPT_NO_INPUT == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    )
    assert alpaca_prompt("Add.", "1 + 2").endswith("### Input:\n1 + 2\n\n### Response:\n")
    assert "### Input" not in alpaca_prompt("Say hi.", "")


def test_alpaca_token_layout(tok: SentencePieceTokenizer) -> None:
    prompt = alpaca_prompt("Add the two numbers.", "20 + 22")
    tokens, targets = tokenize_alpaca(tok, "Add the two numbers.", "20 + 22", "42")
    n = len(tok.encode(prompt, add_bos=False, add_eos=False))
    # <s> prompt | 4 2 </s>: the output continues the prompt's "\n" with no dummy "▁".
    assert tokens[: n + 1] == [1] + tok.encode(prompt, add_bos=False, add_eos=False)
    assert [tok.id_to_piece(t) for t in tokens[n + 1 :]] == ["4", "2", "</s>"]
    assert tok.id_to_piece(tokens[n]) == "<0x0A>"  # the prompt's final "\n"
    assert tokens == [1] + tok.encode(prompt + "42", add_bos=False, add_eos=False) + [2]
    assert targets == [False] * (n + 1) + [True] * 3
    # train_on_input: everything but the BOS is a target.
    _, all_targets = tokenize_alpaca(tok, "Add the two numbers.", "20 + 22", "42", train_on_input=True)
    assert all_targets == [False] + [True] * (len(tokens) - 1)
    assert alpaca_generation_tokens(tok, "Add the two numbers.", "20 + 22") == tokens[: n + 1]


def test_alpaca_without_input_layout(tok: SentencePieceTokenizer) -> None:
    tokens, targets = tokenize_alpaca(tok, "Give the opposite of hot.", "", "cold")
    text = tok.decode(tokens, skip_special=False)
    assert text == (
        "<s>Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nGive the opposite of hot.\n\n### Response:\ncold</s>"
    )
    assert tok.decode([t for t, keep in zip(tokens, targets) if keep], skip_special=False) == "cold</s>"


def _meta_dialog_tokens(tok: SentencePieceTokenizer, dialog: list[dict]) -> list[int]:
    """Meta's llama/generation.py chat_completion logic, restated for the test."""
    B_INST, E_INST = "[INST]", "[/INST]"
    B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    out: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        out += tok.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ",
                          add_bos=True, add_eos=True)
    if dialog[-1]["role"] == "user":
        out += tok.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", add_bos=True, add_eos=False)
    return out


DIALOG = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 plus 3 is 5."},
    {"role": "user", "content": "  And one more? "},
    {"role": "assistant", "content": "Then you have 6."},
]


def test_llama2_chat_layout(tok: SentencePieceTokenizer) -> None:
    tokens, targets = tokenize_llama2_chat(tok, DIALOG)
    assert tokens == _meta_dialog_tokens(tok, DIALOG)
    assert tok.decode(tokens, skip_special=False) == (
        "<s>[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is 2 plus 3? [/INST] 2 plus 3 is 5. </s>"
        "<s>[INST] And one more? [/INST] Then you have 6. </s>"
    )
    # Each turn is its own <s>...</s> segment; targets are the answers, their "▁" and </s>.
    assert [i for i, t in enumerate(tokens) if t == 1] == [0, tokens.index(2) + 1]
    seg1 = tokens[: tokens.index(2) + 1]
    p1 = tok.encode("[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is 2 plus 3? [/INST]", add_eos=False)
    a1 = tok.encode("2 plus 3 is 5. ", add_bos=False)  # encoded alone, the dummy prefix gives the "▁"
    assert seg1 == p1 + a1
    p2 = tok.encode("[INST] And one more? [/INST]", add_eos=False)
    a2 = tok.encode("Then you have 6. ", add_bos=False)
    assert tokens == p1 + a1 + p2 + a2
    assert targets == [False] * len(p1) + [True] * len(a1) + [False] * len(p2) + [True] * len(a2)
    assert [tok.id_to_piece(t) for t in a2[-2:]] == ["▁", "</s>"]
    _, t_all = tokenize_llama2_chat(tok, DIALOG, train_on_input=True)
    assert t_all == [t != 1 for t in tokens]


def test_llama2_chat_without_system(tok: SentencePieceTokenizer) -> None:
    msgs = DIALOG[1:3]
    tokens, _ = tokenize_llama2_chat(tok, msgs)
    assert tok.decode(tokens, skip_special=False) == "<s>[INST] What is 2 plus 3? [/INST] 2 plus 3 is 5. </s>"


def test_llama2_generation_prompt(tok: SentencePieceTokenizer) -> None:
    msgs = DIALOG[:4]
    ids = llama2_chat_generation_tokens(tok, msgs)
    assert ids == _meta_dialog_tokens(tok, msgs)
    assert tok.decode(ids, skip_special=False).endswith("</s><s>[INST] And one more? [/INST]")
    assert ids[-1] != 2


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "'messages' is empty"),
        ("hi", "must be a list"),
        ([{"role": "user"}], "messages[0] is missing the field 'content'"),
        ([{"role": "assistant", "content": "x"}], "messages[0].role is 'assistant' but 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1].role is 'user'"),
        ([{"role": "user", "content": "a"}], "last message must be from 'assistant'"),
        ([{"role": "system", "content": "s"}], "only a system message"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], "messages[0].content must be a string"),
    ],
)
def test_validate_messages(messages, problem: str) -> None:
    assert problem in validate_messages(messages)


def test_validate_messages_ok() -> None:
    assert validate_messages(DIALOG) is None
    with pytest.raises(ValueError, match="Invalid Llama 2 chat messages"):
        tokenize_llama2_chat(tiny_tokenizer(), DIALOG[:2])
