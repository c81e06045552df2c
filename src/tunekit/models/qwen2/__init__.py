"""Qwen2.5 family: builders (``qwen2``, ``qwen2_5_0_5b`` ... ``qwen2_5_72b``); weights: the ``QWEN2`` row."""

from tunekit.models.qwen2._builders import (
    qwen2,
    qwen2_5_0_5b,
    qwen2_5_1_5b,
    qwen2_5_3b,
    qwen2_5_7b,
    qwen2_5_14b,
    qwen2_5_32b,
    qwen2_5_72b,
)

__all__ = ["qwen2", "qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b", "qwen2_5_14b", "qwen2_5_32b",
           "qwen2_5_72b"]
