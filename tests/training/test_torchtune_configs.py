"""Every torchtune Llama 2 QLoRA / low-memory config has a tunekit command in the README table,
and each composes and validates (data file and model directory stood in for)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tunekit.config import compose, config_problems

README = Path(__file__).resolve().parents[2] / "README.md"
CONFIGS = ("7B_qlora_single_device", "7B_qlora", "13B_qlora_single_device", "70B_qlora", "7B_full_low_memory")


def _commands() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| `(tunekit run [^`]+)`", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_table_covers_every_config():
    assert set(_commands()) == set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_command_composes_and_validates(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_MODELS_ROOT", str(tmp_path))
    data = tmp_path / "alpaca_data_cleaned.json"
    data.write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    words = shlex.split(_commands()[name])
    recipe, overrides = words[2], [w.replace("alpaca_data_cleaned.json", str(data)) for w in words[3:]]
    cfg = compose(recipe, overrides)
    assert config_problems(cfg, recipe) == []
    assert cfg.dtype == "bf16" and cfg.activation_checkpointing
    if recipe == "lora_finetune":
        assert cfg.lora.quantize_base == "nf4" and cfg.lora.merge_base == "dequantized"
        assert cfg.model._component_.startswith("tunekit.models.llama2.llama2_")
    else:
        assert cfg.optimizer_in_backward and cfg.activation_offloading and cfg.gradient_accumulation_steps == 1
        assert cfg.optimizer._component_ == "tunekit.training.low_memory.adamw8bit"
