"""Preference-tuning objectives (DPO and its variants) as training-loop objectives.

A preference batch holds ``2B`` sequences: rows ``0..B-1`` are the chosen responses, rows
``B..2B-1`` the rejected ones, each row ``tokens`` [s] with shifted ``labels`` (-100 on the
prompt and the padding), so that only response tokens count. Optionally it carries
``reference_logps`` [2B] (fp32): the reference model's sequence log-probabilities, computed once
before training (:func:`precompute_reference_logps`).

:class:`DPOLoss` is an *objective*: ``loss_fn(model, batch) -> (loss_sum, num_pairs, metrics)``
where ``loss_sum`` is the sum of the per-pair losses, ``num_pairs`` the number of pairs (the loop
divides the accumulated gradient by the step's total, so accumulation stays exact), and
``metrics`` maps TRL's metric names to per-pair *sums* that the loop averages over the pairs of
its log interval (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``).

The losses, with ``h = (pi_c - pi_r) - (ref_c - ref_r)`` (sequence log-probability differences)
and ``eps = label_smoothing``:

- ``sigmoid`` (DPO, Rafailov et al. 2023; with ``eps > 0`` conservative DPO, cDPO):
  ``-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)``
- ``robust`` (Chowdhury et al. 2024, an unbiased loss under label noise ``eps``):
  ``(-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps)``
- ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2`` with *per-token mean* log-probabilities
  (as TRL does), so long answers are not favoured;
- ``hinge`` (SLiC / RSO): ``max(0, 1 - beta h)``.

Rewards are ``beta * (pi - ref)`` of each side (detached), as TRL and torchtune report them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunekit.distributed import is_sharded
from tunekit.modules.peft import disable_adapters

IGNORE_INDEX = -100

#: The loss variants :class:`DPOLoss` implements.
DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")
#: The metric names an objective step reports (TRL's names).
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected")

__all__ = ["DPO_LOSS_TYPES", "DPO_METRICS", "DPOLoss", "dpo_loss", "precompute_reference_logps",
           "sequence_logps"]


def _model_kwargs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: batch[k] for k in ("mask", "input_pos") if batch.get(k) is not None}


def _row_logps(hidden: torch.Tensor, labels: torch.Tensor, output: nn.Module, ignore_index: int) -> torch.Tensor:
    # hidden: [s, d], labels: [s]; fp32 logits of one row only, inside this call
    logits = output(hidden)  # [s, v]
    return -F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")


def sequence_logps(model: nn.Module, batch: Mapping[str, Any], *,
                   ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of the target tokens' log-probabilities (fp32) and the target counts.

    With a ``forward_hidden`` model (every tunekit decoder) the output projection runs one row at
    a time and, with gradients, is recomputed in backward: peak memory holds one row's fp32
    logits, not ``[2B, s, vocab]`` (what makes 128k vocabularies fit), for one extra output
    projection per step. A model sharded with FSDP2 runs its full forward instead (its root's
    hooks gather the embedding and output weights only around ``forward``).

    Returns:
        ``(logps [n] fp32, counts [n] int64)`` for the ``n`` rows of ``batch["tokens"]``.
    """
    labels = batch["labels"]  # [n, s]
    counts = labels.ne(ignore_index).sum(-1)
    if not hasattr(model, "forward_hidden") or is_sharded(model):
        logits = model(batch["tokens"], **_model_kwargs(batch))  # [n, s, v]
        nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=ignore_index,
                              reduction="none").view(labels.shape)
        return -nll.sum(-1), counts
    hidden = model.forward_hidden(batch["tokens"], **_model_kwargs(batch))  # [n, s, d]
    rows = []
    for h, y in zip(hidden.unbind(0), labels.unbind(0)):
        if torch.is_grad_enabled():
            rows.append(checkpoint(_row_logps, h, y, model.output, ignore_index, use_reentrant=False))
        else:
            rows.append(_row_logps(h, y, model.output, ignore_index))
    return torch.stack(rows), counts


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, *, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference losses and the (detached) rewards of each side.

    Args:
        policy_chosen, policy_rejected, reference_chosen, reference_rejected: ``[B]`` log-probs
            (sequence sums; per-token means for ``ipo``).
        beta: strength of the KL penalty (temperature of the implicit reward).
        loss_type: one of :data:`DPO_LOSS_TYPES`.
        label_smoothing: assumed share of flipped preference labels (``sigmoid``: cDPO,
            ``robust``); in ``[0, 0.5)``.

    Returns:
        ``(losses [B], chosen_rewards [B], rejected_rewards [B])``.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {', '.join(DPO_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "robust":
        losses = ((-F.logsigmoid(beta * h) * (1 - label_smoothing) + F.logsigmoid(-beta * h) * label_smoothing)
                  / (1 - 2 * label_smoothing))
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


class DPOLoss:
    """The DPO objective: ``loss_fn(model, batch) -> (loss_sum, num_pairs, metric_sums)``.

    The reference log-probabilities come from, in this order: ``batch["reference_logps"]``
    (precomputed), ``reference`` (a frozen model, full DPO), or the policy itself with its LoRA
    adapters disabled (LoRA DPO: the base model, no second copy of the weights).

    Args:
        beta: KL strength (TRL's default 0.1).
        loss_type: ``sigmoid`` | ``robust`` | ``ipo`` | ``hinge``.
        label_smoothing: cDPO / robust DPO label-noise rate in ``[0, 0.5)``.
        reference: a frozen reference model (full DPO), or None (adapters disabled).
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 reference: nn.Module | None = None) -> None:
        dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=beta,
                 loss_type=loss_type, label_smoothing=label_smoothing)  # validates the settings
        if beta <= 0:
            raise ValueError(f"beta={beta}: must be > 0")
        self.beta = float(beta)
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        self.reference = reference

    def reference_logps(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[2B]`` reference sequence log-probs (sums), without gradients."""
        if batch.get("reference_logps") is not None:
            return batch["reference_logps"].float()
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, batch, ignore_index=self.ignore_index)[0]
            with disable_adapters(model):
                return sequence_logps(model, batch, ignore_index=self.ignore_index)[0]

    def __call__(self, model: nn.Module,
                 batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        ref = self.reference_logps(model, batch)
        policy, counts = sequence_logps(model, batch, ignore_index=self.ignore_index)
        n = policy.shape[0] // 2
        if self.loss_type == "ipo":  # IPO compares per-token means (TRL)
            scale = counts.clamp(min=1).float()
            pol, rf = policy / scale, ref / scale
        else:
            pol, rf = policy, ref
        losses, chosen_r, rejected_r = dpo_loss(
            pol[:n], pol[n:], rf[:n], rf[n:], beta=self.beta, loss_type=self.loss_type,
            label_smoothing=self.label_smoothing)
        pd = pol.detach()  # what the loss compares (IPO: per-token means, as TRL reports)
        metrics = {
            "rewards/chosen": chosen_r.sum(),
            "rewards/rejected": rejected_r.sum(),
            "rewards/margins": (chosen_r - rejected_r).sum(),
            "rewards/accuracies": (chosen_r > rejected_r).float().sum(),
            "logps/chosen": pd[:n].sum(),
            "logps/rejected": pd[n:].sum(),
        }
        num_pairs = torch.full((), n, dtype=torch.int64, device=policy.device)
        return losses.sum().float(), num_pairs, metrics


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def precompute_reference_logps(reference: nn.Module, batches: Iterable[Mapping[str, Any]], *,
                               device: torch.device | str,
                               adapters_disabled: bool = False) -> torch.Tensor:
    """The reference log-probs of every pair of ``batches``, in order, as ``[N, 2]`` (chosen, rejected).

    Args:
        reference: the reference model (or the LoRA policy with ``adapters_disabled=True``).
        batches: preference batches in dataset order (no shuffling).
        device: where the model runs.
        adapters_disabled: compute with the model's LoRA adapters off (its base model).
    """
    rows = []
    ctx = disable_adapters(reference) if adapters_disabled else contextlib.nullcontext()
    with ctx, _eval_mode(reference):
        for batch in batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps = sequence_logps(reference, batch)[0].float().cpu()
            n = logps.shape[0] // 2
            rows.append(torch.stack([logps[:n], logps[n:]], dim=1))
    _reshard(reference)
    return torch.cat(rows) if rows else torch.zeros(0, 2)


def _reshard(model: nn.Module) -> None:
    """FSDP2: give every unit its sharded parameters back after forwards without a backward
    (an optimizer built next must see the registered sharded parameters)."""
    if not is_sharded(model):
        return
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
