"""Shared pieces of the evaluation tests: the bundled tiny HF checkpoint as a tunekit model, and a
tiny local multiple-choice task (YAML + JSONL) written into a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROWS = [
    {"question": "The cat sat on the", "choices": ["mat", "sky", "river"], "label": 0},
    {"question": "Water is", "choices": ["wet", "dry", "loud"], "label": 0},
    {"question": "One plus one is", "choices": ["three", "two", "five"], "label": 1},
    {"question": "Give three tips for staying", "choices": ["healthy", "purple", "under"], "label": 0},
    {"question": "The sun rises in the", "choices": ["west", "east"], "label": 1},
]

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(root: Path) -> Path:
    """``root/tiny_mc.yaml`` + ``root/data/tiny_mc.jsonl`` (relative data path); returns the YAML."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "tiny_mc.yaml").write_text(TASK_YAML)
    return root / "tiny_mc.yaml"


@pytest.fixture(scope="session")
def tiny_hf_dir() -> Path:
    from tunekit.config.resolvers import asset_path

    return Path(asset_path("tiny_llama2/hf"))


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_hf_dir):
    """The bundled tiny Llama (fp32, eval mode) and its tokenizer, loaded through the checkpointer."""
    import torch

    from tunekit.checkpointing import FullModelHFCheckpointer
    from tunekit.models.llama2 import llama2_tiny
    from tunekit.run.model import load_model_weights
    from tunekit.tokenizers import tokenizer_from_dir

    ckpt = FullModelHFCheckpointer(checkpoint_dir=tiny_hf_dir, output_dir=tiny_hf_dir.parent / "unused",
                                   model_type="LLAMA2")
    with torch.device("meta"):
        model = llama2_tiny()
    load_model_weights(model, ckpt.load_checkpoint()["model"], lora=False, source=str(tiny_hf_dir))
    return model.eval(), tokenizer_from_dir(str(tiny_hf_dir))
