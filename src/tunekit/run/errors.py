"""Bad input becomes one paragraph: the error translation every recipe runs inside."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from tunekit.checkpointing import CheckpointError
from tunekit.config import ConfigError
from tunekit.config.errors import disk_error_message
from tunekit.config.resolvers import MULTIRUN_IN_TORCHRUN
from tunekit.data import DataFormatError
from tunekit.tokenizers import TokenizerError, TokenizerFileNotFoundError
from tunekit.training import NonFiniteLossError
from tunekit.training.metric_logging import MissingExtraError
from tunekit.training.settings import SettingUnsupportedHere

__all__ = ["MultirunInTorchrunError", "RunError", "check_not_multirun_in_torchrun", "disk_error_message", "user_errors"]


class RunError(ValueError):
    """A run cannot start or continue as asked (run directory, resume, data); the message says why and how on."""


class MultirunInTorchrunError(RuntimeError):
    """A Hydra ``-m`` sweep was started inside a multi-process launch."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad-input errors (data file, checkpoint, tokenizer, run directory, NaN loss) into ``ConfigError``.

    ``recipe_main`` prints a ``ConfigError`` as one paragraph and exits with status 1; with
    ``HYDRA_FULL_ERROR=1`` the original exception stays chained for the traceback.
    """
    try:
        yield
    except ConfigError:
        raise
    except (DataFormatError, CheckpointError, NonFiniteLossError, MultirunInTorchrunError, RunError,
            TokenizerError, TokenizerFileNotFoundError, MissingExtraError, FileNotFoundError,
            SettingUnsupportedHere) as exc:
        raise ConfigError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - only disk errors are translated; the rest re-raised
        message = disk_error_message(exc)
        if message is None:
            raise
        raise ConfigError(message) from exc


def check_not_multirun_in_torchrun(hydra_mode: object = None) -> None:
    """Raise :class:`MultirunInTorchrunError` for a ``-m`` sweep inside a multi-rank launch.

    Args:
        hydra_mode: ``HydraConfig.get().mode`` (``RunMode.MULTIRUN`` or its name); None reads
            it from the running Hydra app, if any.

    A sweep launched by submitit is fine: each job's tasks run in their own processes with
    ``SUBMITIT_*`` variables (the job itself is a RUN of the sweep's config).
    """
    if hydra_mode is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                return
            hydra_mode = HydraConfig.get().mode
        except Exception:  # no Hydra app: nothing to check
            return
    mode = getattr(hydra_mode, "name", str(hydra_mode)).upper()
    if not mode.endswith("MULTIRUN"):
        return
    if "SUBMITIT_EXECUTOR" in os.environ:  # a job of a submitit sweep: its own processes
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        raise MultirunInTorchrunError("tunekit: " + MULTIRUN_IN_TORCHRUN)
