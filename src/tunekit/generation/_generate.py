"""Autoregressive decoding with the model's KV cache: one prefill pass, then one token a step."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tunekit.generation._sampling import sample_next_token

__all__ = ["GenerationResult", "generate"]


@dataclass
class GenerationResult:
    """What :func:`generate` returns.

    Attributes:
        tokens: the new tokens of each prompt (a stop token and what follows excluded).
        stopped: per prompt, whether a stop token ended it (else ``max_new_tokens`` or the
            model's ``max_seq_len`` did).
        prompt_len: prompt length (all prompts share it).
        prefill_seconds: time of the prompt pass (first new token included).
        decode_seconds: time of the remaining one-token steps.
    """

    tokens: list[list[int]]
    stopped: list[bool]
    prompt_len: int
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = field(default=0)

    @property
    def num_new_tokens(self) -> int:
        """Tokens generated over all prompts (stop tokens included, as they were computed)."""
        return self.steps * len(self.tokens)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second, prefill included."""
        total = self.prefill_seconds + self.decode_seconds
        return self.num_new_tokens / total if total > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompt_tokens: Sequence[int] | torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Continue ``prompt_tokens`` with up to ``max_new_tokens`` sampled tokens.

    The model gets a KV cache sized for prompt + new tokens (``setup_caches``) for the call;
    the prompt runs in one pass (prefill), then each new token in its own pass at its
    position. A cache the caller set up is reused (reset first) and left in place.

    Args:
        model: a ``TransformerDecoder`` (``setup_caches``, ``forward(tokens, input_pos=...)``).
        prompt_tokens: one prompt (``list[int]`` / ``[s]``) or equal-length prompts ``[b, s]``.
        max_new_tokens: cap on new tokens (also capped by the model's ``max_seq_len``).
        temperature: 0 = greedy; see :func:`sample_next_token`.
        top_k: top-k filtering (None: off).
        top_p: nucleus filtering (None: off).
        stop_tokens: ids that end a prompt's continuation (e.g. the tokenizer's EOS).
        generator: RNG for sampling, on the model's device.

    Returns:
        A :class:`GenerationResult`.

    Raises:
        ValueError: an empty prompt, or one that fills the model's context already.
    """
    device = next(model.parameters()).device
    prompt = torch.as_tensor(prompt_tokens, dtype=torch.long, device=device)
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    b, s = prompt.shape
    if s == 0:
        raise ValueError("generate() got an empty prompt; it needs at least one token (e.g. BOS).")
    limit = model.max_seq_len
    if s >= limit:
        raise ValueError(f"the prompt has {s} tokens but the model's context is {limit}: no room to generate.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    max_new = min(max_new_tokens, limit - s)

    own_cache = not model.caches_are_enabled()
    if own_cache:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        model.setup_caches(batch_size=b, dtype=dtype, max_seq_len=s + max_new)
    else:
        model.reset_caches()
    was_training = model.training
    model.eval()
    stop = torch.tensor(sorted(set(int(t) for t in stop_tokens)), dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    try:
        t0 = time.perf_counter()
        positions = torch.arange(s, device=device).expand(b, s)
        logits = model(prompt, input_pos=positions)[:, -1]  # [b, vocab]
        next_tok = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator)
        _sync(device)
        t1 = time.perf_counter()
        for i in range(max_new):
            out.append(next_tok)
            if stop.numel():
                done |= torch.isin(next_tok, stop)
                if bool(done.all()):  # one host sync per token, only with stop tokens
                    break
            if i == max_new - 1:
                break
            pos = torch.full((b, 1), s + i, dtype=torch.long, device=device)
            logits = model(next_tok.unsqueeze(1), input_pos=pos)[:, -1]
            next_tok = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                         generator=generator)
        _sync(device)
        t2 = time.perf_counter()
    finally:
        if own_cache:
            model.remove_caches()
        model.train(was_training)

    steps = len(out)
    new = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(b)]
    stop_set = set(stop.tolist())
    tokens, stopped = [], []
    for row in new:
        cut = next((j for j, t in enumerate(row) if t in stop_set), None)
        tokens.append(row if cut is None else row[:cut])
        stopped.append(cut is not None)
    return GenerationResult(tokens=tokens, stopped=stopped, prompt_len=s, prefill_seconds=t1 - t0,
                            decode_seconds=t2 - t1, steps=steps)
