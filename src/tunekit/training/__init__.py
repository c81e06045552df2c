"""Training: the loop and what prepares a model for it, losses, lr schedules, precision, seeding, loggers.

``training`` imports nothing above ``modules``, ``models`` and ``distributed``: it never reads
configs, data files or checkpoints (``tunekit.run`` composes those for the recipes).
"""

from tunekit.training.data_loading import StatefulSampler, build_dataloader
from tunekit.training.loop import NonFiniteLossError, TrainResult, evaluate, train
from tunekit.training.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss
from tunekit.training.prepare import prepare_loss, prepare_model, shard_model
from tunekit.training.settings import TrainSettings, num_training_steps, steps_per_epoch
from tunekit.training.state import ResumePoint, Saver

__all__ = [
    "ChunkedCrossEntropyLoss",
    "CrossEntropyLoss",
    "NonFiniteLossError",
    "ResumePoint",
    "Saver",
    "StatefulSampler",
    "TrainResult",
    "TrainSettings",
    "build_dataloader",
    "evaluate",
    "num_training_steps",
    "prepare_loss",
    "prepare_model",
    "shard_model",
    "steps_per_epoch",
    "train",
]
