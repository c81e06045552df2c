"""Bad input to the data loaders, through ``tunekit data preview`` (the recipe's own data path; it
fails before any model is built): a CSV without the format's columns, a ShareGPT dump with tool
turns, a Hub data set that is not in the local cache; and a data set download while offline. (An
empty file and an unknown format are checked in process, tests/data/test_sources.py: each
subprocess here costs a torch import.)
Each case: exit 1, one paragraph without a traceback naming the file / key / row and the fix, and
the data files byte-identical afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability._harness import assert_unchanged, assert_user_error, run_tunekit, snapshot

SHAREGPT = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
            {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                               {"from": "gpt", "value": "Sunny."}]}]

# name: (file name, content, dataset option, extra overrides, words that must appear)
CASES = {
    "csv_missing_column": (
        "qa.csv", b"question,answer\nName a colour.,Blue.\nName a fruit.,Apple.\n", "alpaca", [],
        ["{path}", "has no column 'instruction' or 'output'", "['question', 'answer']",
         "dataset.column_map='{instruction: question, output: answer}'"]),
    "sharegpt_tool_turn": (
        "dump.jsonl", "\n".join(json.dumps(r) for r in SHAREGPT).encode(), "chat", [],
        ["{path}", "line 2: conversations[1].from is 'function_call'", "tool / function-call messages are not "
         "supported", "drop those turns or rows"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_through_preview(tmp_path: Path, case: str) -> None:
    name, content, dataset, extra, needles = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    path = data / name
    path.write_bytes(content)
    before = snapshot(data)
    proc = run_tunekit("data", "preview", "lora_finetune", f"dataset={dataset}", f"dataset.source={path}", *extra,
                       env={"TUNEKIT_CACHE": str(tmp_path / "cache")})
    assert_user_error(proc, *(n.replace("{path}", str(path)) for n in needles))
    assert_unchanged(before, data)


def test_hub_data_set_not_in_the_cache(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    proc = run_tunekit("data", "preview", "lora_finetune", "dataset=alpaca", "dataset.source=acme/not-cached",
                       env={"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"})
    assert_user_error(proc, "dataset.source='acme/not-cached'", str(hub),
                      "tunekit download acme/not-cached --repo-type dataset")
    assert list(hub.iterdir()) == []  # nothing was fetched or written


def test_download_of_a_data_set_offline_names_the_data_fix(tmp_path: Path) -> None:
    proc = run_tunekit("download", "acme/some-data", "--repo-type", "dataset",
                       env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert_user_error(proc, "acme/some-data", "offline mode is on", "point dataset.source at them")
    assert "checkpointer.checkpoint_dir" not in proc.stderr


def test_bad_row_in_a_directory_names_its_file_line_and_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(json.dumps({"q": f"Say {i}", "a": f"{i}"}) + "\n" for i in range(6)))
    (data / "b.jsonl").write_text(json.dumps({"q": "Fine", "a": "yes"}) + "\n\n" + json.dumps({"q": None, "a": "x"}))
    before = snapshot(data)
    proc = run_tunekit("data", "preview", "lora_finetune", "dataset=alpaca", f"dataset.source={data}",
                       "dataset.column_map={instruction: q, output: a}", "dataset.val_fraction=0",
                       env={"TUNEKIT_CACHE": str(tmp_path / "cache")})
    assert_user_error(proc, f"Data set '{data}'", "row 8 (b.jsonl, line 3)",
                      "field 'instruction' (your column 'q') must be a string, got null")
    assert_unchanged(before, data)
