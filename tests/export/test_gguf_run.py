"""GGUF export through the real entry points, on one real LoRA run of the tiny model.

The run is configured the torchtune way: a user YAML holding the seeds' own checkpointer block
(``FullModelMetaCheckpointer``, ``checkpoint_dir``, ``checkpoint_files: [consolidated.00.pth]``,
``output_dir``, ``model_type: LLAMA2``, ``resume_from_checkpoint: False``) with only the module path
changed to tunekit's (issue 16 part 5). Its Meta-format checkpoint is then exported by
``tunekit export RUN`` and, as base + adapter, by ``export_gguf(..., adapter=)`` (part 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _gguf_fixtures import read_gguf

from tunekit.checkpointing import CheckpointError
from tunekit.export import export_gguf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from _harness import REPO, assert_ok, run_recipe, run_tunekit, snapshot  # noqa: E402

TINY_META = REPO / "src" / "tunekit" / "assets" / "tiny_llama2" / "meta"

SEEDS_YAML = """\
defaults:
  - lora_finetune_schema
  - model: tiny
  - tokenizer: auto
  - dataset: alpaca_tiny
  - optimizer: adamw
  - lr_scheduler: cosine
  - loss: cross_entropy
  - metric_logger: jsonl
  - _self_

checkpointer:
  _component_: tunekit.checkpointing.FullModelMetaCheckpointer
  checkpoint_dir: {meta}
  checkpoint_files: [consolidated.00.pth]
  output_dir: {out}
  model_type: LLAMA2
  resume_from_checkpoint: False

epochs: 1
max_steps_per_epoch: 2
batch_size: 4
max_seq_len: 128
metric_logger:
  also_stdout: false
"""

# Meta names -> llama.cpp names: the same interleaved q/k layout, no permutation.
_META_TO_GGUF = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
                 "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
                 "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}


def _gguf_names(meta_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"token_embd.weight": meta_sd["tok_embeddings.weight"], "output_norm.weight": meta_sd["norm.weight"],
           "output.weight": meta_sd["output.weight"]}
    for key, w in meta_sd.items():
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            module = rest.removesuffix(".weight")
            out[f"blk.{i}.{_META_TO_GGUF[module]}.weight"] = w
    return out


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds_run")
    (root / "configs").mkdir()
    out = root / "checkpoints"
    (root / "configs" / "seeds_lora.yaml").write_text(SEEDS_YAML.format(meta=TINY_META, out=out))
    proc = run_recipe("lora_finetune", root / "run", "--config-dir", str(root / "configs"),
                      "--config-name", "seeds_lora")
    assert_ok(proc)
    gguf = root / "run.gguf"
    text = assert_ok(run_tunekit("export", str(out), str(gguf), "--dtype", "f32"), "Wrote", "llama-cli -m")
    return out, gguf, text


def test_seeds_checkpointer_block_trains_and_saves_meta_format(seeds_run):
    out, _, _ = seeds_run
    ckpt = out / "epoch_0"
    assert (ckpt / "COMPLETE").is_file()
    assert sorted(p.name for p in (ckpt / "model").iterdir()) == ["consolidated.00.pth", "params.json",
                                                                  "tokenizer.model"]
    assert (ckpt / "adapter" / "adapter_config.json").is_file()


def test_export_of_the_run_holds_its_merged_weights(seeds_run):
    out, gguf, text = seeds_run
    assert "already contain its LoRA adapter" in text
    merged = torch.load(out / "epoch_0" / "model" / "consolidated.00.pth", weights_only=True)
    base = torch.load(TINY_META / "consolidated.00.pth", weights_only=True)
    meta, tensors = read_gguf(gguf)
    assert meta["general.name"] == "checkpoints-epoch_0" and meta["general.architecture"] == "llama"
    want = _gguf_names(merged)
    assert sorted(tensors) == sorted(want)
    for name, w in want.items():
        assert np.array_equal(tensors[name][1], w.float().numpy()), name
    moved = [k for k, w in _gguf_names(base).items() if not torch.equal(w, want[k])]
    # the schema default lora.targets (q_proj, v_proj; the user YAML does not compose lora_finetune.yaml)
    assert sorted(moved) == sorted(f"blk.{i}.attn_{m}.weight" for i in range(4) for m in "qv"), moved


def test_base_plus_adapter_equals_the_runs_merged_export(seeds_run, tmp_path):
    out, gguf, _ = seeds_run
    done = export_gguf(TINY_META, tmp_path / "base+adapter.gguf", dtype="f32", adapter=out / "epoch_0")
    assert any("merged the LoRA adapter" in n for n in done.notes)
    _, a = read_gguf(gguf)
    _, b = read_gguf(done.path)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name][1], a[name][1], atol=1e-6, rtol=0, err_msg=name)


def test_adapter_on_already_merged_weights_is_refused_and_nothing_written(seeds_run, tmp_path):
    out, _, _ = seeds_run
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="holds merged weights"):
        export_gguf(out, tmp_path / "twice.gguf", adapter=out)
    assert not (tmp_path / "twice.gguf").exists() and snapshot(out) == before
