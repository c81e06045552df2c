"""What an HF ``tokenizer_config.json`` says for Meta's Llama 3 ``tokenizer.model`` (tiktoken ranks).

Written by ``tunekit convert --to hf`` from a Meta-format Llama 3 directory: transformers reads
the tiktoken file through its TikToken converter with these special tokens (Llama 3.1's names,
numbered after the ranks: 128000 onwards), adds ``<|begin_of_text|>`` to plain text, and renders
Meta's chat layout. The same facts as ``tunekit.tokenizers.LLAMA3_SPECIAL_TOKENS`` /
``LLAMA3_CHAT_TEMPLATE`` (a test checks they agree; the tokenizer room imports no model code).
"""

from __future__ import annotations

from types import MappingProxyType

LLAMA3_SPECIAL_TOKEN_NAMES: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(3, 248)),
)

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA3_TOKENIZER_CONFIG = MappingProxyType({
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
    "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": True,
    "additional_special_tokens": list(LLAMA3_SPECIAL_TOKEN_NAMES), "chat_template": _CHAT_TEMPLATE,
})
