"""Llama 2 key maps, RoPE permutation, PEFT names and the MODEL_TYPES table (through the public
``tunekit.models`` names: the LLAMA2 row's methods)."""

from __future__ import annotations

import pytest
import torch

from tunekit.models import MODEL_TYPES, ConversionError, ModelDims, get_model_type, permute_from_hf, permute_to_hf

C = get_model_type("LLAMA2")


def _hf_sd(layers=2, heads=4, kv=2, dim=32, ffn=48, vocab=10):
    hd = dim // heads
    sd = {"model.embed_tokens.weight": torch.randn(vocab, dim), "model.norm.weight": torch.randn(dim),
          "lm_head.weight": torch.randn(vocab, dim)}  # fmt: skip
    for i in range(layers):
        p = f"model.layers.{i}."
        sd |= {p + "self_attn.q_proj.weight": torch.randn(heads * hd, dim),
               p + "self_attn.k_proj.weight": torch.randn(kv * hd, dim),
               p + "self_attn.v_proj.weight": torch.randn(kv * hd, dim),
               p + "self_attn.o_proj.weight": torch.randn(dim, heads * hd),
               p + "self_attn.rotary_emb.inv_freq": torch.randn(hd // 2),
               p + "input_layernorm.weight": torch.randn(dim),
               p + "post_attention_layernorm.weight": torch.randn(dim),
               p + "mlp.gate_proj.weight": torch.randn(ffn, dim), p + "mlp.down_proj.weight": torch.randn(dim, ffn),
               p + "mlp.up_proj.weight": torch.randn(ffn, dim)}  # fmt: skip
    return sd


def test_permutation_matches_rope_pairs():
    # HF rotates (x[j], x[j + hd/2]); interleaved rotates (x[2j], x[2j+1]). Row h*hd + c*hd/2 + j
    # of the HF weight must land on row h*hd + 2j + c.
    n, hd, dim = 3, 8, 5
    w = torch.arange(n * hd, dtype=torch.float32)[:, None].expand(n * hd, dim).contiguous()
    out = permute_from_hf(w, n)
    for h in range(n):
        for j in range(hd // 2):
            for c in range(2):
                assert out[h * hd + 2 * j + c, 0] == h * hd + c * hd // 2 + j
    assert torch.equal(permute_to_hf(out, n), w)


def test_hf_round_trip_exact_and_skips_inv_freq():
    sd = _hf_sd()
    tk = C.hf_to_tunekit(sd, 4, 2, 32)
    assert not any("inv_freq" in k for k in tk)
    assert set(tk) == set(C.expected_shapes(ModelDims(2, 4, 2, 32, 10, 48)))
    back = C.tunekit_to_hf(tk, 4, 2, 32)
    assert set(back) == {k for k in sd if "inv_freq" not in k}
    assert all(torch.equal(back[k], sd[k]) for k in back)
    # k uses the kv-head count: permuting with 4 heads would give different rows.
    k = sd["model.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(tk["layers.0.attn.k_proj.weight"], permute_from_hf(k, 2))
    assert not torch.equal(permute_from_hf(k, 2), permute_from_hf(k, 1))


def test_meta_round_trip_exact_and_skips_rope_freqs():
    tk = C.hf_to_tunekit(_hf_sd(), 4, 2, 32)
    meta = C.tunekit_to_meta(tk)
    assert "layers.1.attention.wq.weight" in meta and "norm.weight" in meta
    back = C.meta_to_tunekit({**meta, "rope.freqs": torch.randn(4)})
    assert set(back) == set(tk) and all(torch.equal(back[k], tk[k]) for k in tk)


def test_unknown_keys_are_listed():
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.mystery\.weight.*vision_tower\.x"):
        C.hf_to_tunekit({"model.layers.0.mystery.weight": torch.zeros(1), "vision_tower.x": torch.zeros(1)}, 4, 2, 32)
    with pytest.raises(ConversionError, match="layers.0.attention.wz.weight"):
        C.meta_to_tunekit({"layers.0.attention.wz.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="bogus"):
        C.tunekit_to_hf({"bogus": torch.zeros(1)}, 4, 2, 32)
    with pytest.raises(ConversionError, match="num_attention_heads"):
        C.hf_to_tunekit({"model.layers.0.self_attn.q_proj.weight": torch.zeros(6, 4)}, 4, 2, 32)


def test_adapter_to_peft_names_and_b_permutation():
    a, b = torch.randn(8, 32), torch.randn(32, 8)
    kb = torch.randn(16, 8)
    sd = {"layers.0.attn.q_proj.lora_a.weight": a, "layers.0.attn.q_proj.lora_b.weight": b,
          "layers.0.attn.k_proj.lora_b.weight": kb, "layers.1.mlp.w2.lora_a.weight": a,
          "output.lora_b.weight": b}  # fmt: skip
    peft = C.adapter_to_peft(sd, 4, 2, 32)
    p = "base_model.model.model.layers."
    assert torch.equal(peft[p + "0.self_attn.q_proj.lora_A.weight"], a)  # A: input side, untouched
    assert torch.equal(peft[p + "0.self_attn.q_proj.lora_B.weight"], permute_to_hf(b, 4))
    assert torch.equal(peft[p + "0.self_attn.k_proj.lora_B.weight"], permute_to_hf(kb, 2))
    assert p + "1.mlp.down_proj.lora_A.weight" in peft
    assert "base_model.model.lm_head.lora_B.weight" in peft
    back = C.peft_to_adapter(peft, 4, 2, 32)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(ConversionError, match="layers.0.attn.q_proj.weight"):
        C.adapter_to_peft({"layers.0.attn.q_proj.weight": a}, 4, 2, 32)


def test_peft_config_maps_targets_and_patterns():
    cfg = C.peft_config({"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["q_proj", "output_proj", "w1", "output"],
                         "rank_pattern": {"layers.1.attn.q_proj": 2}, "alpha_pattern": {"w1": 3.0}}, "/base")  # fmt: skip
    assert cfg["target_modules"] == ["gate_proj", "lm_head", "o_proj", "q_proj"]
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["lora_dropout"] == 0.1
    assert cfg["rank_pattern"] == {"layers.1.self_attn.q_proj": 2}
    assert cfg["alpha_pattern"] == {"gate_proj": 3.0}
    with pytest.raises(ConversionError, match="valid targets"):
        C.peft_config({"targets": ["wq"]})


def test_meta_params_dims_and_merge_dims():
    d = C.meta_params_dims({"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-5,
                            "vocab_size": -1})  # fmt: skip
    assert d.intermediate_dim == 11008 and d.vocab_size is None and d.num_kv_heads == 32
    d70 = C.meta_params_dims({"dim": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "multiple_of": 4096,
                              "ffn_dim_multiplier": 1.3})  # fmt: skip
    assert d70.intermediate_dim == 28672 and d70.num_kv_heads == 8
    assert C.meta_merge_dim("layers.3.attention.wo.weight") == 1
    assert C.meta_merge_dim("tok_embeddings.weight") == 1
    assert C.meta_merge_dim("layers.0.ffn_norm.weight") is None


def test_model_types_table():
    mt = get_model_type("LLAMA2")
    assert mt is MODEL_TYPES["LLAMA2"] and mt.peft_target_names["w2"] == "down_proj"
    with pytest.raises(ValueError, match=r"Unknown model_type 'GEMMA2'.*valid model types: LLAMA2, LLAMA3, MISTRAL"):
        get_model_type("GEMMA2")
    with pytest.raises(ValueError, match="did you mean 'LLAMA2'"):
        get_model_type("llama2")


def test_deprecated_convert_module_still_answers_with_the_row():
    """``tunekit.models.llama2._convert`` (older importers outside models/) is aliases of the row."""
    import importlib

    old = importlib.import_module("tunekit.models.llama2._convert")
    assert old.ConversionError is ConversionError and old.Llama2Dims is ModelDims
    sd = C.hf_to_tunekit(_hf_sd(), 4, 2, 32)
    assert all(torch.equal(old.tunekit_to_hf(sd, 4, 2, 32)[k], v) for k, v in C.tunekit_to_hf(sd, 4, 2, 32).items())
    assert old.MERGE_DIMS["attention.wo.weight"] == 1 and old.MERGE_DIMS["tok_embeddings.weight"] == 1
    assert old.MERGE_DIMS["norm.weight"] is None and len(old.MERGE_DIMS) == 12
    assert old.PEFT_TARGET_NAMES == dict(C.peft_target_names)
