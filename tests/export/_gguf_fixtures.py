"""Test-only: tiny random checkpoints of each family with their tokenizer files, built offline with
transformers, and an independent reader of what llama.cpp expects in a GGUF file."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunekit.tokenizers import LLAMA3_PATTERN, TINY_HF_TOKENIZER_DIR, TINY_TOKENIZER_PATH

_BASE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


@dataclass(frozen=True)
class Spec:
    hf_class: str
    config_class: str
    arch: str           # llama.cpp architecture
    tokenizer: str      # "sp" (bundled tokenizer.model), "qwen2" / "llama3" (bundled tokenizer.json, pattern)
    config: dict[str, Any]


SPECS = {
    "llama2": Spec("LlamaForCausalLM", "LlamaConfig", "llama", "sp",
                   {**_BASE, "rms_norm_eps": 1e-5, "rope_theta": 10_000.0, "tie_word_embeddings": False}),
    "llama3": Spec("LlamaForCausalLM", "LlamaConfig", "llama", "llama3",
                   {**_BASE, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 32}}),
    "mistral": Spec("MistralForCausalLM", "MistralConfig", "llama", "sp",
                    {**_BASE, "rms_norm_eps": 1e-5, "rope_theta": 1_000_000.0, "sliding_window": None,
                     "tie_word_embeddings": False}),
    "qwen2": Spec("Qwen2ForCausalLM", "Qwen2Config", "qwen2", "qwen2",
                  {**_BASE, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
                   "use_sliding_window": False}),
    "qwen3": Spec("Qwen3ForCausalLM", "Qwen3Config", "qwen3", "qwen2",
                  {**_BASE, "head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
                   "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False}),
}


def _tokenizer_files(spec: Spec, d: Path) -> None:
    if spec.tokenizer == "sp":
        shutil.copy(TINY_TOKENIZER_PATH, d / "tokenizer.model")
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
             "add_eos_token": False, "chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]"
                                                      "{% endfor %}"}))
        return
    src = Path(TINY_HF_TOKENIZER_DIR)
    text = (src / "tokenizer.json").read_text()
    if spec.tokenizer == "llama3":  # the same vocabulary split by Llama 3's pre-tokenizer pattern
        spec_json = json.loads(text)
        spec_json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_PATTERN
        text = json.dumps(spec_json)
    (d / "tokenizer.json").write_text(text)
    shutil.copy(src / "tokenizer_config.json", d / "tokenizer_config.json")


def make_checkpoint(family: str, d: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor], Any]:
    """A tiny HF checkpoint of ``family`` in ``d``: (dir, its HF state dict, its config)."""
    import transformers

    spec = SPECS[family]
    config = getattr(transformers, spec.config_class)(**spec.config)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.hf_class)(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced tensor shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(d)
    _tokenizer_files(spec, d)
    return d, {k: v.clone() for k, v in model.state_dict().items()}, config


def interleave_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> llama.cpp's interleaved order, row by row (independent of tunekit):
    HF row ``h*hd + c*hd/2 + i`` becomes row ``h*hd + 2*i + c``."""
    hd = w.shape[0] // n_heads
    out = torch.empty_like(w)
    for h in range(n_heads):
        for i in range(hd // 2):
            for c in range(2):
                out[h * hd + 2 * i + c] = w[h * hd + c * (hd // 2) + i]
    return out


_LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
          "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
          "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
          "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
          "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
          "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def expected_tensors(family: str, hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What llama.cpp's converter would store for these HF weights (GGUF name -> tensor)."""
    spec = SPECS[family]
    heads, kv = spec.config["num_attention_heads"], spec.config["num_key_value_heads"]
    out = {"token_embd.weight": hf_sd["model.embed_tokens.weight"], "output_norm.weight": hf_sd["model.norm.weight"]}
    if not spec.config["tie_word_embeddings"]:
        out["output.weight"] = hf_sd["lm_head.weight"]
    for key, w in hf_sd.items():
        if not key.startswith("model.layers."):
            continue
        layer, rest = key.removeprefix("model.layers.").split(".", 1)
        if spec.arch == "llama" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            w = interleave_rows(w, heads if "q_proj" in rest else kv)
        out[f"blk.{layer}.{_LAYER[rest]}"] = w
    return out


def llama3_factors_reference(base: float, head_dim: int, factor: float, low: float, high: float,
                             old_ctx: int) -> np.ndarray:
    """llama.cpp's rope_freqs for the llama3 scaling, written out as its published rule."""
    out = []
    for k in range(0, head_dim, 2):
        freq = 1.0 / (base ** (k / head_dim))
        wavelen = 2 * np.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, tuple[Any, np.ndarray]]]:
    """(metadata {key: value}, tensors {name: (type, float32 array in PyTorch's shape)})."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    meta = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        tensors[t.name] = (t.tensor_type, dequantize(t.data, t.tensor_type).reshape(shape))
    return meta, tensors
