"""InstructDataset / ChatDataset: labels, masking, truncation, splits, file errors, bundled data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunekit.data import (
    BUNDLED_DATA,
    ChatDataset,
    DataFormatError,
    DataSettingError,
    InstructDataset,
    alpaca_prompt,
    padded_collate,
    tokenize_llama2_chat,
)
from tunekit.tokenizers import SentencePieceTokenizer, tiny_tokenizer

IGN = -100
RECORDS = [
    {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "What is the capital of Peru?", "output": "The capital of Peru is Lima."},
    {"instruction": "Write the plural of the word.", "input": "", "output": "mice"},
    {"instruction": "Reverse the words.", "input": "sun moon", "output": "moon sun"},
]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


@pytest.fixture()
def alpaca_json(tmp_path: Path) -> Path:
    p = tmp_path / "data.json"
    p.write_text(json.dumps(RECORDS))
    return p


def test_instruct_labels_response_only(tok: SentencePieceTokenizer, alpaca_json: Path) -> None:
    ds = InstructDataset(tok, str(alpaca_json), split="all")
    assert len(ds) == 5 and ds.rows == [1, 2, 3, 4, 5]
    s = ds[1]
    prompt = alpaca_prompt("Give the opposite of the word.", "hot")
    n = 1 + len(tok.encode(prompt, add_bos=False, add_eos=False))
    full = [1] + tok.encode(prompt + "cold", add_bos=False, add_eos=False) + [2]
    assert s["tokens"] == full
    # Shifted: position i predicts token i + 1; only response tokens and EOS are targets.
    assert s["labels"] == [IGN] * (n - 1) + full[n:] + [IGN]
    assert tok.decode([t for t in s["labels"] if t != IGN], skip_special=False) == "cold</s>"
    assert ds[2]["tokens"][: 1 + len(tok.encode(alpaca_prompt("What is the capital of Peru?"), False, False))] == \
        tok.encode(alpaca_prompt("What is the capital of Peru?"), add_eos=False)  # no-input prompt


def test_instruct_train_on_input(tok: SentencePieceTokenizer, alpaca_json: Path) -> None:
    s = InstructDataset(tok, alpaca_json, split="all", train_on_input=True)[0]
    assert s["labels"] == s["tokens"][1:] + [IGN]


def test_instruct_truncation_keeps_true_targets(tok: SentencePieceTokenizer, alpaca_json: Path) -> None:
    full = InstructDataset(tok, alpaca_json, split="all", train_on_input=True)[2]
    cut = InstructDataset(tok, alpaca_json, split="all", train_on_input=True, max_seq_len=20)[2]
    assert len(full["tokens"]) > 20
    assert cut == {"tokens": full["tokens"][:20], "labels": full["labels"][:20]}
    assert cut["labels"][-1] == full["tokens"][20]  # the true next token, no invented EOS
    assert 2 not in cut["tokens"]


def test_llama2_chat_template_for_instructions(tok: SentencePieceTokenizer, alpaca_json: Path) -> None:
    s = InstructDataset(tok, alpaca_json, split="all", template="llama2_chat")[0]
    assert tok.decode(s["tokens"], skip_special=False) == \
        "<s>[INST] Add the two numbers.\n\n2 + 3 [/INST] 5 </s>"
    assert tok.decode([t for t in s["labels"] if t != IGN], skip_special=False) == "5 </s>"
    with pytest.raises(DataSettingError, match=r"dataset.template='vicuna' .* valid ones are 'alpaca', 'llama2_chat'"):
        InstructDataset(tok, alpaca_json, template="vicuna")


def test_split_is_deterministic_and_disjoint(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": str(i)}) + "\n" for i in range(20)))
    train = InstructDataset(tok, p, val_fraction=0.25, split_seed=3)
    val = InstructDataset(tok, p, val_fraction=0.25, split_seed=3, split="validation")
    assert len(train) == 15 and len(val) == 5
    assert sorted(train.rows + val.rows) == list(range(1, 21))
    assert val.rows == InstructDataset(tok, p, val_fraction=0.25, split_seed=3, split="val").rows
    assert val.rows == [4, 6, 7, 9, 16]  # pinned: random.Random(3) over 20 rows
    assert InstructDataset(tok, p, val_fraction=0.25, split_seed=4, split="val").rows != val.rows
    assert len(InstructDataset(tok, p, val_fraction=0.0)) == 20
    with pytest.raises(ValueError, match="val_fraction=0 leaves no validation set"):
        InstructDataset(tok, p, val_fraction=0.0, split="validation")
    with pytest.raises(ValueError, match="split='test' is not one of"):
        InstructDataset(tok, p, split="test")
    with pytest.raises(ValueError, match=r"dataset.val_fraction=1.5 must be a number in \[0, 1\)"):
        InstructDataset(tok, p, val_fraction=1.5)


def test_chat_dataset(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"messages": conv}) + "\n")
    s = ChatDataset(tok, p, split="all")[0]
    tokens, targets = tokenize_llama2_chat(tok, conv)
    assert s["tokens"] == tokens
    assert s["labels"] == [t if keep else IGN for t, keep in zip(tokens[1:], targets[1:])] + [IGN]
    answers = [t for t in s["labels"] if t != IGN]
    assert answers == tok.encode("Hello. ", add_bos=False) + tok.encode("Goodbye. ", add_bos=False)
    s_all = ChatDataset(tok, p, split="all", train_on_input=True)[0]
    # Everything but the second turn's BOS is a target.
    assert s_all["labels"] == [t if t != 1 else IGN for t in tokens[1:]] + [IGN]


def _err(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg  # one paragraph
    return msg


def test_malformed_rows_name_file_row_and_field(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(RECORDS[:2] + [{"instruction": "x", "input": "y"}]))
    with pytest.raises(DataFormatError) as e:
        InstructDataset(tok, p)
    msg = _err(e)
    assert str(p) in msg and "record 3: missing the field 'output'" in msg
    assert "1 malformed row(s) of 3" in msg

    j = tmp_path / "bad.jsonl"
    j.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps({"output": "z"}) + "\n")
    with pytest.raises(DataFormatError) as e:
        InstructDataset(tok, j)
    assert "line 3: missing the field 'instruction'" in _err(e)

    j.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(DataFormatError, match=r"line 2: not valid JSON"):
        InstructDataset(tok, j)

    c = tmp_path / "chat.jsonl"
    ok = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    c.write_text(json.dumps(ok) + "\n" + json.dumps({"messages": [{"role": "user", "content": "a"}]})
                 + "\n" + json.dumps({"msgs": []}) + "\n")
    with pytest.raises(DataFormatError) as e:
        ChatDataset(tok, c)
    msg = _err(e)
    assert "line 2: 'messages' has no 'assistant' turn" in msg and "last message must be from 'assistant'" in msg
    assert "line 3: missing the field 'messages'" in msg

    d = tmp_path / "dict.json"
    d.write_text(json.dumps({"train": RECORDS}))
    with pytest.raises(DataFormatError, match="single JSON object"):
        InstructDataset(tok, d)


def test_missing_file_names_path(tok: SentencePieceTokenizer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        InstructDataset(tok, str(tmp_path / "nope.json"))
    assert str(tmp_path / "nope.json") in str(e.value) and "alpaca_tiny" in str(e.value)


def test_padded_collate(tok: SentencePieceTokenizer) -> None:
    batch = [{"tokens": [1, 5, 6], "labels": [-100, 6, 2]}, {"tokens": [1, 7], "labels": [7, -100]}]
    out = padded_collate(batch, pad_id=2)
    assert torch.equal(out["tokens"], torch.tensor([[1, 5, 6], [1, 7, 2]]))
    assert torch.equal(out["labels"], torch.tensor([[-100, 6, 2], [7, -100, -100]]))
    assert out["tokens"].dtype == torch.long
    assert torch.equal(padded_collate(batch, pad_id=0, ignore_index=-1)["labels"][1], torch.tensor([7, -100, -1]))


def test_bundled_data_sets(tok: SentencePieceTokenizer) -> None:
    alpaca = InstructDataset(tok, "alpaca_tiny", split="all", max_seq_len=10_000)
    chat = ChatDataset(tok, "chat_tiny", split="all", max_seq_len=10_000)
    assert 200 <= len(alpaca) <= 400 and 90 <= len(chat) <= 120
    assert InstructDataset(tok, BUNDLED_DATA["alpaca_tiny"], split="all").rows == alpaca.rows
    a_lens = [len(alpaca[i]["tokens"]) for i in range(len(alpaca))]
    c_lens = [len(chat[i]["tokens"]) for i in range(len(chat))]
    assert max(a_lens) <= 256 and max(c_lens) <= 256
    records = json.loads(BUNDLED_DATA["alpaca_tiny"].read_text())
    assert sum(bool(r["input"]) for r in records) > 50  # both prompt variants occur
    convs = [json.loads(x)["messages"] for x in BUNDLED_DATA["chat_tiny"].read_text().splitlines()]
    assert sum(m[0]["role"] == "system" for m in convs) >= 20
    assert sum(len(m) >= 4 for m in convs) >= 20  # multi-turn
    assert len(InstructDataset(tok, "alpaca_tiny")) + len(InstructDataset(tok, "alpaca_tiny", split="val")) == len(alpaca)
