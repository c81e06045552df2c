"""Shared fixtures of the recipe tests (helpers live in _recipe_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _recipe_helpers import FAST, run_recipe


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory) -> Path:
    """A short LoRA run on the tiny model (HF format), shared by the tests that read its output."""
    d = tmp_path_factory.mktemp("lora_run") / "run"
    run_recipe("lora_finetune", d, *FAST, "max_steps_per_epoch=5")
    return d
