"""Tokenizer directories in each family's published layout, built offline from the tiny bundled
``tokenizer.json`` (templates written here; the layouts are facts, no template file is copied).

- ChatML (Qwen): the bundled ``src/tunekit/assets/tokenizer/hf`` as it is.
- Llama 3 (HF): Llama 3's pre-tokenizer pattern, its header/turn special tokens, a BOS
  post-processor, ``eos_token=<|eot_id|>`` and a ``generation_config.json`` with two stop ids.
- Llama 3 (Meta): a tiktoken ``tokenizer.model`` holding the tiny vocabulary's bytes as ranks.
- Mistral v0.3: a SentencePiece-like ``tokenizer.json`` (Metaspace + byte fallback) trained
  here, ``[INST]``/``[/INST]`` control tokens and a multi-line template that puts the system
  message into the last user turn.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from tunekit.tokenizers import LLAMA3_CHAT_TEMPLATE, LLAMA3_PATTERN, TINY_HF_TOKENIZER_DIR

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]

MISTRAL_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""

#: Texts every tokenizer must encode exactly like transformers.
TEXTS = [
    "Hello world",
    "  two leading spaces and   runs   of spaces  ",
    "Numbers: 7, 42, 1234567 and 3.14159; year 2024.",
    "Accents: café, naïve, Ångström, façade, Zoë (e\u0301 combining).",
    "CJK: 日本語のテキスト, 中文文本, 한국어 텍스트.",
    "Emoji: 🦙🔥👍🏽 and 👨‍👩‍👧 family",
    "Tabs\tand\nnewlines\n\n\nand \r\n windows",
    "user text with <|im_end|> and <|im_start|>assistant inside",
    "user text with <|eot_id|><|start_header_id|> and [INST] and </s> inside",
    "",
    " ",
    "don't won't I'll we've they're it's",
    "```python\ndef f(x):\n    return x ** 2\n```",
]


def chatml_dir() -> Path:
    """The bundled ChatML (Qwen layout) tokenizer directory."""
    return TINY_HF_TOKENIZER_DIR


def _tiny():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TINY_HF_TOKENIZER_DIR / "tokenizer.json"))


def llama3_hf_dir(d: Path) -> Path:
    """A Llama 3 layout ``tokenizer.json`` + config + generation config in ``d``."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors

    tok = _tiny()
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
        "chat_template": LLAMA3_CHAT_TEMPLATE}))
    (d / "generation_config.json").write_text(json.dumps({
        "bos_token_id": bos, "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]}))
    return d


def llama3_meta_dir(d: Path) -> Path:
    """A Meta-format Llama 3 ``tokenizer.model`` (tiktoken ranks) from the tiny vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decode = {c: b for b, c in bytes_to_unicode().items()}
    tok = _tiny()
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    vocab = sorted(((i, s) for s, i in tok.get_vocab(with_added_tokens=False).items() if s not in special))
    d.mkdir(parents=True, exist_ok=True)
    lines = [base64.b64encode(bytes(decode[c] for c in s)).decode() + f" {rank}" for rank, (_, s) in enumerate(vocab)]
    (d / "tokenizer.model").write_text("\n".join(lines) + "\n")
    return d


def mistral_dir(d: Path) -> Path:
    """A Mistral v0.3 layout: SentencePiece-style ``tokenizer.json`` trained here, its control tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    text = Path(TINY_HF_TOKENIZER_DIR).parents[1] / "text"
    lines = [ln for f in sorted(text.glob("*.txt")) for ln in f.read_text().splitlines() if ln.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                  special_tokens=specials + byte_tokens)
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "clean_up_tokenization_spaces": False}))
    (d / "chat_template.jinja").write_text(MISTRAL_TEMPLATE)
    return d


def with_tokenizer_class(src: Path, dst: Path, tokenizer_class: str) -> Path:
    """A copy of ``src`` whose tokenizer_config.json names ``tokenizer_class`` (as Qwen's and
    Mistral's do), which transformers uses to pick the class it loads the same files with."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    return dst
