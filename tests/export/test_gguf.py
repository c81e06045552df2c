"""GGUF export: every family's tiny checkpoint written, read back with gguf's own reader, and
compared tensor by tensor and key by key with the model and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _gguf_fixtures import SPECS, expected_tensors, llama3_factors_reference, make_checkpoint, read_gguf

from tunekit.export import GGUFExportError, export_gguf
from tunekit.tokenizers import tokenizer_from_dir

FAMILIES = sorted(SPECS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_ckpts")
    return {f: make_checkpoint(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf_out")
    done = {}
    for family, (d, _, _) in checkpoints.items():
        # (transformers' GGUF reader switches to a Mistral path of its own when general.name says "mistral")
        export_gguf(d, out / f"{family}.gguf", dtype="f32", name=f"tiny-{SPECS[family].arch}-{len(done)}")
        done[family] = read_gguf(out / f"{family}.gguf")
    return done


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_is_the_models_in_llama_cpp_layout(family, checkpoints, exported):
    _, hf_sd, _ = checkpoints[family]
    _, tensors = exported[family]
    want = expected_tensors(family, hf_sd)
    if family == "llama3":
        want["rope_freqs.weight"] = None  # checked below
    assert sorted(tensors) == sorted(want)
    for name, w in want.items():
        if w is None:
            continue
        kind, data = tensors[name]
        assert kind.name == "F32", name
        assert data.shape == tuple(w.shape), name
        assert np.array_equal(data, w.numpy()), name


@pytest.mark.parametrize("family", FAMILIES)
def test_metadata_describes_the_model(family, checkpoints, exported):
    d, _, config = checkpoints[family]
    meta, _ = exported[family]
    arch = SPECS[family].arch
    c = SPECS[family].config
    head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
    rope = c.get("rope_theta") or c["rope_parameters"]["rope_theta"]
    assert meta["general.architecture"] == arch
    assert meta["general.file_type"] == 0  # ALL_F32
    expect = {"context_length": 256, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
              "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": head_dim,
              "attention.key_length": head_dim, "attention.value_length": head_dim, "vocab_size": 512}
    for key, value in expect.items():
        assert meta[f"{arch}.{key}"] == value, key
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(rope)
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c["rms_norm_eps"])


@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_order_and_special_tokens_are_the_tokenizers(family, checkpoints, exported):
    d, _, _ = checkpoints[family]
    meta, _ = exported[family]
    tok = tokenizer_from_dir(d)
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 512
    config = json.loads((d / "tokenizer_config.json").read_text())
    assert meta["tokenizer.chat_template"] == config["chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert meta["tokenizer.ggml.add_bos_token"] == bool(config["add_bos_token"])
    if SPECS[family].tokenizer == "sp":
        sp = tok.sp
        assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.pre"] == "default"
        assert tokens == [sp.id_to_piece(i) for i in range(512)]
        assert np.allclose(meta["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(512)])
        types = meta["tokenizer.ggml.token_type"]
        assert types[sp.unk_id()] == 2 and types[sp.bos_id()] == 3 and types[sp.eos_id()] == 3
        assert all(types[i] == 6 for i in range(512) if sp.is_byte(i))
        assert meta["tokenizer.ggml.bos_token_id"] == 1 and "tokenizer.ggml.padding_token_id" not in meta
        return
    spec = json.loads((d / "tokenizer.json").read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id.update({t["id"]: t["content"] for t in spec["added_tokens"]})
    assert tokens == [by_id[i] for i in range(512)]
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == ("llama-bpe" if family == "llama3" else "qwen2")
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    types = meta["tokenizer.ggml.token_type"]
    assert all(types[t["id"]] == (3 if t["special"] else 4) for t in spec["added_tokens"])
    assert meta["tokenizer.ggml.padding_token_id"] == tok.token_to_id(config["pad_token"])
    assert "tokenizer.ggml.bos_token_id" not in meta  # this tokenizer has no BOS


def test_llama3_rope_scaling_is_stored_as_llama_cpp_rope_freqs(exported):
    _, tensors = exported["llama3"]
    kind, factors = tensors["rope_freqs.weight"]
    p = SPECS["llama3"].config["rope_parameters"]
    want = llama3_factors_reference(p["rope_theta"], 16, p["factor"], p["low_freq_factor"], p["high_freq_factor"],
                                    p["original_max_position_embeddings"])
    assert kind.name == "F32" and factors.shape == (8,)
    assert {1.0, 8.0} <= set(np.round(factors, 6).tolist())  # high, low and interpolated frequencies occur
    np.testing.assert_allclose(factors, want, rtol=1e-6)


@pytest.mark.parametrize("dtype,ggml", [("f16", "F16"), ("bf16", "BF16")])
def test_half_precision_tensors_equal_the_weights_cast(dtype, ggml, checkpoints, tmp_path):
    d, hf_sd, _ = checkpoints["qwen2"]
    export_gguf(d, tmp_path / "m.gguf", dtype=dtype)
    meta, tensors = read_gguf(tmp_path / "m.gguf")
    assert meta["general.file_type"] == {"f16": 1, "bf16": 32}[dtype]
    torch_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    for name, w in expected_tensors("qwen2", hf_sd).items():
        kind, data = tensors[name]
        if w.dim() == 1:
            assert kind.name == "F32" and np.array_equal(data, w.numpy()), name
        else:
            assert kind.name == ggml, name
            assert np.array_equal(data, w.to(torch_dtype).float().numpy()), name


def test_q8_0_tensors_are_within_quantization_error(checkpoints, tmp_path):
    d, hf_sd, _ = checkpoints["llama2"]
    export_gguf(d, tmp_path / "m.gguf", dtype="q8_0")
    meta, tensors = read_gguf(tmp_path / "m.gguf")
    assert meta["general.file_type"] == 7
    for name, w in expected_tensors("llama2", hf_sd).items():
        kind, data = tensors[name]
        if w.dim() == 1:
            assert kind.name == "F32" and np.array_equal(data, w.numpy()), name
            continue
        assert kind.name == "Q8_0", name
        # one fp16 scale d = max|w| / 127 per 32 values: rounding to the step (d / 2) plus the scale's
        # own fp16 rounding (127 * d * 2**-11) bounds the error
        step = w.float().reshape(-1, 32).abs().amax(1, keepdim=True) / 127
        err = (torch.from_numpy(data).reshape(-1, 32) - w.float().reshape(-1, 32)).abs()
        assert bool((err <= step * (0.5 + 127 * 2**-11) + 1e-7).all()), name
        assert err.max() > 0  # it was quantized


def test_tensors_of_a_run_in_meta_format_match_the_hf_export(checkpoints, tmp_path):
    """The same Llama 2 weights exported from HF and from Meta files give the same tensors."""
    from tunekit.cli.convert import main as convert

    d, _, _ = checkpoints["llama2"]
    assert convert([str(d), str(tmp_path / "meta"), "--to", "meta"]) == 0
    export_gguf(tmp_path / "meta", tmp_path / "meta.gguf", dtype="f32")
    export_gguf(d, tmp_path / "hf.gguf", dtype="f32")
    _, a = read_gguf(tmp_path / "meta.gguf")
    _, b = read_gguf(tmp_path / "hf.gguf")
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(a[k][1], b[k][1]) for k in a)


def test_refusals_name_the_problem_and_touch_nothing(checkpoints, tmp_path):
    d, _, _ = checkpoints["qwen2"]
    dest = tmp_path / "x.gguf"
    dest.write_bytes(b"mine")
    with pytest.raises(GGUFExportError, match="already exists.*--force"):
        export_gguf(d, dest)
    with pytest.raises(GGUFExportError, match="does not end in .gguf"):
        export_gguf(d, tmp_path / "x.bin")
    with pytest.raises(GGUFExportError, match="inside the model directory"):
        export_gguf(d, d / "in.gguf")
    assert dest.read_bytes() == b"mine" and not (d / "in.gguf").exists()
    export_gguf(d, dest, force=True)
    assert dest.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["x.gguf"]  # no temporary file left behind


def test_meta_llama3_without_its_scaling_factor_is_refused(tmp_path):
    """params.json says use_scaled_rope but not the factor GGUF's rope_freqs need."""
    import shutil

    src = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2" / "meta"
    shutil.copytree(src, tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**params, "use_scaled_rope": True}))
    with pytest.raises(GGUFExportError, match="use_scaled_rope=true.*HF-format files"):
        export_gguf(tmp_path / "meta", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("family", ["llama2", "mistral", "qwen2", "qwen3"])
def test_transformers_gguf_reader_gets_the_same_model(family, checkpoints, exported, tmp_path_factory):
    """transformers' own GGUF loader (an implementation of llama.cpp's conventions independent of this
    one: it undoes llama.cpp's q/k order itself) builds the model from the file with the same logits.
    (Llama 3 is left out: that loader ignores rope_freqs, the tensor carrying the RoPE scaling.)"""
    from transformers import AutoModelForCausalLM

    d, _, _ = checkpoints[family]
    out = tmp_path_factory.getbasetemp() / "gguf_out0"
    ref = AutoModelForCausalLM.from_pretrained(d).eval()
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=f"{family}.gguf").eval()
    tokens = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, ref(tokens).logits, atol=1e-5, rtol=0)


def test_vocabulary_is_padded_to_the_embedding_rows_and_a_larger_one_refused(tmp_path):
    """Like Qwen2.5 (151665 tokens, 151936 rows): llama.cpp needs one token per embedding row."""
    from tunekit.export import pad_vocab, read_vocab

    d, _, _ = make_checkpoint("qwen2", tmp_path / "q")
    v = read_vocab(d)
    pad_vocab(v, 520)
    assert v.tokens[512:] == [f"[PAD{i}]" for i in range(512, 520)] and set(v.types[512:]) == {5}
    with pytest.raises(ValueError, match="512 tokens but the model has only 500 embedding rows"):
        pad_vocab(read_vocab(d), 500)
