"""HF and Meta checkpoints in and out: round trips, shards, .bin, discovery, parity with transformers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _ckpt_helpers import (
    HEADS,
    KV_HEADS,
    assert_same,
    meta_params,
    meta_split_dim,
    read_weights,
    split_meta,
    tiny_tk_model,
)

from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer
from tunekit.models.llama2._convert import MERGE_DIMS


def test_hf_safetensors_round_trip_sharded(hf_dir, hf_state, tmp_path):
    assert len(list(hf_dir.glob("model-*.safetensors"))) > 1  # transformers wrote shards
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "out", max_shard_size="30KB")
    sd = ckpt.load_checkpoint()["model"]
    assert "layers.1.attn.q_proj.weight" in sd and "norm.scale" in sd
    ckpt_dir = ckpt.save_checkpoint({"model": sd}, epoch=0)
    assert ckpt_dir == tmp_path / "out" / "epoch_0"
    assert (ckpt_dir / "COMPLETE").is_file() and (ckpt_dir / "checkpoint.json").is_file()
    out = ckpt_dir / "model"
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    assert_same(read_weights(out, "model-*.safetensors"), hf_state)
    for name in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json"):  # fmt: skip
        assert (out / name).is_file(), name


def test_hf_bin_in_bin_out(hf_bin_dir, hf_state, tmp_path):
    ckpt = FullModelHFCheckpointer(
        hf_bin_dir, tmp_path / "out",
        checkpoint_files=["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    )  # fmt: skip
    sd = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": sd}, epoch=1) / "model"
    assert (out / "pytorch_model.bin.index.json").is_file() and not list(out.glob("*.safetensors"))
    assert_same(read_weights(out, "pytorch_model-*.bin"), hf_state)


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
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=2) / "model"  # load's dict goes straight back in
    assert_same(read_weights(out, "model-*.safetensors"), hf_state)


def test_meta_round_trip(meta_dir, tmp_path):
    ckpt = FullModelMetaCheckpointer(meta_dir, tmp_path / "out")
    sd = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": sd}, epoch=0) / "model"
    orig = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    del orig["rope.freqs"]
    assert_same(torch.load(out / "consolidated.00.pth", weights_only=True), orig)
    assert json.loads((out / "params.json").read_text()) == meta_params()
    assert (out / "tokenizer.model").is_file()


def test_hf_and_meta_give_identical_tunekit_state(hf_dir, meta_dir, tmp_path):
    hf = FullModelHFCheckpointer(hf_dir, tmp_path / "o1").load_checkpoint()["model"]
    meta = FullModelMetaCheckpointer(meta_dir, tmp_path / "o2").load_checkpoint()["model"]
    assert_same(hf, meta)


def _meta_mp_dir(meta_dir, d, n: int):
    d.mkdir()
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(meta_dir / name, d)
    parts = split_meta(torch.load(meta_dir / "consolidated.00.pth", weights_only=True), n)
    for i, p in enumerate(parts):
        torch.save(p, d / f"consolidated.{i:02d}.pth")
    return parts


def test_split_table_agrees_with_meta_reference():
    assert all(MERGE_DIMS[k] == meta_split_dim(k) for k in MERGE_DIMS), MERGE_DIMS


def test_meta_model_parallel_merge(meta_dir, tmp_path):
    _meta_mp_dir(meta_dir, tmp_path / "meta_mp", 2)
    ckpt = FullModelMetaCheckpointer(tmp_path / "meta_mp", tmp_path / "out")
    assert [f.name for f in ckpt.checkpoint_files] == ["consolidated.00.pth", "consolidated.01.pth"]
    merged = ckpt.load_checkpoint()["model"]
    single = FullModelMetaCheckpointer(meta_dir, tmp_path / "out2").load_checkpoint()["model"]
    assert_same(merged, single)


def test_meta_model_parallel_round_trip_keeps_the_file_layout(meta_dir, tmp_path):
    """Meta -> tunekit -> Meta on 2 model-parallel files gives back the same 2 files' tensors."""
    parts = _meta_mp_dir(meta_dir, tmp_path / "meta_mp", 2)
    ckpt = FullModelMetaCheckpointer(tmp_path / "meta_mp", tmp_path / "out")
    assert ckpt.model_parallel_size == 2
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=0) / "model"
    assert sorted(f.name for f in out.glob("*.pth")) == ["consolidated.00.pth", "consolidated.01.pth"]
    for i, part in enumerate(parts):
        del part["rope.freqs"]  # a cache Meta ships; not a weight, not written back
        assert_same(torch.load(out / f"consolidated.{i:02d}.pth", weights_only=True), part)
    assert json.loads((out / "params.json").read_text()) == meta_params()
    # ... and it reads back as the same model
    again = FullModelMetaCheckpointer(out, tmp_path / "out2").load_checkpoint()["model"]
    assert_same(again, FullModelMetaCheckpointer(meta_dir, tmp_path / "out3").load_checkpoint()["model"])


