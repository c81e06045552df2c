"""Text generation: sampling helpers and KV-cached autoregressive decoding."""

from tunekit.generation._generate import GenerationResult, generate
from tunekit.generation._sampling import (
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "GenerationResult",
    "generate",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]
