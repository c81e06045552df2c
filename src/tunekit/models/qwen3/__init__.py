"""Qwen3 (dense) family: builders (``qwen3``, ``qwen3_0_6b`` ... ``qwen3_32b``); weights: the ``QWEN3`` row."""

from tunekit.models.qwen3._builders import qwen3, qwen3_0_6b, qwen3_1_7b, qwen3_4b, qwen3_8b, qwen3_14b, qwen3_32b

__all__ = ["qwen3", "qwen3_0_6b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b"]
