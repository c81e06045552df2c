"""Tiny checkpoints in every format, written by code (transformers for the HF side)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

HEADS, KV_HEADS = 4, 2
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2)


def tiny_hf_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        **SIZES, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=10_000.0, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip


def tiny_tk_model(lora=None):
    from tunekit.models.llama2 import llama2

    return llama2(
        vocab_size=SIZES["vocab_size"], num_layers=SIZES["num_hidden_layers"], num_heads=HEADS,
        num_kv_heads=KV_HEADS, embed_dim=SIZES["hidden_size"], intermediate_dim=SIZES["intermediate_size"],
        max_seq_len=64, lora=lora,
    )  # fmt: skip


def reference_meta_from_hf(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An independent HF -> Meta conversion, row by row (not through tunekit's code).

    HF row ``h*hd + c*hd/2 + i`` (half c of pair i) is Meta row ``h*hd + 2*i + c``.
    """
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    out = {"tok_embeddings.weight": hf_sd["model.embed_tokens.weight"],
           "norm.weight": hf_sd["model.norm.weight"], "output.weight": hf_sd["lm_head.weight"]}  # fmt: skip
    for key, w in hf_sd.items():
        if not key.startswith("model.layers."):
            continue
        i, rest = key.removeprefix("model.layers.").split(".", 1)
        mod = rest.removesuffix(".weight")
        if mod in ("self_attn.q_proj", "self_attn.k_proj"):
            n = HEADS if "q_proj" in mod else KV_HEADS
            hd = w.shape[0] // n
            new = torch.empty_like(w)
            for h in range(n):
                for p in range(hd // 2):
                    for c in range(2):
                        new[h * hd + 2 * p + c] = w[h * hd + c * hd // 2 + p]
            w = new
        out[f"layers.{i}.{names[mod]}.weight"] = w
    return out


def meta_params() -> dict:
    # multiple_of=16: int(2*4*32/3)=85 -> 96? we need 64: use ffn_dim_multiplier to land on 64.
    return {"dim": 32, "n_layers": 2, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "vocab_size": -1,
            "multiple_of": 16, "ffn_dim_multiplier": 0.76, "norm_eps": 1e-5}  # fmt: skip


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> Path:
    """transformers-written tiny Llama: sharded safetensors + index + config + tokenizer files."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model = LlamaForCausalLM(tiny_hf_config())
    model.save_pretrained(d, max_shard_size="40KB")
    (d / "tokenizer.model").write_bytes(b"fake sentencepiece model")
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    return d


@pytest.fixture
def hf_dir(hf_model_dir, tmp_path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(hf_model_dir, d)
    return d


@pytest.fixture(scope="session")
def hf_state(hf_model_dir) -> dict[str, torch.Tensor]:
    from tunekit.checkpointing import load_state_file

    sd = {}
    for f in sorted(hf_model_dir.glob("*.safetensors")):
        sd.update(load_state_file(f))
    return sd


@pytest.fixture
def hf_bin_dir(hf_model_dir, hf_state, tmp_path) -> Path:
    """The same weights as two pytorch_model-*.bin shards + index (no safetensors)."""
    d = tmp_path / "hf_bin"
    d.mkdir()
    for f in hf_model_dir.iterdir():
        if f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
            shutil.copy(f, d / f.name)
    keys = list(hf_state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    wmap = {}
    for i, ks in enumerate(halves, 1):
        name = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save({k: hf_state[k].clone() for k in ks}, d / name)
        wmap.update({k: name for k in ks})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return d


@pytest.fixture
def meta_dir(hf_state, tmp_path) -> Path:
    d = tmp_path / "meta"
    d.mkdir()
    sd = reference_meta_from_hf(hf_state)
    sd["rope.freqs"] = torch.randn(4)  # shipped by Meta, skipped by the converter
    torch.save(sd, d / "consolidated.00.pth")
    (d / "params.json").write_text(json.dumps(meta_params()))
    (d / "tokenizer.model").write_bytes(b"fake sentencepiece model")
    return d
