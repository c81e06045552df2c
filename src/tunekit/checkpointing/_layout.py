"""The layout of one saved checkpoint directory (``RUN/epoch_N/`` or ``RUN/step_N/``).

::

    epoch_N/
      model/            the clean model directory in the input's format, and nothing else:
                        HF  (model*.safetensors [+ index], config.json, generation_config.json,
                             tokenizer files) -> transformers' from_pretrained reads it;
                        Meta (consolidated.NN.pth, params.json, tokenizer.model) -> Meta's and
                             llama.cpp's tools read it as they read Meta's own download.
      adapter/          LoRA/DoRA only: the PEFT adapter (adapter_model.safetensors,
                        adapter_config.json) -> peft.PeftModel.from_pretrained reads it.
      state/            training state, never read by other tools: recipe_state.pt,
                        adapter_0.pt (LoRA), dcp/ (sharded step checkpoints under FSDP2).
      checkpoint.json   what this checkpoint is (format, epoch/step, whether model/ holds merged
                        adapter weights and which adapter, what it was trained with).
      COMPLETE          written last; a directory without it is an interrupted save.

The whole directory is written under a temporary name and renamed into place, so a crash never
leaves a partial checkpoint where resume looks. Checkpoints written before this layout (weights,
``adapter_0.pt`` and ``recipe_state.pt`` side by side in ``epoch_N/``) are still read: each helper
below falls back to the checkpoint directory itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "INFO_FILE",
    "MODEL_SUBDIR",
    "PEFT_SUBDIR",
    "STATE_SUBDIR",
    "model_dir",
    "read_checkpoint_info",
    "state_dir",
]

MODEL_SUBDIR = "model"
PEFT_SUBDIR = "adapter"
STATE_SUBDIR = "state"
INFO_FILE = "checkpoint.json"


def model_dir(ckpt: str | Path) -> Path:
    """The model directory of checkpoint ``ckpt`` (``ckpt/model``; ``ckpt`` for the old layout)."""
    ckpt = Path(ckpt)
    sub = ckpt / MODEL_SUBDIR
    return sub if sub.is_dir() else ckpt


def state_dir(ckpt: str | Path) -> Path:
    """The training-state directory of checkpoint ``ckpt`` (``ckpt/state``; ``ckpt`` for the old layout)."""
    ckpt = Path(ckpt)
    sub = ckpt / STATE_SUBDIR
    return sub if sub.is_dir() else ckpt


def read_checkpoint_info(ckpt: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``ckpt`` as a dict; ``{}`` when absent (old layout, foreign dir).

    An unreadable file is reported as empty too: the info is advisory for generation, and resume
    checks the fingerprint stored in ``recipe_state.pt`` itself.
    """
    path = Path(ckpt) / INFO_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
