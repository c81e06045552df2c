"""The one LoRA/DoRA merge of tunekit (layers, merged checkpoints, FSDP gather, generation)."""

from __future__ import annotations

import torch

__all__ = ["merged_weight"]


def merged_weight(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    *,
    scaling: float,
    magnitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight of a plain linear that computes a LoRA (or DoRA) layer: ``W + s B A``.

    The one merge of tunekit: ``LoRALinear.merged_weight``, the merged checkpoints, the FSDP
    gather and generation's adapter merge all call it, so they agree bit for bit. The math is
    fp32; with DoRA's magnitude ``m`` each output row is rescaled as PEFT merges it,
    ``m / ||W + s B A||_row * (W + s B A)``.

    Args:
        weight: the base weight ``W``, ``[out, in]``.
        lora_a: ``A``, ``[rank, in]``.
        lora_b: ``B``, ``[out, rank]``.
        scaling: ``s = alpha / rank``.
        magnitude: DoRA's magnitude vector ``[out]`` (None: plain LoRA).

    Returns:
        The merged weight in ``weight.dtype`` (on ``weight``'s device).

    Raises:
        ValueError: the shapes do not fit together (naming all three).
    """
    fits = (weight.dim() == 2 and lora_a.dim() == 2 and lora_b.dim() == 2
            and lora_b.shape[1] == lora_a.shape[0] and (lora_b.shape[0], lora_a.shape[1]) == tuple(weight.shape)
            and (magnitude is None or tuple(magnitude.shape) == (weight.shape[0],)))
    if not fits:
        mag = "" if magnitude is None else f", magnitude {tuple(magnitude.shape)}"
        raise ValueError(
            f"LoRA shapes do not fit: weight {tuple(weight.shape)} (out, in), lora_a {tuple(lora_a.shape)} "
            f"(rank, in), lora_b {tuple(lora_b.shape)} (out, rank){mag} (out,)"
        )
    w = weight.float() + scaling * (lora_b.float() @ lora_a.float())
    if magnitude is not None:
        w = (magnitude.float() / torch.linalg.norm(w, dim=1)).unsqueeze(1) * w
    return w.to(weight.dtype)
