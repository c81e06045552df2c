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
