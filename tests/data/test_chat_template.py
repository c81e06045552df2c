"""Model chat templates: ids equal transformers' apply_chat_template; loss masks from prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tokenizers._tokenizer_files import chatml_dir, llama3_hf_dir, llama3_meta_dir, mistral_dir
from tunekit.data import (
    ChatDataset,
    ChatTemplateError,
    DataFormatError,
    DataSettingError,
    chat_generation_tokens,
    chat_tokens,
    render_chat,
)
from tunekit.tokenizers import LLAMA3_CHAT_TEMPLATE, tiny_hf_tokenizer, tiny_tokenizer, tokenizer_from_dir

transformers = pytest.importorskip("transformers")

SINGLE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "The capital of France is Paris."}]
SYSTEM_MULTI = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And café 日本 🦙 <|im_end|> [INST] </s>?"},
    {"role": "assistant", "content": "  Still four, naïvely.  "},
]
CONVERSATIONS = {"single": SINGLE, "system_multi": SYSTEM_MULTI}

# What the loss is taken on, per layout: each reply and what closes its turn.
EXPECTED_TARGETS = {
    ("chatml", "single"): "The capital of France is Paris.<|im_end|>\n",
    ("chatml", "system_multi"): "4.<|im_end|>\n  Still four, naïvely.  <|im_end|>\n",
    ("llama3", "single"): "The capital of France is Paris.<|eot_id|>",
    ("llama3", "system_multi"): "4.<|eot_id|>Still four, naïvely.<|eot_id|>",
    ("mistral", "single"): " The capital of France is Paris.</s>",
    ("mistral", "system_multi"): "4.</s>   Still four, naïvely.  </s>",
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("chat")
    return {"chatml": chatml_dir(), "llama3": llama3_hf_dir(base / "llama3"), "mistral": mistral_dir(base / "mistral")}


def _target_text(tok, ids: list[int], targets: list[bool]) -> str:
    return tok.decode([i for i, t in zip(ids, targets) if t], skip_special=False)


@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.parametrize("layout", ["chatml", "llama3", "mistral"])
def test_ids_equal_apply_chat_template_and_mask_covers_the_replies(dirs: dict[str, Path], layout: str, conv: str) -> None:
    tok = tokenizer_from_dir(dirs[layout])
    ref = transformers.AutoTokenizer.from_pretrained(dirs[layout])
    messages = CONVERSATIONS[conv]
    assert render_chat(tok.chat_template, messages, special_tokens=tok.special_tokens) == ref.apply_chat_template(
        messages, tokenize=False)
    ids, targets = chat_tokens(tok, messages)
    assert ids == ref.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert len(targets) == len(ids)
    got = _target_text(tok, ids, targets)
    want = EXPECTED_TARGETS[(layout, conv)]
    # Mistral's decoder strips the first space of what it decodes: compare the words.
    assert got.split() == want.split(), (got, want)
    # The prompt side (system, user turns, headers) is never a target.
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"].strip() not in got
    all_ids, all_targets = chat_tokens(tok, messages, train_on_input=True)
    assert all_ids == ids and all(all_targets[1:]) and all_targets[0] == (ids[0] != tok.bos_id)
    # The generation prompt: everything before the last reply, plus the opened assistant turn.
    gen = chat_generation_tokens(tok, messages[:-1])
    assert gen == ref.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)


def test_meta_llama3_uses_the_llama3_layout(tmp_path: Path) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from tunekit.tokenizers import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS

    d = llama3_meta_dir(tmp_path / "meta")
    tok = tokenizer_from_dir(d)
    assert tok.chat_template == LLAMA3_CHAT_TEMPLATE
    rust = TikTokenConverter(str(d / "tokenizer.model"), pattern=LLAMA3_PATTERN,
                             extra_special_tokens=list(LLAMA3_SPECIAL_TOKENS)).converted()
    ref = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<|begin_of_text|>",
                                               eos_token="<|end_of_text|>")
    ref.chat_template = LLAMA3_CHAT_TEMPLATE
    ids, targets = chat_tokens(tok, SYSTEM_MULTI)
    assert ids == ref.apply_chat_template(SYSTEM_MULTI, tokenize=True, return_dict=False)
    assert ids[0] == tok.bos_id and not targets[0]
    assert _target_text(tok, ids, targets) == "4.<|eot_id|>Still four, naïvely.<|eot_id|>"


def test_template_globals_match_transformers(dirs: dict[str, Path]) -> None:
    template = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools: ' + m['content']) }}"
                "{% endif %}{{ m | tojson }}{% if loop.last %}{% break %}{% endif %}\n{% endfor %}"
                "{% if add_generation_prompt %}<{{ bos_token }}|{{ eos_token }}>{% endif %}")
    messages = [{"role": "user", "content": "é<&>"}, {"role": "assistant", "content": "x"}]
    ref = transformers.AutoTokenizer.from_pretrained(dirs["llama3"])
    tok = tokenizer_from_dir(dirs["llama3"])
    ours = render_chat(template, messages, add_generation_prompt=True, special_tokens=tok.special_tokens)
    assert ours == ref.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert '"é<&>"' in ours and "<<|begin_of_text|>|<|eot_id|>>" in ours
    with pytest.raises(ChatTemplateError, match="refuses these messages: no tools: t"):
        render_chat(template, [{"role": "tool", "content": "t"}])
    with pytest.raises(ChatTemplateError, match=r"not valid Jinja \(line 1"):
        render_chat("{% for m in messages %}", messages)
    # Reasoning given under another name reaches the template as reasoning_content, as in transformers.
    think = "{% for m in messages %}{{ m.reasoning_content }}|{{ m.thinking }}|{{ m.content }};{% endfor %}"
    with_reasoning = [{"role": "assistant", "content": "a", "reasoning": "r"}]
    assert render_chat(think, with_reasoning) == ref.apply_chat_template(with_reasoning, chat_template=think,
                                                                          tokenize=False) == "r|r|a;"
    # {% generation %} tags are accepted and render their body.
    tagged = "{% for m in messages %}{% generation %}[{{ m['content'] }}]{% endgeneration %}{% endfor %}"
    assert render_chat(tagged, messages) == "[é<&>][x]"


def test_template_refusals_and_bad_messages_are_one_paragraph(dirs: dict[str, Path]) -> None:
    tok = tokenizer_from_dir(dirs["mistral"])
    bad_order = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(ChatTemplateError, match="must alternate user/assistant"):
        chat_tokens(tok, bad_order)
    with pytest.raises(ChatTemplateError, match=r"messages\[1\].content must be a string"):
        chat_tokens(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": 3}])
    with pytest.raises(ChatTemplateError, match="no 'assistant' turn"):
        chat_tokens(tok, [{"role": "user", "content": "a"}])
    with pytest.raises(ChatTemplateError, match="carries no chat template"):
        chat_tokens(tiny_tokenizer(), SINGLE)


def test_a_template_that_rewrites_past_replies_is_refused(dirs: dict[str, Path]) -> None:
    # Earlier replies lose their reasoning once a later turn exists (as reasoning models' templates do).
    template = ("{% for m in messages %}{% set c = m['content'] %}"
                "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
                "<{{ m['role'] }}>{{ c }}</{{ m['role'] }}>{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>hm</think>a"},
                {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    tok = tiny_hf_tokenizer()
    with pytest.raises(ChatTemplateError) as e:
        chat_tokens(tok, messages, template=template)
    assert "messages[1]" in str(e.value) and "train_on_input=true" in str(e.value)
    ids, targets = chat_tokens(tok, messages, template=template, train_on_input=True)
    assert all(targets)
    single, mask = chat_tokens(tok, messages[:2], template=template)
    assert _target_text(tok, single, mask) == "<think>hm</think>a</assistant>"


def test_chat_dataset_with_the_model_template(dirs: dict[str, Path], tmp_path: Path) -> None:
    tok = tokenizer_from_dir(dirs["llama3"])
    ds = ChatDataset(tok, "chat_tiny", template="model", max_seq_len=256, split="all")
    default = ChatDataset(tiny_tokenizer(), "chat_tiny", max_seq_len=256, split="all")
    assert ds.template == "model" and default.template == "llama2_chat" and len(ds) == len(default)
    first = ds[0]
    assert first["tokens"][0] == tok.bos_id and tok.token_to_id("<|start_header_id|>") in first["tokens"]
    learned = [t for t in first["labels"] if t != -100]
    assert learned and learned[-1] == tok.token_to_id("<|eot_id|>")
    # The same conversation through chat_tokens gives the same sample.
    rows = [json.loads(x) for x in Path(ds.source).read_text().splitlines()]
    ids, targets = chat_tokens(tok, rows[ds.rows[0] - 1]["messages"])
    assert first["tokens"] == ids[:256]
    assert first["labels"] == [t if k else -100 for t, k in zip(ids[1:], targets[1:])][:256] + [-100] * (len(first["tokens"]) - len(ids) + 1)


def test_chat_dataset_model_template_errors(dirs: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps({"messages": SINGLE}) + "\n" + json.dumps({"messages": SINGLE[::-1] + SINGLE}) + "\n")
    with pytest.raises(DataFormatError) as e:
        ChatDataset(tokenizer_from_dir(dirs["mistral"]), src, template="model", split="all")
    msg = str(e.value)
    assert str(src) in msg and "line 2" in msg and "must alternate" in msg and "\n" not in msg
    with pytest.raises(DataSettingError) as e:
        ChatDataset(tiny_tokenizer(), src, template="model", split="all")
    assert "carries none" in str(e.value) and "dataset.template=llama2_chat" in str(e.value)
    with pytest.raises(DataSettingError, match="dataset.template='chatml' is not a layout of ChatDataset"):
        ChatDataset(tiny_hf_tokenizer(), src, template="chatml")
