"""Llama 2 family: builders (``llama2``, ``llama2_7b`` ...) and weight conversion."""

from tunekit.models.llama2._builders import (
    init_on_device,
    llama2,
    llama2_7b,
    llama2_13b,
    llama2_70b,
    llama2_tiny,
)

__all__ = ["init_on_device", "llama2", "llama2_7b", "llama2_13b", "llama2_70b", "llama2_tiny"]
