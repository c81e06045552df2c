"""HF and Meta checkpoints in and out: round trips, shards, .bin, discovery, parity with transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _ckpt_helpers import HEADS, KV_HEADS, meta_params, tiny_tk_model

from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer, load_state_file
from tunekit.models.llama2._convert import MERGE_DIMS


def _read_dir(d, pattern):
    sd = {}
    for f in sorted(d.glob(pattern)):
        sd.update(load_state_file(f))
    return sd


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_hf_safetensors_round_trip_sharded(hf_dir, hf_state, tmp_path):
    assert len(list(hf_dir.glob("model-*.safetensors"))) > 1  # transformers wrote shards
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "out", max_shard_size="30KB")
    sd = ckpt.load_checkpoint()["model"]
    assert "layers.1.attn.q_proj.weight" in sd and "norm.scale" in sd
    out = ckpt.save_checkpoint({"model": sd}, epoch=0)
    assert out == tmp_path / "out" / "epoch_0"
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    _same(_read_dir(out, "model-*.safetensors"), hf_state)
    for name in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json", "COMPLETE"):  # fmt: skip
        assert (out / name).is_file(), name


def test_hf_bin_in_bin_out(hf_bin_dir, hf_state, tmp_path):
    ckpt = FullModelHFCheckpointer(
        hf_bin_dir, tmp_path / "out",
        checkpoint_files=["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    )  # fmt: skip
    sd = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": sd}, epoch=1)
    assert (out / "pytorch_model.bin.index.json").is_file() and not list(out.glob("*.safetensors"))
    _same(_read_dir(out, "pytorch_model-*.bin"), hf_state)


def test_hf_discovery_without_index(hf_bin_dir, hf_state, tmp_path):
    (hf_bin_dir / "pytorch_model.bin.index.json").unlink()
    ckpt = FullModelHFCheckpointer(hf_bin_dir, tmp_path / "out")
    assert [f.name for f in ckpt.checkpoint_files] == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]  # fmt: skip
    assert len(ckpt.load_checkpoint()["model"]) == len(hf_state)


def test_hf_single_file_discovery(hf_model_dir, hf_state, tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "single"
    d.mkdir()
    shutil.copy(hf_model_dir / "config.json", d)
    save_file(hf_state, str(d / "model.safetensors"))
    ckpt = FullModelHFCheckpointer(d, tmp_path / "out")
    assert [f.name for f in ckpt.checkpoint_files] == ["model.safetensors"]
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=2)  # load's dict goes straight back in
    _same(_read_dir(out, "model-*.safetensors"), hf_state)


def test_meta_round_trip(meta_dir, tmp_path):
    ckpt = FullModelMetaCheckpointer(meta_dir, tmp_path / "out")
    sd = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": sd}, epoch=0)
    orig = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    del orig["rope.freqs"]
    _same(torch.load(out / "consolidated.00.pth", weights_only=True), orig)
    assert json.loads((out / "params.json").read_text()) == meta_params()
    assert (out / "tokenizer.model").is_file()


def test_hf_and_meta_give_identical_tunekit_state(hf_dir, meta_dir, tmp_path):
    hf = FullModelHFCheckpointer(hf_dir, tmp_path / "o1").load_checkpoint()["model"]
    meta = FullModelMetaCheckpointer(meta_dir, tmp_path / "o2").load_checkpoint()["model"]
    _same(hf, meta)


def test_meta_model_parallel_merge(meta_dir, tmp_path):
    full = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    mp = tmp_path / "meta_mp"
    mp.mkdir()
    shutil.copy(meta_dir / "params.json", mp)
    parts = [{}, {}]
    for k, w in full.items():
        dim = None if k == "rope.freqs" else MERGE_DIMS[k.split(".", 2)[-1] if k.startswith("layers.") else k]
        for i, piece in enumerate([w, w] if dim is None else w.chunk(2, dim=dim)):
            parts[i][k] = piece.clone()
    for i, p in enumerate(parts):
        torch.save(p, mp / f"consolidated.{i:02d}.pth")
    ckpt = FullModelMetaCheckpointer(mp, tmp_path / "out")
    assert [f.name for f in ckpt.checkpoint_files] == ["consolidated.00.pth", "consolidated.01.pth"]
    merged = ckpt.load_checkpoint()["model"]
    single = FullModelMetaCheckpointer(meta_dir, tmp_path / "out2").load_checkpoint()["model"]
    _same(merged, single)


def test_hf_output_loads_in_transformers_with_equal_logits(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "out")
    sd = ckpt.load_checkpoint()["model"]
    model = tiny_tk_model()
    model.load_state_dict(sd, strict=True)
    # Change the weights so the output is not just the input copied back.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = model.eval()(tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_reference_meta_helper_agrees_with_hf_logits(meta_dir, hf_dir, tmp_path):
    """The Meta fixture (independent permutation) runs in tunekit like the HF original in transformers."""
    from transformers import AutoModelForCausalLM

    model = tiny_tk_model()
    model.load_state_dict(FullModelMetaCheckpointer(meta_dir, tmp_path / "o").load_checkpoint()["model"])
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32).eval()
    tokens = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    assert HEADS != KV_HEADS  # GQA: k is permuted with the kv-head count
