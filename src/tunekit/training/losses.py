"""Token-summed cross-entropy losses for causal LM fine-tuning.

Every loss here is a callable ``loss_fn(model, batch) -> (loss_sum, num_tokens)``:

- ``loss_sum``: 0-dim fp32 tensor, the *sum* of per-token losses over the non-ignored
  positions of the micro-batch (not the mean);
- ``num_tokens``: 0-dim int64 tensor, the number of non-ignored positions.

Returning sums makes gradient accumulation exact: the loop adds ``loss_sum`` over all
micro-batches of an optimizer step and divides by the total ``num_tokens`` of that step, so
4 micro-batches of 2 give the same gradient as 1 batch of 8. Nothing here calls ``.item()``.

Batches follow the data contract: ``tokens`` [b, s], pre-shifted ``labels`` [b, s] with
``-100`` where no loss is taken, and optionally ``mask`` [b, s, s] and ``input_pos`` [b, s].
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CROSS_ENTROPY_IGNORE_IDX = -100

__all__ = [
    "CROSS_ENTROPY_IGNORE_IDX",
    "Loss",
    "CrossEntropyLoss",
    "ChunkedCrossEntropyLoss",
    "FusedLinearCrossEntropyLoss",
]


class Loss(Protocol):
    """What the training loop needs from a loss."""

    ignore_index: int

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _model_kwargs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The optional packing inputs (``mask``, ``input_pos``, ``doc_ids``, ``cu_seqlens``) in ``batch``."""
    return {k: batch[k] for k in ("mask", "input_pos", "doc_ids", "cu_seqlens") if batch.get(k) is not None}


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # Upcast inside the loss only: the fp32 copy lives as long as this call.
    return F.cross_entropy(
        logits.float(), labels, ignore_index=ignore_index, reduction="sum"
    )


class CrossEntropyLoss:
    """Cross-entropy on the full logits of ``model(tokens, ...)``.

    Simple and exact reference; materialises [b, s, vocab] logits. Prefer
    :class:`ChunkedCrossEntropyLoss` for large vocabularies.
    """

    def __init__(self, ignore_index: int = CROSS_ENTROPY_IGNORE_IDX) -> None:
        self.ignore_index = ignore_index
        self._compute: Callable[..., torch.Tensor] = _ce_sum

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["tokens"], **_model_kwargs(batch))
        labels = batch["labels"]
        loss_sum = self._compute(logits.flatten(0, 1), labels.flatten(), self.ignore_index)
        return loss_sum, labels.ne(self.ignore_index).sum()

    def compile(self, **compile_kwargs: Any) -> None:
        """torch.compile the loss computation (not the model)."""
        self._compute = torch.compile(_ce_sum, **compile_kwargs)


def _chunk_ce_sum(
    hidden: torch.Tensor, labels: torch.Tensor, output: nn.Module, ignore_index: int
) -> torch.Tensor:
    # hidden: [n, d], labels: [n]
    logits = output(hidden)  # [n, vocab] in the model dtype
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")


class ChunkedCrossEntropyLoss:
    """Cross-entropy that never materialises the full fp32 logits.

    Calls ``model.forward_hidden`` for the final-normed hidden states, keeps only the
    positions whose label is not ignored, then applies ``model.output`` chunk by chunk,
    upcasting each chunk's logits to fp32 only inside that chunk. With
    ``checkpoint_chunks`` (default) a chunk's logits are recomputed in backward instead of
    being kept, so peak memory holds one chunk of logits, not ``num_chunks`` of them; the
    cost is one extra output-projection forward (a few percent of a step).

    Selecting the non-ignored positions has a data-dependent shape: on a GPU this costs
    one small device-to-host sync per micro-batch (the number of selected rows), in
    exchange for no work on prompt and padding positions. ``select_positions=False`` keeps
    every position (ignored ones cost work but no sync).

    Args:
        num_chunks: number of chunks the selected positions are split into.
        ignore_index: label value that takes no loss.
        checkpoint_chunks: recompute chunk logits in backward (saves memory).
        select_positions: drop ignored positions before the output projection.
    """

    def __init__(
        self,
        num_chunks: int = 8,
        ignore_index: int = CROSS_ENTROPY_IGNORE_IDX,
        checkpoint_chunks: bool = True,
        select_positions: bool = True,
    ) -> None:
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        self.num_chunks = num_chunks
        self.ignore_index = ignore_index
        self.checkpoint_chunks = checkpoint_chunks
        self.select_positions = select_positions
        self._compute: Callable[..., torch.Tensor] = _chunk_ce_sum

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = model.forward_hidden(batch["tokens"], **_model_kwargs(batch))  # [b, s, d]
        hidden = hidden.flatten(0, 1)  # [b*s, d]
        labels = batch["labels"].flatten()  # [b*s]
        keep = labels.ne(self.ignore_index)
        if self.select_positions:
            idx = keep.nonzero().squeeze(1)  # the one sync: the number of kept rows
            hidden, labels = hidden.index_select(0, idx), labels.index_select(0, idx)  # [n, d], [n]
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        for h, y in zip(hidden.chunk(self.num_chunks), labels.chunk(self.num_chunks)):
            if self.checkpoint_chunks and torch.is_grad_enabled():
                part = checkpoint(self._compute, h, y, model.output, self.ignore_index,
                                  use_reentrant=False)
            else:
                part = self._compute(h, y, model.output, self.ignore_index)
            loss_sum = loss_sum + part
        return loss_sum, keep.sum()

    def compile(self, **compile_kwargs: Any) -> None:
        """torch.compile the per-chunk projection + loss (dynamic in the chunk length)."""
        compile_kwargs.setdefault("dynamic", True)
        self._compute = torch.compile(_chunk_ce_sum, **compile_kwargs)


