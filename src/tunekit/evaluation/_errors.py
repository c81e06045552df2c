"""The evaluation room's user-facing error (one paragraph; recipes print it and exit 1)."""

from __future__ import annotations

from tunekit.config import ConfigError

__all__ = ["EvaluationError"]


class EvaluationError(ConfigError):
    """A task, task file, text file or evaluation setting that cannot be used; says which and the fix."""
