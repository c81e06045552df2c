"""Streaming through the real recipe: a CSV with mapped columns, packed on the fly, shuffled by a
buffer; interrupted (a step checkpoint mid-epoch) and resumed equals uninterrupted, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability._harness import assert_ok, run_recipe

STREAM = ["dataset=alpaca", "dataset.column_map={instruction: q, input: ctx, output: a}", "dataset.streaming=true",
          "dataset.shuffle_buffer=4", "dataset.val_fraction=0.25", "packed=true", "max_seq_len=256", "epochs=2",
          "max_steps_per_epoch=3", "batch_size=2", "save_every_n_steps=2", "log_every_n_steps=1",
          "metric_logger.also_stdout=false", "optimizer.lr=1e-3", "lr_scheduler.num_warmup_steps=0"]


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("stream")
    rows = [{"q": f"Write item {i} of the list" + " and more" * (i % 5), "ctx": "" if i % 2 else f"context {i}",
             "a": f"Item {i} is " + "long " * (i % 7) + "done."} for i in range(32)]
    data = tmp / "s.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    cache = {"TUNEKIT_CACHE": str(tmp / "cache")}
    ref = run_recipe("lora_finetune", tmp / "ref", f"dataset.source={data}", *STREAM, env=cache)
    resumed = run_recipe("lora_finetune", tmp / "resumed", f"dataset.source={data}", *STREAM,
                         f"resume={tmp / 'ref' / 'step_2'}", env=cache)
    return {"ref": ref, "resumed": resumed, "tmp": tmp}


def test_streaming_run_trains_on_the_mapped_csv(runs) -> None:
    text = assert_ok(runs["ref"], "6 optimizer steps")
    assert "train / " in text and "validation samples" in text
    ref = runs["tmp"] / "ref"
    assert {p.name for p in ref.iterdir() if (p / "COMPLETE").is_file()} >= {"step_2", "epoch_0", "step_4", "epoch_1"}
    info = json.loads((ref / "epoch_1" / "checkpoint.json").read_text())
    assert info["trained_with"]["data"]["samples"] > 0 and info["trained_with"]["packed"] is True


def test_interrupted_and_resumed_streaming_equals_uninterrupted(runs) -> None:
    assert_ok(runs["resumed"], "resuming from")
    a, b = _losses(runs["tmp"] / "ref"), _losses(runs["tmp"] / "resumed")
    assert sorted(b) == [3, 4, 5, 6]  # the rest of epoch 0 (mid-stream) and all of epoch 1 (reshuffled)
    assert {s: a[s] for s in b} == b  # bit for bit
