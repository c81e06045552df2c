"""Next-token sampling: temperature, top-k and top-p (nucleus) filtering.

Filters work on logits ``[b, vocab]`` and return logits with the removed entries at ``-inf``,
so they compose (top-k, then top-p, as in HF ``generate``).
"""

from __future__ import annotations

import torch

__all__ = ["pick_next_token", "sample_next_token", "top_k_filter", "top_p_filter", "uniform_noise"]


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


# ---- on-device sampling for the decode loop (eager and torch.compile alike) -------------------
#
# ``torch.multinomial(generator=...)`` cannot live in a compiled graph (a torch.Generator
# object breaks it) and its RNG stream differs between eager and inductor. Instead the noise
# is a counter-based hash of (seed, row, position, vocabulary index): pure integer tensor ops,
# so the same seed gives the same tokens with or without compile, with no RNG state to carry
# and no host sync. Sampling is then the Gumbel-max trick: argmax(logits / T + Gumbel noise)
# is a draw from softmax(logits / T) (restricted to the tokens top-k/top-p keep).

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (T. Mueller's), on int64 values in [0, 2^32).

    The multiplier is < 2^27, so every product stays below 2^59: no int64 overflow.
    """
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def uniform_noise(seed: torch.Tensor, position: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Deterministic uniform noise in (0, 1), ``[b, vocab_size]`` float32.

    Args:
        seed: int64 scalar tensor (any value; only its low 32 bits count).
        position: int64 ``[b]``: the position the logits were computed at (a per-step counter).
        vocab_size: number of columns.
    """
    rows = torch.arange(position.shape[0], device=position.device).unsqueeze(1)  # [b, 1]
    cols = torch.arange(vocab_size, device=position.device)  # [v]
    key = _mix32((seed & _MASK32) ^ ((position.unsqueeze(1) * 0x9E3779B1) & _MASK32))  # [b, 1]
    key = _mix32((key + rows * 0x85EBCA6B) & _MASK32)
    bits = _mix32((key + cols * 0x27D4EB2F) & _MASK32)  # [b, v]
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # 24 random bits, never 0 or 1


def pick_next_token(
    logits: torch.Tensor,
    *,
    greedy: bool,
    temperature: torch.Tensor | None = None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each row, computed on the logits' device with no host sync.

    ``greedy`` is the only Python-level choice (a compiled graph specialises on it); the
    sampling settings are tensors, so changing them never recompiles. Top-k keeps every
    logit equal to the k-th largest (as :func:`top_k_filter`), top-p then keeps the smallest
    nucleus of the top-k-filtered distribution (as :func:`top_p_filter`, HF's order).

    Args:
        logits: ``[b, vocab]``.
        greedy: argmax (the other arguments are then ignored).
        temperature: float scalar tensor, > 0.
        top_k: int64 scalar tensor; ``>= vocab`` keeps everything.
        top_p: float scalar tensor in (0, 1]; 1 keeps everything.
        seed: int64 scalar tensor.
        position: int64 ``[b]``: position of the logits (noise differs per step and row).

    Returns:
        LongTensor ``[b]``.
    """
    if greedy:
        return logits.argmax(dim=-1)
    assert temperature is not None and top_k is not None and top_p is not None
    assert seed is not None and position is not None
    vocab = logits.shape[-1]
    scaled = logits.float() / temperature
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [b, v]
    kth = sorted_logits.gather(-1, (top_k.clamp(1, vocab) - 1).expand(scaled.shape[0], 1))  # [b, 1]
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
    # before == 0 for the most likely token, so it always stays; p = 1 keeps everything even
    # where float rounding lets the running mass reach 1 early.
    drop_sorted = (sorted_logits == float("-inf")) | ((before >= top_p) & (top_p < 1.0))
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    gumbel = -torch.log(-torch.log(uniform_noise(seed, position, vocab)))
    return (scaled.masked_fill(drop, float("-inf")) + gumbel).argmax(dim=-1)