def _ce_chunk_grads(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, ignore_index: int,
                    need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Token-loss sum of one chunk and, with ``need_grad``, d(loss)/d(logits) folded into the
    gradients of ``h`` and ``weight`` (the chunk's logits are freed before returning).

    Args:
        h: ``[n, d]`` hidden states; weight: ``[vocab, d]``; y: ``[n]`` labels.

    Returns:
        ``(loss_sum fp32 0-dim, grad_h [n, d] in h's dtype | None, grad_w [vocab, d] fp32 | None)``.
    """
    logits = (h @ weight.t()).float()  # [n, vocab]: the one logits chunk alive
    valid = y.ne(ignore_index)
    y_safe = torch.where(valid, y, torch.zeros_like(y)).unsqueeze(1)  # [n, 1]
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    target = logits.gather(1, y_safe).squeeze(1)
    loss = ((lse - target) * valid).sum()
    if not need_grad:
        return loss, None, None
    # softmax - onehot(target), zero on ignored rows; in place on the logits.
    dlogits = logits.sub_(lse.unsqueeze(1)).exp_()
    dlogits.scatter_add_(1, y_safe, torch.full_like(target, -1.0).unsqueeze(1))
    dlogits.mul_(valid.unsqueeze(1))
    grad_h = (dlogits.to(h.dtype) @ weight).to(h.dtype)  # [n, d]
    grad_w = dlogits.t().to(h.dtype) @ h if weight.requires_grad else None  # [vocab, d]
    return loss, grad_h, None if grad_w is None else grad_w.float()


class _FusedLinearCE(torch.autograd.Function):
    """``sum CE(hidden @ weight.T, labels)`` in chunks; gradients are formed chunk by chunk in
    forward (three matmuls per chunk, no recompute, no logits kept), backward only scales them."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                ignore_index: int, num_chunks: int, compute: Callable[..., Any]) -> torch.Tensor:
        need_grad = hidden.requires_grad or weight.requires_grad
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_grad and weight.requires_grad else None
        start = 0
        for h, y in zip(hidden.chunk(num_chunks), labels.chunk(num_chunks)):
            part, gh, gw = compute(h, weight, y, ignore_index, need_grad)
            loss += part
            if grad_h is not None:
                grad_h[start:start + h.shape[0]] = gh
            if grad_w is not None:
                grad_w += gw
            start += h.shape[0]
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        saved = list(ctx.saved_tensors)
        grad_h = grad_w = None
        if ctx.has[0]:
            gh = saved.pop(0)
            grad_h = gh * grad_out.to(gh.dtype)
        if ctx.has[1]:
            grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None


def _plain_output_weight(output: nn.Module) -> torch.Tensor | None:
    """The output projection's weight when it is a bias-free plain matmul (``nn.Linear``,
    ``TiedLinear``) on a regular tensor; None otherwise (LoRA/DoRA on ``output``, FSDP shards)."""
    if type(output).__name__ not in ("Linear", "TiedLinear") or getattr(output, "bias", None) is not None:
        return None
    weight = output.weight
    return weight if type(weight) in (torch.Tensor, nn.Parameter) else None


class FusedLinearCrossEntropyLoss:
    """Output projection + cross-entropy fused chunk by chunk: no logits tensor, no host sync.

    Calls ``model.forward_hidden`` and computes, per chunk of positions, the chunk's logits
    (fp32 upcast inside the chunk), its token losses and at once the gradients of the hidden
    states and of the output weight (``softmax - onehot``), so backward does no recompute:
    3 matmuls per chunk instead of the checkpointed chunked loss's 4, one chunk of fp32 logits
    alive at a time, and no data-dependent shape (ignored positions are masked, not removed).
    Equal to :class:`CrossEntropyLoss` within fp32 rounding, ``ignore_index`` and tied
    embeddings included. The output weight's gradient is accumulated in fp32 (one
    ``[vocab, dim]`` buffer, only when the output weight trains).

    When ``model.output`` is not a plain bias-free projection (LoRA on ``output``, or an
    FSDP-sharded output weight), the loss is computed like :class:`ChunkedCrossEntropyLoss`
    without position selection (same result, no fusion).

    Args:
        num_chunks: chunks the ``b * s`` positions are split into.
        ignore_index: label value that takes no loss.
    """

    def __init__(self, num_chunks: int = 8, ignore_index: int = CROSS_ENTROPY_IGNORE_IDX) -> None:
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        self.num_chunks = num_chunks
        self.ignore_index = ignore_index
        self._compute: Callable[..., Any] = _ce_chunk_grads
        self._fallback = ChunkedCrossEntropyLoss(num_chunks, ignore_index, select_positions=False)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight = _plain_output_weight(model.output)
        if weight is None:
            return self._fallback(model, batch)
        hidden = model.forward_hidden(batch["tokens"], **_model_kwargs(batch)).flatten(0, 1)  # [b*s, d]
        labels = batch["labels"].flatten()
        loss_sum = _FusedLinearCE.apply(hidden, weight, labels, self.ignore_index, self.num_chunks,
                                        self._compute)
        return loss_sum, labels.ne(self.ignore_index).sum()

    def compile(self, **compile_kwargs: Any) -> None:
        """torch.compile the per-chunk loss + gradient computation."""
        compile_kwargs.setdefault("dynamic", False)
        self._compute = torch.compile(_ce_chunk_grads, **compile_kwargs)
        self._fallback.compile()
