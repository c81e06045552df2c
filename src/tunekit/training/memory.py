"""GPU memory statistics for the metric logs (empty on CPU), and a run's memory budget per phase."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["format_memory_budget", "memory_budget", "memory_stats", "reset_peak_memory_stats", "tensor_bytes"]

_GIB = 1024**3


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak allocated/reserved and currently active memory in GiB; ``{}`` off CUDA."""
    if device.type != "cuda":
        return {}
    return {
        "peak_memory_alloc_gib": torch.cuda.max_memory_allocated(device) / _GIB,
        "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / _GIB,
        "memory_active_gib": torch.cuda.memory_allocated(device) / _GIB,
    }


def reset_peak_memory_stats(device: torch.device) -> None:
    """Start a new peak-memory window (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: a plain tensor's, a DTensor's local shard's, or for a wrapper
    subclass (NF4 weights, 8-bit optimizer states) the sum of its inner tensors'."""
    local = getattr(t, "_local_tensor", None)
    if local is not None:
        return tensor_bytes(local)
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def memory_budget(model: torch.nn.Module, optimizer: Any, *, device: torch.device,
                  logits_bytes: int | None = None, gradients_freed_in_backward: bool = False) -> dict[str, float]:
    """Where a run's memory goes, in GiB, per phase of a step.

    ``weights`` (parameters and buffers as stored: NF4 bases at 4.1 bits, shards under FSDP),
    ``gradients`` (the trainable parameters' size; with the optimizer step in backward only the
    largest one is alive at a time), ``optimizer`` (its state tensors, 8-bit ones as stored),
    ``logits`` (``logits_bytes`` from the caller: batch x sequence x vocabulary in fp32, per
    chunk with a chunked loss). On CUDA also the peak allocated/reserved since the last reset and
    ``activations``: the peak less everything above (saved activations and temporaries).
    """
    gib = float(_GIB)
    weights = sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
    trainable = [tensor_bytes(p) for p in model.parameters() if p.requires_grad]
    grads = (max(trainable, default=0) if gradients_freed_in_backward else sum(trainable))
    state = getattr(optimizer, "state_dict", None)
    opt = 0
    if callable(state):
        for per_param in optimizer.state_dict().get("state", {}).values():
            opt += sum(tensor_bytes(v) for v in per_param.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    out = {"weights": weights / gib, "gradients": grads / gib, "optimizer": opt / gib}
    if logits_bytes is not None:
        out["logits"] = logits_bytes / gib
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["activations"] = max(peak - weights - grads - opt, 0) / gib
        out["peak_allocated"] = peak / gib
        out["peak_reserved"] = torch.cuda.max_memory_reserved(device) / gib
    return out


def format_memory_budget(budget: dict[str, float]) -> str:
    """The budget as one block of lines for the end of a run, with what to turn on."""
    if not budget:
        return ""
    lines = ["memory budget (GiB):"]
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "peak_allocated", "peak_reserved"):
        if key in budget:
            lines.append(f"  {key:<15}{budget[key]:10.3f}")
    if "activations" not in budget:
        lines.append("  activations    (measured on CUDA only)")
    lines.append("  to lower: weights -> lora.quantize_base=nf4; gradients -> optimizer_in_backward=true; "
                 "optimizer -> optimizer=adamw8bit (or adamw4bit); activations -> activation_checkpointing=true, "
                 "activation_offloading=true; logits -> loss=chunked_cross_entropy")
    return "\n".join(lines)
