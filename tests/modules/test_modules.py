"""Unit tests of the building blocks against HF's Llama pieces and first principles."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half

from tunekit.modules import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    RMSNorm,
    RotaryPositionalEmbeddings,
    TransformerDecoderLayer,
)
from tunekit.modules.peft import LoRALinear, disable_adapters, merge_lora_weights_


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_hf_bitwise(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48, dtype=dtype) * 3
    ours, ref = RMSNorm(48, eps=1e-6).to(dtype), LlamaRMSNorm(48, eps=1e-6).to(dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ours.scale.copy_(ref.weight)
    out = ours(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref(x), rtol=0, atol=0)


def _hf_rope(x, positions, base):
    """HF rotate-half RoPE on [b, s, n, hd] with the same inv_freq arithmetic as HF."""
    hd = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = positions.float()[..., None] * inv_freq  # [b, s, hd/2]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[:, :, None], emb.sin()[:, :, None]
    return x * cos + rotate_half(x) * sin


def _to_interleaved(x):  # last dim: [first half | second half] -> pairs
    hd = x.shape[-1]
    return x.unflatten(-1, (2, hd // 2)).transpose(-1, -2).flatten(-2)


def test_rope_matches_hf_rotate_half_after_permutation():
    torch.manual_seed(0)
    b, s, n, hd, base = 2, 9, 3, 16, 500_000.0
    x = torch.randn(b, s, n, hd)
    pos = torch.randint(0, 64, (b, s))
    rope = RotaryPositionalEmbeddings(hd, max_seq_len=64, base=base)
    ref = _to_interleaved(_hf_rope(x, pos, base))
    torch.testing.assert_close(rope(_to_interleaved(x), input_pos=pos), ref, rtol=0, atol=1e-6)
    # no input_pos == positions 0..s-1
    default = rope(x)
    torch.testing.assert_close(default, rope(x, input_pos=torch.arange(s).expand(b, s)), rtol=0, atol=0)
    assert rope(x.bfloat16()).dtype == torch.bfloat16


def test_rope_rebuilds_after_meta():
    with torch.device("meta"):
        rope = RotaryPositionalEmbeddings(8, max_seq_len=16)
    assert rope.cache.is_meta and "cache" not in rope.state_dict()
    rope.reset_parameters()
    torch.testing.assert_close(rope.cache, RotaryPositionalEmbeddings(8, max_seq_len=16).cache, rtol=0, atol=0)
    # position 0 is the identity
    x = torch.randn(1, 1, 2, 8)
    torch.testing.assert_close(rope(x), x, rtol=0, atol=0)


def _attn(num_heads=4, num_kv_heads=2, dim=32):
    hd = dim // num_heads
    return MultiHeadAttention(
        embed_dim=dim, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=hd,
        q_proj=nn.Linear(dim, num_heads * hd, bias=False),
        k_proj=nn.Linear(dim, num_kv_heads * hd, bias=False),
        v_proj=nn.Linear(dim, num_kv_heads * hd, bias=False),
        output_proj=nn.Linear(num_heads * hd, dim, bias=False),
        pos_embeddings=RotaryPositionalEmbeddings(hd, max_seq_len=32),
    )  # fmt: skip


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = _attn(num_heads=4, num_kv_heads=2)
    mha = _attn(num_heads=4, num_kv_heads=4)
    hd = 8
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.output_proj.weight.copy_(gqa.output_proj.weight)
        for src, dst in [(gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)]:
            # kv head j serves query heads 2j, 2j+1
            dst.weight.copy_(src.weight.view(2, 1, hd, 32).expand(2, 2, hd, 32).reshape(4 * hd, 32))
    x = torch.randn(2, 10, 32)
    causal = torch.ones(2, 10, 10, dtype=torch.bool).tril()
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(gqa(x, mask=causal), mha(x), rtol=0, atol=1e-6)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = _attn(num_heads=2, num_kv_heads=1, dim=16)
    x = torch.randn(1, 6, 16)
    q = attn.pos_embeddings(attn.q_proj(x).view(1, 6, 2, 8)).transpose(1, 2)
    k = attn.pos_embeddings(attn.k_proj(x).view(1, 6, 1, 8)).transpose(1, 2)
    v = attn.v_proj(x).view(1, 6, 1, 8).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    ref = attn.output_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 16))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_kv_cache_update_writes_per_row_positions():
    cache = KVCache(batch_size=3, max_seq_len=6, num_kv_heads=2, head_dim=4, dtype=torch.float32)
    k = torch.randn(2, 2, 2, 4)  # b=2 (< cache batch), n_kv=2, s=2
    v = torch.randn(2, 2, 2, 4)
    pos = torch.tensor([[0, 1], [3, 4]])
    kc, vc = cache.update(pos, k, v)
    assert kc.shape == (2, 2, 6, 4)
    torch.testing.assert_close(kc[0, :, 0:2], k[0])
    torch.testing.assert_close(vc[1, :, 3:5], v[1])
    assert kc[1, :, :3].abs().sum() == 0 and cache.k_cache[2].abs().sum() == 0
    cache.reset()
    assert cache.k_cache.abs().sum() == 0 and cache.v_cache.abs().sum() == 0


def test_feed_forward_is_swiglu():
    torch.manual_seed(0)
    w1, w2, w3 = nn.Linear(8, 12, bias=False), nn.Linear(12, 8, bias=False), nn.Linear(8, 12, bias=False)
    x = torch.randn(3, 8)
    torch.testing.assert_close(FeedForward(w1=w1, w2=w2, w3=w3)(x), w2(F.silu(w1(x)) * w3(x)), rtol=0, atol=0)


def test_decoder_layer_is_pre_norm_residual():
    torch.manual_seed(0)
    attn = _attn(dim=32)
    w1, w2, w3 = nn.Linear(32, 40, bias=False), nn.Linear(40, 32, bias=False), nn.Linear(32, 40, bias=False)
    mlp = FeedForward(w1=w1, w2=w2, w3=w3)
    layer = TransformerDecoderLayer(attn=attn, mlp=mlp, sa_norm=RMSNorm(32), mlp_norm=RMSNorm(32))
    x = torch.randn(2, 5, 32)
    h = x + attn(layer.sa_norm(x))
    torch.testing.assert_close(layer(x), h + mlp(layer.mlp_norm(h)), rtol=0, atol=0)


def test_lora_linear_formula_merge_and_disable():
    torch.manual_seed(0)
    lin = LoRALinear(16, 12, rank=4, alpha=2.0, bias=True)
    with torch.no_grad():
        lin.lora_b.weight.normal_()
    x = torch.randn(5, 16, requires_grad=True)
    expected = F.linear(x, lin.weight, lin.bias) + 0.5 * (x @ lin.lora_a.weight.T) @ lin.lora_b.weight.T
    out = lin(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # the in-place add is autograd-safe
    torch.testing.assert_close(x.grad, (lin.weight + 0.5 * lin.lora_b.weight @ lin.lora_a.weight).sum(0).expand(5, 16))
    with disable_adapters(lin):
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)
    assert not lin.disabled
    merged = merge_lora_weights_(lin)
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), expected)


@pytest.mark.parametrize("cuda_layout", [False, True])
def test_grouped_query_decode_without_repeating_kv_matches_repeat(monkeypatch, cuda_layout):
    import torch.nn.functional as F

    from tunekit.modules.attention import _grouped_sdpa

    if cuda_layout:  # CUDA's kernels return [b, h, L, hd] stored as [b, L, h, hd]: same values
        sdpa = F.scaled_dot_product_attention
        monkeypatch.setattr(F, "scaled_dot_product_attention",
                            lambda *a, **kw: sdpa(*a, **kw).transpose(1, 2).contiguous().transpose(1, 2))
    torch.manual_seed(0)
    b, n, n_kv, hd, L = 2, 8, 2, 16, 12
    for s in (1, 3):
        q = torch.randn(b, s, n, hd).transpose(1, 2)  # [b, n, s, hd], non-contiguous like the model's
        k, v = torch.randn(b, n_kv, L, hd), torch.randn(b, n_kv, L, hd)
        pos = torch.tensor([[5 + t for t in range(s)], [2 + t for t in range(s)]])
        mask = pos.unsqueeze(-1) >= torch.arange(L)  # [b, s, L]
        ref = F.scaled_dot_product_attention(q, k.repeat_interleave(n // n_kv, 1),
                                             v.repeat_interleave(n // n_kv, 1), attn_mask=mask.unsqueeze(1))
        torch.testing.assert_close(_grouped_sdpa(q, k, v, mask), ref, atol=1e-6, rtol=1e-5)


def test_cached_gqa_decode_through_the_grouped_path_equals_full_recompute(monkeypatch):
    import tunekit.modules.attention as attention
    from tunekit.models.llama2 import llama2

    torch.manual_seed(0)
    model = llama2(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                   intermediate_dim=64, max_seq_len=32).eval()
    tokens = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        full = model(tokens)
        # As on a GPU with a mask: no native GQA, so cached attention takes the grouped path.
        monkeypatch.setattr(attention, "_native_gqa_ok", lambda q, mask: False)
        model.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=12)
        pre = model(tokens[:, :5], input_pos=torch.arange(5).expand(2, 5))
        steps = [model(tokens[:, i : i + 1], input_pos=torch.full((2, 1), i)) for i in range(5, 9)]
        model.remove_caches()
    torch.testing.assert_close(pre, full[:, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)
