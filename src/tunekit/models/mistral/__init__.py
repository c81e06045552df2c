"""Mistral family (7B v0.3): builders; weights: the ``MISTRAL`` row."""

from tunekit.models.mistral._builders import mistral, mistral_7b

__all__ = ["mistral", "mistral_7b"]
