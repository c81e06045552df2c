"""Next-token sampling: temperature, top-k and top-p (nucleus) filtering.

Filters work on logits ``[b, vocab]`` and return logits with the removed entries at ``-inf``,
so they compose (top-k, then top-p, as in HF ``generate``).
"""

from __future__ import annotations

import torch

__all__ = ["sample_next_token", "top_k_filter", "top_p_filter"]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value are all kept).

    Args:
        logits: ``[b, vocab]``.
        k: number of entries kept (>= 1; larger than the vocabulary keeps all).
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [b, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability adds up to at least ``p``.

    The most likely token is always kept. ``p >= 1`` keeps everything.

    Args:
        logits: ``[b, vocab]`` (already divided by the temperature).
        p: cumulative probability mass in (0, 1].
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # Mass strictly before each token: a token is dropped once the ones before it reach p.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each row.

    Args:
        logits: ``[b, vocab]`` logits of the last position.
        temperature: 0 = greedy (argmax; top-k/top-p then change nothing); > 0 divides the
            logits before filtering and sampling.
        top_k: keep only the k most likely tokens (None: no limit).
        top_p: nucleus sampling mass (None: no limit).
        generator: torch RNG for reproducible sampling (on the logits' device).

    Returns:
        LongTensor ``[b]``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
