"""Shared helpers of the checkpointing tests (a uniquely named module: every test directory
has its own conftest.py, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

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


def read_weights(d, pattern: str) -> dict[str, torch.Tensor]:
    """Every tensor in the files of ``d`` matching ``pattern`` (safetensors, .bin or .pth)."""
    from tunekit.checkpointing import load_state_file

    sd = {}
    for f in sorted(d.glob(pattern)):
        sd.update(load_state_file(f))
    return sd


def assert_same(a: dict, b: dict) -> None:
    """The same keys, dtypes and values, bit for bit."""
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# The split dim of each Meta weight, written out here from Meta's reference model (not read from
# tunekit's table): ParallelEmbedding splits the embedding width; ColumnParallelLinear (wq, wk,
# wv, w1, w3, output) splits output rows; RowParallelLinear (wo, w2) splits input columns.
META_SPLIT = {"tok_embeddings": 1, "output": 0, "wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0,
              "w3": 0, "w2": 1}


def meta_split_dim(key: str) -> int | None:
    """The dim Meta's model-parallel files split ``key`` along (None: replicated)."""
    return META_SPLIT.get(key.removesuffix(".weight").rsplit(".", 1)[-1])


def split_meta(full: dict, n: int) -> list[dict]:
    """``full`` (Meta names) as the ``n`` model-parallel files Meta would ship."""
    parts = [{} for _ in range(n)]
    for k, w in full.items():
        dim = meta_split_dim(k)
        for i, piece in enumerate([w] * n if dim is None else w.chunk(n, dim=dim)):
            parts[i][k] = piece.clone()
    return parts
