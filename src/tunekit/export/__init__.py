"""Export for serving: a model, checkpoint or run as one GGUF file for llama.cpp (``tunekit export``).

The room sits on top, beside ``generation`` (whose loading and adapter merge it reuses), below
``cli``. See ``_gguf.py`` for the layout llama.cpp expects and ``_gguf_vocab.py`` for the
tokenizer metadata.
"""

from tunekit.export._gguf import (
    GGUF_DTYPES,
    GGUFExport,
    GGUFExportError,
    export_gguf,
    gguf_architecture,
    gguf_tensor_name,
    llama3_rope_factors,
)
from tunekit.export._gguf_vocab import GGUFVocab, pad_vocab, read_vocab

__all__ = [
    "GGUF_DTYPES",
    "GGUFExport",
    "GGUFExportError",
    "GGUFVocab",
    "export_gguf",
    "gguf_architecture",
    "gguf_tensor_name",
    "llama3_rope_factors",
    "pad_vocab",
    "read_vocab",
]
