"""Checkpoint reading and writing in HF and Meta formats, with atomic saves and resume.

See ``docs/architecture.md`` (Checkpointing) for the contract and ``_checkpointer.py`` for the
layout of a saved directory.
"""

from tunekit.checkpointing._auto import model_from_checkpoint, model_spec, resolve_model_type
from tunekit.checkpointing._checkpointer import (
    ADAPTER_FILE,
    PEFT_ADAPTER_DIR,
    RECIPE_STATE_FILE,
    Checkpointer,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    write_hf_weights,
    write_meta_weights,
)
from tunekit.checkpointing._dcp import (
    SHARDED_DIR,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    sharded_dir,
    sharded_model_shapes,
)
from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.checkpointing._export import checkpoint_format, convert_checkpoint, find_weights_dir
from tunekit.checkpointing._io import COMPLETE_MARKER, load_state_file, validate_state_dict
from tunekit.checkpointing._layout import (
    INFO_FILE,
    MODEL_SUBDIR,
    PEFT_SUBDIR,
    STATE_SUBDIR,
    model_dir,
    read_checkpoint_info,
    state_dir,
)
from tunekit.checkpointing._resume import (
    find_resume_dir,
    list_checkpoints,
    load_resume_state,
    load_training_state,
    saved_at,
)
from tunekit.checkpointing._settings import check_model_matches

__all__ = [
    "model_from_checkpoint",
    "model_spec",
    "resolve_model_type",
    "INFO_FILE",
    "MODEL_SUBDIR",
    "PEFT_SUBDIR",
    "SHARDED_DIR",
    "STATE_SUBDIR",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "model_dir",
    "read_checkpoint_info",
    "save_sharded_checkpoint",
    "saved_at",
    "sharded_dir",
    "sharded_model_shapes",
    "state_dir",
    "ADAPTER_FILE",
    "COMPLETE_MARKER",
    "PEFT_ADAPTER_DIR",
    "RECIPE_STATE_FILE",
    "CheckpointError",
    "CheckpointFileNotFoundError",
    "Checkpointer",
    "INFO_FILE",
    "FullModelHFCheckpointer",
    "FullModelMetaCheckpointer",
    "check_model_matches",
    "checkpoint_format",
    "convert_checkpoint",
    "find_resume_dir",
    "find_weights_dir",
    "list_checkpoints",
    "load_resume_state",
    "load_state_file",
    "load_training_state",
    "model_dir",
    "read_checkpoint_info",
    "state_dir",
    "validate_state_dict",
    "write_hf_weights",
    "write_meta_weights",
]
