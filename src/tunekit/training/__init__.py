"""Training: the loop, losses, lr schedules, precision, seeding, loggers and run helpers."""

from tunekit.training.data_loading import StatefulSampler, build_dataloader
from tunekit.training.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss
from tunekit.training.loop import (
    NonFiniteLossError,
    TrainResult,
    TrainSettings,
    evaluate,
    num_training_steps,
    steps_per_epoch,
    train,
)

__all__ = [
    "ChunkedCrossEntropyLoss",
    "CrossEntropyLoss",
    "NonFiniteLossError",
    "StatefulSampler",
    "TrainResult",
    "TrainSettings",
    "build_dataloader",
    "evaluate",
    "num_training_steps",
    "steps_per_epoch",
    "train",
]
