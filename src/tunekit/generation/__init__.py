"""Text generation: sampling helpers and KV-cached autoregressive decoding (eager or compiled)."""

from tunekit.generation._generate import GenerationResult, TokenGenerator, default_compile_mode, generate
from tunekit.generation._sampling import (
    pick_next_token,
    sample_next_token,
    top_k_filter,
    top_p_filter,
    uniform_noise,
)

__all__ = [
    "GenerationResult",
    "TokenGenerator",
    "default_compile_mode",
    "generate",
    "pick_next_token",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
    "uniform_noise",
]
