"""Finding and loading weights for inference: output dirs (HF or Meta), adapters (tunekit or PEFT)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["find_weights_dir", "load_adapter", "merge_adapter", "weights_checkpointer"]


def find_weights_dir(path: str | Path) -> Path:
    """The directory holding model weights for ``checkpoint=path`` (see
    :func:`tunekit.checkpointing.find_weights_dir`)."""
    from tunekit.checkpointing import find_weights_dir as find

    return find(path, what="checkpoint")


def weights_checkpointer(d: Path, *, model_type: str, output_dir: str | Path) -> Any:
    """The checkpointer for the weights in ``d`` (format detected by its files); nothing is read
    yet: ``.load_checkpoint()["model"]`` gives them in tunekit names."""
    from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer, checkpoint_format

    cls = FullModelHFCheckpointer if checkpoint_format(d) == "hf" else FullModelMetaCheckpointer
    return cls(checkpoint_dir=d, output_dir=output_dir, model_type=model_type)


def _peft_module_name(tunekit_module: str) -> str:
    from tunekit.models.llama2._convert import tunekit_to_hf_key

    hf = tunekit_to_hf_key(f"{tunekit_module}.weight")
    return (hf or f"{tunekit_module}.weight")[: -len(".weight")]


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT semantics: a pattern matches the module path or any dotted suffix of it.
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


def load_adapter(path: str | Path, *, model_type: str, num_heads: int, num_kv_heads: int,
                 embed_dim: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A LoRA adapter and its per-module scaling (``alpha / rank``).

    ``path`` is a directory holding ``adapter_0.pt`` (tunekit names) and/or PEFT files
    (``adapter_config.json`` + ``adapter_model.safetensors``), directly or in ``adapter/`` (as
    every tunekit checkpoint does). The PEFT ``adapter_config.json`` gives alpha and ranks.

    Returns:
        (``{"<module>.lora_a.weight": A, "<module>.lora_b.weight": B}``, ``{module: scaling}``).

    Raises:
        CheckpointError: nothing usable found.
    """
    from tunekit.checkpointing import ADAPTER_FILE, PEFT_ADAPTER_DIR, CheckpointError, load_state_file
    from tunekit.models import get_model_type

    d = Path(path).expanduser()
    peft_dir = next((p for p in (d, d / PEFT_ADAPTER_DIR) if (p / "adapter_config.json").is_file()), None)
    if peft_dir is None:
        raise CheckpointError(
            f"adapter={str(d)!r} has no adapter_config.json (in it or in {PEFT_ADAPTER_DIR}/): give a "
            "tunekit checkpoint directory (epoch_N/ with adapter_0.pt and adapter/) or a PEFT adapter "
            "directory (adapter_config.json + adapter_model.safetensors)."
        )
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    tunekit_file = next((p / ADAPTER_FILE for p in (d, peft_dir.parent) if (p / ADAPTER_FILE).is_file()), None)
    if tunekit_file is not None:
        adapter = load_state_file(tunekit_file)
    else:
        weights = next((peft_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                        if (peft_dir / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{peft_dir} has adapter_config.json but no adapter_model.safetensors.")
        adapter = get_model_type(model_type).peft_to_adapter(load_state_file(weights), num_heads,
                                                             num_kv_heads, embed_dim)
    alpha = float(config.get("lora_alpha", 8))
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    scalings: dict[str, float] = {}
    for key, a in adapter.items():
        if key.endswith(".lora_a.weight"):
            module = key[: -len(".lora_a.weight")]
            rank = a.shape[0]
            scalings[module] = float(_pattern_value(alpha_pattern, _peft_module_name(module), alpha)) / rank
    return adapter, scalings


def merge_adapter(state_dict: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor],
                  scalings: dict[str, float]) -> dict[str, torch.Tensor]:
    """``W + scaling * B @ A`` for every adapted module (fp32 math, the weight's dtype kept);
    with a DoRA magnitude (``<module>.lora_magnitude``) each row is rescaled as DoRA merges.

    Raises:
        CheckpointError: the adapter names a module the weights lack, or the shapes differ.
    """
    from tunekit.checkpointing import CheckpointError

    out = dict(state_dict)
    for module, scale in scalings.items():
        key = f"{module}.weight"
        a, b = adapter[f"{module}.lora_a.weight"], adapter[f"{module}.lora_b.weight"]
        if key not in out:
            raise CheckpointError(f"The adapter adapts {module}, which the model's weights do not have.")
        w = out[key]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"The adapter's {module} is {b.shape[0]}x{a.shape[1]} but the weight is "
                f"{tuple(w.shape)}: the adapter was trained on a different model."
            )
        merged = w.float() + scale * (b.float() @ a.float())
        mag = adapter.get(f"{module}.lora_magnitude")
        if mag is not None:  # DoRA: m / ||W + s B A||_row * (W + s B A)
            merged = (mag.float() / torch.linalg.norm(merged, dim=1)).unsqueeze(1) * merged
        out[key] = merged.to(w.dtype)
    return out
