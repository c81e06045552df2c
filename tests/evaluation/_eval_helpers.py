"""What the evaluation tests share: a tiny local multiple-choice task (YAML + JSONL) written into a
directory, with its data relative to the YAML as a user would keep it."""

from __future__ import annotations

import json
from pathlib import Path

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