def test_meta_model_parallel_size_overrides_the_input_count(meta_dir, tmp_path):
    single = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    del single["rope.freqs"]
    # one file in, two out (what Meta's 13B layout looks like)
    ckpt = FullModelMetaCheckpointer(meta_dir, tmp_path / "a", model_parallel_size=2)
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=0) / "model"
    for i, part in enumerate(split_meta(single, 2)):
        assert_same(torch.load(out / f"consolidated.{i:02d}.pth", weights_only=True), part)
    # two files in, one merged file out
    _meta_mp_dir(meta_dir, tmp_path / "meta_mp", 2)
    ckpt = FullModelMetaCheckpointer(tmp_path / "meta_mp", tmp_path / "b", model_parallel_size=1)
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=0) / "model"
    assert [f.name for f in out.glob("*.pth")] == ["consolidated.00.pth"]
    assert_same(torch.load(out / "consolidated.00.pth", weights_only=True), single)


def test_meta_model_parallel_files_compute_the_model_as_tensor_parallel_slices(meta_dir, tmp_path):
    """The written slices work as Meta's tensor parallelism uses them, independent of any table:
    per-file attention (its whole q heads with their GQA kv heads) and SwiGLU outputs sum to the
    full layer's; per-file embedding columns and logit rows concatenate to the full ones."""
    import torch.nn.functional as F

    ckpt = FullModelMetaCheckpointer(meta_dir, tmp_path / "o", model_parallel_size=2)
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=0) / "model"
    full = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    parts = [torch.load(out / f"consolidated.{i:02d}.pth", weights_only=True) for i in range(2)]

    def attention(sd, x, heads, kv_heads):
        t, hd = x.shape[0], 32 // HEADS
        q = (x @ sd["layers.0.attention.wq.weight"].T).view(t, heads, hd).transpose(0, 1)
        k = (x @ sd["layers.0.attention.wk.weight"].T).view(t, kv_heads, hd).transpose(0, 1)
        v = (x @ sd["layers.0.attention.wv.weight"].T).view(t, kv_heads, hd).transpose(0, 1)
        k, v = (z.repeat_interleave(heads // kv_heads, dim=0) for z in (k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(t, -1)
        return o @ sd["layers.0.attention.wo.weight"].T

    def swiglu(sd, x):
        w = lambda n: sd[f"layers.0.feed_forward.{n}.weight"]  # noqa: E731
        return (F.silu(x @ w("w1").T) * (x @ w("w3").T)) @ w("w2").T

    x = torch.randn(7, 32)
    torch.testing.assert_close(sum(attention(p, x, HEADS // 2, KV_HEADS // 2) for p in parts),
                               attention(full, x, HEADS, KV_HEADS))
    torch.testing.assert_close(sum(swiglu(p, x) for p in parts), swiglu(full, x))
    tokens = torch.tensor([1, 5, 63])
    torch.testing.assert_close(torch.cat([p["tok_embeddings.weight"][tokens] for p in parts], -1),
                               full["tok_embeddings.weight"][tokens])
    torch.testing.assert_close(torch.cat([x @ p["output.weight"].T for p in parts], -1),
                               x @ full["output.weight"].T)
    for p in parts:
        assert_same({"n": p["norm.weight"]}, {"n": full["norm.weight"]})


@pytest.mark.parametrize("value, message", [
    (0, "model_parallel_size must be a positive integer or null (the input's file count), got 0"),
    ("2", "model_parallel_size must be a positive integer or null (the input's file count), got '2'"),
    (3, "model_parallel_size (3) must divide n_heads=4, n_kv_heads=2, dim=32 from"),
    (4, "model_parallel_size (4) must divide n_kv_heads=2 from"),
])  # fmt: skip
def test_meta_model_parallel_size_errors(meta_dir, tmp_path, value, message):
    from tunekit.checkpointing import CheckpointError

    with pytest.raises(CheckpointError) as info:
        FullModelMetaCheckpointer(meta_dir, tmp_path / "out", model_parallel_size=value)
    assert message in str(info.value)
    if isinstance(value, int) and value > 1:
        assert "params.json" in str(info.value) and "a divisor" in str(info.value)


def test_meta_save_refuses_weights_that_do_not_split_evenly(meta_dir, tmp_path):
    from tunekit.checkpointing import CheckpointError

    ckpt = FullModelMetaCheckpointer(meta_dir, tmp_path / "out", model_parallel_size=2)
    sd = ckpt.load_checkpoint()["model"]
    sd["output.weight"] = torch.zeros(63, 32)  # an odd vocabulary cannot be cut in two
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint({"model": sd}, epoch=0)
    assert ("Cannot save epoch_0 as 2 model-parallel files: 2 does not divide output.weight "
            "(dim 0 = 63)") in str(info.value)
    assert not (tmp_path / "out" / "epoch_0").exists()  # nothing half-written left behind


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
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0) / "model"
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
