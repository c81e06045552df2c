"""`tunekit download meta-llama/Llama-3.1-8B-Instruct` then `model=llama3_1_8b`, offline.

The download's layout is faked under a models root (the published config.json, tokenizer files
in the Llama 3 layout, ``original/`` with Meta's params.json and tiktoken tokenizer.model, and
weight files whose headers hold the 8B shapes while their data is a sparse hole: nothing is
read beyond the headers). What the recipe does before reading weights is checked: the paths
the model option derives, the checkpointer reading config.json and the weights' headers, the
8B model built on the meta device matching every declared field, and tokenizer=auto choosing
tokenizer.json (HF) or original/tokenizer.model (Meta) with the chat template and stop ids."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from tests.tokenizers._tokenizer_files import llama3_hf_dir, llama3_meta_dir
from tunekit.checkpointing import (
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    check_model_matches,
    model_from_checkpoint,
)
from tunekit.config import compose, instantiate
from tunekit.models import ModelDims, get_model_type

REPO_ID = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG = {  # the published config.json's fields that matter
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "attention_bias": False,
    "mlp_bias": False, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
}


def _sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A safetensors file with these bf16 tensors whose data region is a hole (sparse)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    repo = root / REPO_ID
    llama3_hf_dir(repo)  # tokenizer.json, tokenizer_config.json (chat template), generation_config.json
    (repo / "config.json").write_text(json.dumps(CONFIG))
    mt = get_model_type("LLAMA3")
    dims = mt.hf_config_dims(CONFIG)
    hf_shapes = {mt.tunekit_to_hf_key(k): s for k, s in mt.expected_shapes(dims).items()}
    names = sorted(hf_shapes)
    half = len(names) // 2
    index = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        _sparse_safetensors(repo / fname, {n: hf_shapes[n] for n in part})
        index.update({n: fname for n in part})
    (repo / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    original = repo / "original"
    llama3_meta_dir(original)
    params = mt.meta_params(ModelDims(32, 32, 8, 4096, 128256, 14336), norm_eps=1e-5, rope_theta=500000.0,
                            rope_scaling=CONFIG["rope_scaling"])
    assert params == {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "ffn_dim_multiplier": 1.3,
                      "multiple_of": 1024, "norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256,
                      "use_scaled_rope": True}  # Meta's published params.json, field for field
    (original / "params.json").write_text(json.dumps(params))
    return root


@pytest.mark.parametrize("checkpointer", ["hf", "meta"])
def test_llama3_1_8b_runs_from_the_downloaded_layout(root, checkpointer, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_MODELS_ROOT", str(root))
    cfg = compose("lora_finetune", ["model=llama3_1_8b", f"checkpointer={checkpointer}",
                                    f"output_dir={tmp_path / 'out'}"])
    repo = root / REPO_ID
    want = repo if checkpointer == "hf" else repo / "original"
    assert cfg.checkpointer.checkpoint_dir == str(want) and cfg.checkpointer.model_type == "LLAMA3"
    tok = instantiate(cfg.tokenizer)  # tokenizer=auto: from the files of the checkpoint directory
    if checkpointer == "hf":
        assert type(tok).__name__ == "HFTokenizer" and tok.chat_template
        assert tok.token_to_id("<|eot_id|>") in tok.stop_ids
        ckpt = FullModelHFCheckpointer(**{k: v for k, v in cfg.checkpointer.items() if k != "_component_"})
    else:
        assert type(tok).__name__ == "TiktokenTokenizer" and tok.chat_template  # Llama 3's layout
        n = tok.vocab_size - 256  # the ranks, then Meta's 256 special tokens (128000.. in the real file)
        assert tok.bos_id == n and tok.token_to_id("<|eot_id|>") == n + 9 and n + 9 in tok.stop_ids
        (want / "consolidated.00.pth").write_bytes(b"")  # discovered, never read here
        ckpt = FullModelMetaCheckpointer(**{k: v for k, v in cfg.checkpointer.items() if k != "_component_"})
    with torch.device("meta"):
        model = instantiate(cfg.model, lora=None)
        auto = model_from_checkpoint(want)
    check_model_matches(model, ckpt.model_settings, str(want))  # every declared field, factor 8 included
    check_model_matches(auto, ckpt.model_settings, str(want))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in auto.parameters()) == 8_030_261_248
