"""Model-agnostic building blocks (see docs/architecture.md, "Model")."""

from tunekit.modules.attention import MultiHeadAttention
from tunekit.modules.feed_forward import FeedForward
from tunekit.modules.kv_cache import KVCache
from tunekit.modules.position_embeddings import RotaryPositionalEmbeddings
from tunekit.modules.rms_norm import RMSNorm
from tunekit.modules.transformer import TransformerDecoder, TransformerDecoderLayer

__all__ = [
    "FeedForward",
    "KVCache",
    "MultiHeadAttention",
    "RMSNorm",
    "RotaryPositionalEmbeddings",
    "TransformerDecoder",
    "TransformerDecoderLayer",
]
