"""GGUF export through the real entry points: a LoRA run of the tiny model exported by
``tunekit export RUN``, and the same run's adapter merged into the base by ``--adapter``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _gguf_fixtures import expected_tensors, read_gguf
from safetensors.torch import load_file

from tunekit.checkpointing import CheckpointError
from tunekit.export import export_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from _harness import FAST, assert_ok, run_recipe, run_tunekit, snapshot  # noqa: E402

BASE = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("gguf_run") / "run"
    proc = run_recipe("lora_finetune", run, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run.parent / "run.gguf"
    text = assert_ok(run_tunekit("export", str(run), str(out), "--dtype", "f32"), "Wrote", "llama-cli -m")
    return run, out, text


def test_export_of_a_lora_run_holds_its_merged_weights(lora_run):
    run, out, text = lora_run
    assert "already contain its LoRA adapter" in text
    merged = load_file(str(next((run / "epoch_0" / "model").glob("*.safetensors"))))
    meta, tensors = read_gguf(out)
    assert meta["general.name"] == "run-epoch_0" and meta["llama.context_length"] == 512
    want = expected_tensors("llama2", merged)
    assert sorted(tensors) == sorted(want)
    for name, w in want.items():
        assert np.array_equal(tensors[name][1], w.float().numpy()), name


def test_base_plus_adapter_equals_the_runs_merged_export(lora_run, tmp_path):
    run, out, _ = lora_run
    done = export_gguf(BASE, tmp_path / "base+adapter.gguf", dtype="f32", adapter=run / "epoch_0")
    assert any("merged the LoRA adapter" in n for n in done.notes)
    _, a = read_gguf(out)
    _, b = read_gguf(done.path)
    base = load_file(str(BASE / "model.safetensors"))
    changed = 0
    for name in a:
        np.testing.assert_allclose(b[name][1], a[name][1], atol=1e-6, rtol=0, err_msg=name)
        changed += name in expected_tensors("llama2", base) and not np.array_equal(
            a[name][1], expected_tensors("llama2", base)[name].numpy())
    assert changed >= 7 * 4  # every adapted linear of every layer moved away from the base


def test_adapter_on_already_merged_weights_is_refused_and_nothing_written(lora_run, tmp_path):
    run, _, _ = lora_run
    before = snapshot(run)
    with pytest.raises(CheckpointError, match="holds merged weights"):
        export_gguf(run, tmp_path / "twice.gguf", adapter=run)
    assert not (tmp_path / "twice.gguf").exists() and snapshot(run) == before
