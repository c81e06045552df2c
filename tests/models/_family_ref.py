"""Test-only: tiny random checkpoints of each Llama-layout family, built offline with transformers.

Each family spec gives the transformers config class and fields of a tiny model and the tunekit
builder arguments of the same model; ``make_pair`` gives both models with the same weights
(converted through the family's row of ``tunekit.models.MODEL_TYPES``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunekit.models import get_model_type


@dataclass(frozen=True)
class Family:
    name: str                      # tunekit builder module and function: tunekit.models.<name>.<name>
    model_type: str                # MODEL_TYPES key
    hf_class: str                  # transformers causal-LM class
    hf_config_class: str
    hf: dict[str, Any]             # config fields of the tiny model
    tk: dict[str, Any]             # tunekit builder arguments of the same model
    published: dict[str, dict[str, Any]] = field(default_factory=dict)  # size -> HF config fields


_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
_TK = dict(vocab_size=512, embed_dim=64, intermediate_dim=160, num_layers=2, num_heads=4, num_kv_heads=2,
           max_seq_len=256)
# A short original context so that the llama3 scaling changes low, medium and high frequencies
# of the tiny model's 16-wide heads.
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _l3(vocab, dim, ffn, layers, heads, kv, tied, factor):
    return dict(vocab_size=vocab, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
                rms_norm_eps=1e-5, max_position_embeddings=131_072,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": factor,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})


def _q(vocab, dim, ffn, layers, heads, kv, tied, **more):
    more = {"rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 32_768, **more}
    return dict(vocab_size=vocab, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied, **more)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama3", "LLAMA3", "LlamaForCausalLM", "LlamaConfig",
           hf={**_TINY, "rms_norm_eps": 1e-5, "rope_parameters": _LLAMA3_ROPE, "tie_word_embeddings": True},
           tk={**_TK, "norm_eps": 1e-5, "rope_base": 500_000.0, "rope_scaling_factor": 8.0,
               "rope_original_max_position_embeddings": 32, "tie_word_embeddings": True},
           published={"llama3_1_8b": _l3(128_256, 4096, 14_336, 32, 32, 8, False, 8.0),
                      "llama3_1_70b": _l3(128_256, 8192, 28_672, 80, 64, 8, False, 8.0),
                      "llama3_2_1b": _l3(128_256, 2048, 8192, 16, 32, 8, True, 32.0),
                      "llama3_2_3b": _l3(128_256, 3072, 8192, 28, 24, 8, True, 32.0)}),
    Family("mistral", "MISTRAL", "MistralForCausalLM", "MistralConfig",
           hf={**_TINY, "rms_norm_eps": 1e-5, "rope_theta": 1_000_000.0, "sliding_window": None,
               "tie_word_embeddings": False},
           tk={**_TK, "norm_eps": 1e-5, "rope_base": 1_000_000.0},
           published={"mistral_7b": _q(32_768, 4096, 14_336, 32, 32, 8, False, sliding_window=None,
                                            rms_norm_eps=1e-5)}),
    Family("qwen2", "QWEN2", "Qwen2ForCausalLM", "Qwen2Config",
           hf={**_TINY, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
               "use_sliding_window": False},
           tk={**_TK, "norm_eps": 1e-6, "rope_base": 1_000_000.0, "tie_word_embeddings": True},
           published={"qwen2_5_0_5b": _q(151_936, 896, 4864, 24, 14, 2, True),
                      "qwen2_5_1_5b": _q(151_936, 1536, 8960, 28, 12, 2, True),
                      "qwen2_5_3b": _q(151_936, 2048, 11_008, 36, 16, 2, True),
                      "qwen2_5_7b": _q(152_064, 3584, 18_944, 28, 28, 4, False),
                      "qwen2_5_14b": _q(152_064, 5120, 13_824, 48, 40, 8, False),
                      "qwen2_5_32b": _q(152_064, 5120, 27_648, 64, 40, 8, False),
                      "qwen2_5_72b": _q(152_064, 8192, 29_568, 80, 64, 8, False)}),
    # head_dim 32 while hidden_size / heads = 16: the explicit head_dim is exercised.
    Family("qwen3", "QWEN3", "Qwen3ForCausalLM", "Qwen3Config",
           hf={**_TINY, "head_dim": 32, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
               "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False},
           tk={**_TK, "head_dim": 32, "norm_eps": 1e-6, "rope_base": 1_000_000.0},
           published={"qwen3_0_6b": _q(151_936, 1024, 3072, 28, 16, 8, True, head_dim=128, max_position_embeddings=40_960),
                      "qwen3_1_7b": _q(151_936, 2048, 6144, 28, 16, 8, True, head_dim=128, max_position_embeddings=40_960),
                      "qwen3_4b": _q(151_936, 2560, 9728, 36, 32, 8, True, head_dim=128, max_position_embeddings=40_960),
                      "qwen3_8b": _q(151_936, 4096, 12_288, 36, 32, 8, False, head_dim=128, max_position_embeddings=40_960),
                      "qwen3_14b": _q(151_936, 5120, 17_408, 40, 40, 8, False, head_dim=128, max_position_embeddings=40_960),
                      "qwen3_32b": _q(151_936, 5120, 25_600, 64, 64, 8, False, head_dim=128, max_position_embeddings=40_960)}),
)}


def hf_config(fam: Family, **over: Any):
    import transformers

    return getattr(transformers, fam.hf_config_class)(**{**fam.hf, **over}, attn_implementation="eager")


def builder(fam: Family, fn: str | None = None):
    return getattr(importlib.import_module(f"tunekit.models.{fam.name}"), fn or fam.name)


def tk_model(fam: Family, lora=None):
    return builder(fam)(**fam.tk, lora=lora)


def random_hf(fam: Family, seed: int = 0):
    """A random tiny HF model, fp32, eval; norms and biases non-trivial so a wrong key shows up."""
    import transformers

    torch.manual_seed(seed)
    hf = getattr(transformers, fam.hf_class)(hf_config(fam)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return hf


def hf_to_tk(fam: Family, hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> tunekit names through the family's row (what the checkpointer does)."""
    mt = get_model_type(fam.model_type)
    sd = mt.hf_to_tunekit(dict(hf_sd), fam.hf["num_attention_heads"], fam.hf["num_key_value_heads"],
                          fam.hf["hidden_size"])
    if fam.hf.get("tie_word_embeddings"):
        sd.pop("output.weight", None)
    return {k: v.clone() for k, v in sd.items()}


def make_pair(fam: Family, seed: int = 0, lora=None):
    """The random HF model and the tunekit model with the same weights (fp32, eval)."""
    hf = random_hf(fam, seed)
    tk = tk_model(fam, lora=lora).eval()
    missing, unexpected = tk.load_state_dict(hf_to_tk(fam, hf.state_dict()), strict=False)
    assert not unexpected and all(".lora_" in k for k in missing), (missing, unexpected)
    return tk, hf


def save_hf_dir(fam: Family, path: Path, seed: int = 0) -> Path:
    """A tiny HF checkpoint directory (safetensors + config.json) of this family."""
    hf = random_hf(fam, seed)
    hf.save_pretrained(path)
    return path
