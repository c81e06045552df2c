"""Data: loading (local files, globs, directories, cached Hub sets), formats (instruct, chat, text,
preference), in-memory and streaming data sets, templates, collation and packing.

Samples are ``{"tokens": list[int], "labels": list[int]}`` with labels already shifted
(``labels[i]`` is the target of the prediction at position ``i``, or -100); see
docs/architecture.md, section Data. ``data_report(dataset)`` says, before training, what
truncation leaves to learn.
"""

from tunekit.data._loading import (
    ASSETS_DATA_DIR,
    ASSETS_TEXT_DIR,
    BUNDLED_DATA,
    DataFormatError,
    DataSettingError,
    bundled_text_files,
)
from tunekit.data.build import MixedDataset, load_dataset, mixed_dataset
from tunekit.data.chat_template import (
    ChatTemplateError,
    chat_generation_tokens,
    chat_tokens,
    check_chat_messages,
    render_chat,
)
from tunekit.data.collate import block_causal_mask, packed_collate, padded_collate
from tunekit.data.datasets import (
    CHAT_TEMPLATES,
    CROSS_ENTROPY_IGNORE_IDX,
    ChatDataset,
    FormatDataset,
    InstructDataset,
    TextDataset,
)
from tunekit.data.formats import FORMATS, check_preference_record, make_format, sharegpt_to_messages
from tunekit.data.packing import PackedDataset, pack_stream
from tunekit.data.report import DataReport, data_report
from tunekit.data.sources import RowSource, load_rows
from tunekit.data.streaming import StreamingDataset
from tunekit.data.templates import (
    ALPACA_PROMPT_NO_INPUT,
    ALPACA_PROMPT_WITH_INPUT,
    INSTRUCT_TEMPLATES,
    alpaca_generation_tokens,
    alpaca_prompt,
    llama2_chat_generation_tokens,
    tokenize_alpaca,
    tokenize_llama2_chat,
    validate_messages,
)

__all__ = [
    "FORMATS",
    "FormatDataset",
    "MixedDataset",
    "RowSource",
    "StreamingDataset",
    "TextDataset",
    "check_preference_record",
    "load_dataset",
    "load_rows",
    "make_format",
    "mixed_dataset",
    "pack_stream",
    "sharegpt_to_messages",
    "ALPACA_PROMPT_NO_INPUT",
    "ALPACA_PROMPT_WITH_INPUT",
    "ASSETS_DATA_DIR",
    "ASSETS_TEXT_DIR",
    "BUNDLED_DATA",
    "CHAT_TEMPLATES",
    "CROSS_ENTROPY_IGNORE_IDX",
    "ChatDataset",
    "ChatTemplateError",
    "DataFormatError",
    "DataReport",
    "DataSettingError",
    "INSTRUCT_TEMPLATES",
    "InstructDataset",
    "PackedDataset",
    "alpaca_generation_tokens",
    "alpaca_prompt",
    "block_causal_mask",
    "bundled_text_files",
    "chat_generation_tokens",
    "chat_tokens",
    "check_chat_messages",
    "data_report",
    "llama2_chat_generation_tokens",
    "packed_collate",
    "padded_collate",
    "render_chat",
    "tokenize_alpaca",
    "tokenize_llama2_chat",
    "validate_messages",
]
