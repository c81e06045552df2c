"""Bad input, tokenizer class: HF tokenizer.json and its config, Meta Llama 3 tiktoken files, and
model chat templates, through the real recipe.

Every case runs ``python -m recipes.lora_finetune`` with a tokenizer (``tokenizer=hf`` /
``tokenizer=llama3``) or chat data set (``dataset.template=model``) that cannot work and asserts
exit status 1, no traceback, one paragraph that names the file / key / row and the fix, that the
user's files are byte-identical afterwards and that no checkpoint was saved. Each run fails while
the tokenizer or the data set is built, before any training step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability._harness import assert_unchanged, assert_user_error, run_recipe, snapshot
from tunekit.tokenizers import TINY_HF_TOKENIZER_DIR, TINY_TOKENIZER_PATH

FAST = ["epochs=1", "max_steps_per_epoch=2", "batch_size=4", "metric_logger.also_stdout=false"]
TOKENIZER_JSON = (TINY_HF_TOKENIZER_DIR / "tokenizer.json").read_bytes()
CONFIG = json.loads((TINY_HF_TOKENIZER_DIR / "tokenizer_config.json").read_text())
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def _run(tmp_path: Path, files: dict[str, bytes], *overrides: str) -> tuple[str, Path]:
    """Write ``files`` under tmp/user, run the recipe, check nothing there moved and nothing was saved."""
    user = tmp_path / "user"
    user.mkdir()
    for name, content in files.items():
        (user / name).write_bytes(content)
    before = snapshot(user)
    run = tmp_path / "run"
    proc = run_recipe("lora_finetune", run, *[o.replace("USER", str(user)) for o in overrides], *FAST)
    assert_unchanged(before, user)
    saved = sorted(p.name for p in run.glob("*") if p.name.startswith(("epoch_", "step_")))
    assert not saved, f"a refused run saved {saved}"
    return proc, user


def _config(**changes: object) -> bytes:
    return json.dumps({**CONFIG, **changes}).encode()


HF = ["tokenizer=hf", "tokenizer.path=USER/tokenizer.json"]


def _more_pieces(n: int) -> bytes:
    """The bundled tokenizer.json with ``n`` added tokens past the tiny model's vocabulary."""
    tok = json.loads(TOKENIZER_JSON)
    size = max(t["id"] for t in tok["added_tokens"]) + 1
    tok["added_tokens"] += [{"id": size + i, "content": f"<|extra_{i}|>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True} for i in range(n)]
    return json.dumps(tok).encode()


HF_CASES = {
    "lfs_pointer": ({"tokenizer.json": b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 7\n",
                     "tokenizer_config.json": _config()},
                    ["tokenizer.json", "Git LFS pointer", "git lfs pull", "tunekit download"]),
    "sentencepiece_model_as_tokenizer_json": ({"tokenizer.json": TINY_TOKENIZER_PATH.read_bytes()},
                                              ["tokenizer.json", "is a SentencePiece model", "tokenizer=llama2"]),
    "more_pieces_than_the_model": ({"tokenizer.json": _more_pieces(4), "tokenizer_config.json": _config()},
                                   ["tokenizer.json", "516 pieces", "512 rows", "tokenizer=auto",
                                    "checkpointer.checkpoint_dir"]),
    "config_missing": ({"tokenizer.json": TOKENIZER_JSON},
                       ["tokenizer_config.json' is missing", "Copy the model's tokenizer_config.json", "tunekit download"]),
    "config_not_json": ({"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": b'{"eos_token": "<|im_end|>",\n}'},
                        ["tokenizer_config.json", "is not valid JSON (line 2", "tunekit download"]),
    "config_from_another_model": ({"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": _config(eos_token="</s>")},
                                  ["tokenizer_config.json", "eos_token='</s>'", "has no such token",
                                   "restore both from the same repository"]),
    "bad_chat_template_list": ({"tokenizer.json": TOKENIZER_JSON,
                                "tokenizer_config.json": _config(chat_template=[{"name": "rag", "template": "x"}])},
                               ["tokenizer_config.json", "none is named 'default'", "chat_template.jinja"]),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_bad_hf_tokenizer_files(tmp_path: Path, case: str) -> None:
    files, needles = HF_CASES[case]
    proc, user = _run(tmp_path, files, *HF)
    assert_user_error(proc, str(user), *needles)


def _tiktoken_lines() -> list[str]:
    import base64

    return [base64.b64encode(bytes([b])).decode() + f" {b}" for b in range(256)]


LLAMA3_CASES = {
    "sentencepiece_model": (TINY_TOKENIZER_PATH.read_bytes(), ["is a SentencePiece model", "tokenizer=llama2"]),
    "bad_line": ("\n".join(_tiktoken_lines()[:40] + ["QUJD"] + _tiktoken_lines()[41:]).encode(),
                 ["line 41 is 'QUJD', not '<base64 token> <rank>'", "original/tokenizer.model"]),
}


@pytest.mark.parametrize("case", list(LLAMA3_CASES))
def test_bad_llama3_tiktoken_file(tmp_path: Path, case: str) -> None:
    content, needles = LLAMA3_CASES[case]
    proc, user = _run(tmp_path, {"tokenizer.model": content}, "tokenizer=llama3", "tokenizer.path=USER/tokenizer.model")
    assert_user_error(proc, str(user / "tokenizer.model"), "is not a tiktoken BPE file", *needles)


def test_model_template_with_a_tokenizer_that_has_none(tmp_path: Path) -> None:
    proc, user = _run(tmp_path, {"chat.jsonl": (json.dumps(CHAT) + "\n").encode()},
                      "dataset=chat", "dataset.source=USER/chat.jsonl", "dataset.template=model")
    assert_user_error(proc, "dataset.template=model", "carries none", "tokenizer=hf", "dataset.template=llama2_chat")


def test_unknown_chat_layout_is_named(tmp_path: Path) -> None:
    proc, _ = _run(tmp_path, {"chat.jsonl": (json.dumps(CHAT) + "\n").encode()},
                   "dataset=chat", "dataset.source=USER/chat.jsonl", "dataset.template=chatml")
    assert_user_error(proc, "dataset.template='chatml'", "'llama2_chat', 'model'", "dataset.template=model")


def test_row_the_model_template_refuses_is_named(tmp_path: Path) -> None:
    tool = {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "{}"},
                         {"role": "assistant", "content": "Hello."}]}
    rows = "".join(json.dumps(r) + "\n" for r in [CHAT, CHAT, tool, CHAT])
    files = {"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": _config(), "chat.jsonl": rows.encode()}
    proc, user = _run(tmp_path, files, *HF, "dataset=chat", "dataset.source=USER/chat.jsonl",
                      "dataset.template=model", "dataset.val_fraction=0")
    assert_user_error(proc, str(user / "chat.jsonl"), "line 3", "chat template refuses these messages",
                      "Unknown role tool")


def test_chat_template_that_is_not_jinja(tmp_path: Path) -> None:
    files = {"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": _config(),
             "chat_template.jinja": b"{% for m in messages %}{{ m['content'] }}\n",
             "chat.jsonl": (json.dumps(CHAT) + "\n").encode()}
    proc, user = _run(tmp_path, files, *HF, "dataset=chat", "dataset.source=USER/chat.jsonl",
                      "dataset.template=model", "dataset.val_fraction=0")
    assert_user_error(proc, str(user / "chat.jsonl"), "line 1", "not valid Jinja", "chat_template.jinja")


def test_tokenizer_json_missing_beside_a_tokenizer_model(tmp_path: Path) -> None:
    proc, user = _run(tmp_path, {"tokenizer.model": TINY_TOKENIZER_PATH.read_bytes()}, *HF)
    assert_user_error(proc, str(user / "tokenizer.json"), "does not exist", "holds tokenizer.model", "tokenizer=auto")
