"""Llama 3.1 / 3.2 (llama3 RoPE scaling, tied embeddings): parity with transformers at tiny sizes,
exact HF and Meta checkpoint round trips, published sizes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from _family_checks import (
    check_hf_round_trip_is_bit_exact,
    check_kv_cache_decode_equals_recompute,
    check_logits_match_transformers,
    check_published_parameter_counts,
)
from _family_ref import FAMILIES, tk_model

from tunekit.checkpointing import CheckpointError, FullModelMetaCheckpointer, check_model_matches
from tunekit.models import ModelDims, get_model_type
from tunekit.modules import Llama3RopeScaling, RotaryPositionalEmbeddings
from tunekit.tokenizers import TINY_TOKENIZER_PATH

FAMILY = "llama3"


def test_logits_match_transformers():
    check_logits_match_transformers(FAMILY)


def test_hf_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path):
    check_hf_round_trip_is_bit_exact(FAMILY, tmp_path)


def test_kv_cache_decode_equals_recompute():
    check_kv_cache_decode_equals_recompute(FAMILY)


@pytest.mark.parametrize("size", sorted(FAMILIES[FAMILY].published))
def test_published_size_has_transformers_parameter_count(size):
    check_published_parameter_counts(FAMILY, size)


@pytest.mark.parametrize("dim, ffn, rule", [(4096, 14_336, (1.3, 1024)), (8192, 28_672, (1.3, 4096)),
                                            (2048, 8192, (1.5, 256)), (3072, 8192, (1.0, 256))])
def test_meta_params_reproduce_the_published_ffn_rules(dim, ffn, rule):
    mt = get_model_type("LLAMA3")
    params = mt.meta_params(ModelDims(num_layers=1, num_heads=8, num_kv_heads=8, embed_dim=dim, vocab_size=128_256,
                                      intermediate_dim=ffn), norm_eps=1e-5, rope_theta=500_000.0)
    assert (params["ffn_dim_multiplier"], params["multiple_of"]) == rule
    assert mt.meta_params_dims(params).intermediate_dim == ffn and params["vocab_size"] == 128_256


@pytest.mark.parametrize("factor, head_dim", [(8.0, 128), (32.0, 64), (32.0, 128)])
def test_published_llama3_inverse_frequencies_equal_transformers(factor, head_dim):
    """The published scalings (3.1: factor 8; 3.2: factor 32) at the published head widths."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=head_dim * 8, num_attention_heads=8, max_position_embeddings=131_072,
                      rope_parameters=rope)
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = RotaryPositionalEmbeddings(head_dim, max_seq_len=4, base=500_000.0,
                                      scaling=Llama3RopeScaling(factor=factor))
    # the table holds cos/sin of pos * inv_freq; position 1 gives the angles themselves
    angles = torch.atan2(-ours.cache[1, 1, 0::2], ours.cache[1, 0, 0::2])
    torch.testing.assert_close(angles, ref, atol=1e-7, rtol=1e-6)
    inv = 1.0 / (500_000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    assert torch.equal(Llama3RopeScaling(factor=factor).apply(inv), ref)


def test_invalid_llama3_scaling_is_refused():
    with pytest.raises(ValueError, match=r"need 0 < low_freq_factor < high_freq_factor, got 4.0 and 1.0"):
        Llama3RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)


# ---- Meta format (consolidated.NN.pth + params.json with use_scaled_rope) -------------------------
def _model(tied: bool):
    fam = FAMILIES[FAMILY]
    return tk_model(replace(fam, tk={**fam.tk, "tie_word_embeddings": tied}))


def _meta_dir(tmp_path, tied: bool):
    torch.manual_seed(0)
    model = _model(tied)
    mt = get_model_type("LLAMA3")
    d = tmp_path / "meta"
    d.mkdir()
    meta = mt.tunekit_to_meta(model.state_dict())
    assert "output.weight" in meta  # Meta's files store the output even for tied models (3.2 1B/3B)
    torch.save({k: v.detach().clone() for k, v in meta.items()}, d / "consolidated.00.pth")
    dims = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, vocab_size=512, intermediate_dim=160)
    params = {**mt.meta_params(dims, norm_eps=1e-5, rope_theta=500_000.0), "use_scaled_rope": True}
    assert params["vocab_size"] == 512 and params["rope_theta"] == 500_000.0  # as Meta writes Llama 3's
    (d / "params.json").write_text(json.dumps(params))
    shutil.copy(TINY_TOKENIZER_PATH, d / "tokenizer.model")
    return d


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_meta_round_trip_is_bit_exact(tmp_path, tied):
    src = _meta_dir(tmp_path, tied)
    ckpt = FullModelMetaCheckpointer(src, tmp_path / "out", model_type="LLAMA3")
    with torch.device("meta"):
        model = _model(tied)
    check_model_matches(model, ckpt.model_settings, str(src))  # use_scaled_rope: the llama3 type
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
    model.init_buffers()
    assert model.tie_word_embeddings == tied
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    before = torch.load(src / "consolidated.00.pth", weights_only=True)
    after = torch.load(out / "model" / "consolidated.00.pth", weights_only=True)
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "model" / "params.json").read_text())["use_scaled_rope"] is True


def test_meta_use_scaled_rope_is_refused_by_llama2_and_a_plain_rope_model(tmp_path):
    src = _meta_dir(tmp_path, tied=False)
    with pytest.raises(CheckpointError, match=r"use_scaled_rope=True \(Llama 3.1 RoPE scaling; supported: false\)"):
        FullModelMetaCheckpointer(src, tmp_path / "out", model_type="LLAMA2")
    ckpt = FullModelMetaCheckpointer(src, tmp_path / "out", model_type="LLAMA3")
    fam = FAMILIES[FAMILY]
    with torch.device("meta"):
        plain = tk_model(replace(fam, tk={**fam.tk, "rope_scaling_factor": None}))
    with pytest.raises(CheckpointError, match=r"use_scaled_rope='llama3' where the chosen model builds RoPE "
                                              r"scaling=null"):
        check_model_matches(plain, ckpt.model_settings, str(src))


def test_tied_model_refuses_a_stored_output_that_differs_from_the_embedding():
    model = _model(tied=True)
    sd = dict(model.state_dict())
    sd["output.weight"] = sd["tok_embeddings.weight"] + 1.0
    with pytest.raises(RuntimeError, match=r"differs from tok_embeddings.weight, but this model ties"):
        model.load_state_dict(sd)
