"""Text generation: sampling helpers and KV-cached autoregressive decoding (eager or compiled)."""

from tunekit.generation._generate import (
    STOP_CACHE_LEN,
    STOP_MAX_NEW_TOKENS,
    STOP_MAX_SEQ_LEN,
    STOP_TOKEN,
    GenerationResult,
    TokenGenerator,
    default_compile_mode,
    generate,
)
from tunekit.generation._loading import (
    check_adapter_not_merged,
    load_adapter,
    merge_adapter,
    resolve_checkpoint,
    weights_checkpointer,
)
from tunekit.generation._prompts import Prompt, PromptError, build_prompt, read_messages, stop_token_ids
from tunekit.generation._sampling import (
    pick_next_token,
    sample_next_token,
    top_k_filter,
    top_p_filter,
    uniform_noise,
)

__all__ = [
    "Prompt",
    "PromptError",
    "build_prompt",
    "read_messages",
    "stop_token_ids",
    "STOP_CACHE_LEN",
    "STOP_MAX_NEW_TOKENS",
    "STOP_MAX_SEQ_LEN",
    "STOP_TOKEN",
    "GenerationResult",
    "TokenGenerator",
    "check_adapter_not_merged",
    "load_adapter",
    "merge_adapter",
    "resolve_checkpoint",
    "weights_checkpointer",
    "default_compile_mode",
    "generate",
    "pick_next_token",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
    "uniform_noise",
]
