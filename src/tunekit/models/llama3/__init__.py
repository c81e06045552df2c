"""Llama 3.1 / 3.2 family: builders (``llama3``, ``llama3_1_8b`` ...); weights: the ``LLAMA3`` row."""

from tunekit.models.llama3._builders import llama3, llama3_1_8b, llama3_1_70b, llama3_2_1b, llama3_2_3b

__all__ = ["llama3", "llama3_1_8b", "llama3_1_70b", "llama3_2_1b", "llama3_2_3b"]
