"""Training dtype from config strings."""

from __future__ import annotations

import torch

__all__ = ["get_dtype", "DTYPES"]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def get_dtype(name: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """Map ``"fp32"``/``"bf16"`` (or a torch.dtype) to a dtype, checking the device supports it.

    fp16 is refused: it needs loss scaling, which this loop does not do; use bf16.
    """
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        key = str(name).lower()
        if key in ("fp16", "float16", "half"):
            raise ValueError(
                f"dtype={name!r} is not supported (fp16 needs loss scaling); use 'bf16' or 'fp32'"
            )
        if key not in DTYPES:
            raise ValueError(f"dtype={name!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[key]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is not supported; use 'bf16' or 'fp32'")
    if (
        dtype == torch.bfloat16
        and device is not None
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        raise ValueError("dtype='bf16' but this GPU does not support bfloat16; use 'fp32'")
    return dtype
