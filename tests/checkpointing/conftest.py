"""Tiny checkpoints in every format, written by code (transformers for the HF side)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _ckpt_helpers import HEADS, KV_HEADS, SIZES, meta_params, reference_meta_from_hf, tiny_hf_config, tiny_tk_model  # noqa: F401


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
