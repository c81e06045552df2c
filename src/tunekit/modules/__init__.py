"""Model-agnostic building blocks (see docs/architecture.md, "Model")."""

from tunekit.modules.attention import MultiHeadAttention
from tunekit.modules.feed_forward import FeedForward
from tunekit.modules.kv_cache import KVCache
from tunekit.modules.position_embeddings import (
    Llama3RopeScaling,
    RotaryPositionalEmbeddings,
    describe_llama3_scaling,
)
from tunekit.modules.rms_norm import RMSNorm
from tunekit.modules.transformer import TiedLinear, TransformerDecoder, TransformerDecoderLayer

__all__ = [
    "FeedForward",
    "KVCache",
    "Llama3RopeScaling",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryPositionalEmbeddings",
    "TiedLinear",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "describe_llama3_scaling",
]
