"""Checkpoint errors: one paragraph each, naming the file and key."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointFileNotFoundError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or matched to the model."""


class CheckpointFileNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file or directory that does not exist."""
