"""Llama 2 builders and decoder: parity with HF, KV cache, packing, meta device."""

from __future__ import annotations

import os

import pytest
import torch
from _llama_hf_ref import TINY, make_pair, tk_model

from tunekit.models.llama2 import init_on_device, llama2_7b, llama2_13b, llama2_70b, llama2_tiny
from tunekit.modules import RotaryPositionalEmbeddings, TransformerDecoder


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,rope_base",
    [(4, 4, 10_000.0), (4, 2, 10_000.0), (4, 1, 500_000.0)],
    ids=["mha", "gqa", "mqa-theta5e5"],
)
def test_logits_match_hf(num_heads, num_kv_heads, rope_base):
    tk, hf = make_pair(num_heads=num_heads, num_kv_heads=num_kv_heads, rope_base=rope_base)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 37))
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True)
        logits = tk(tokens)
        hidden = tk.forward_hidden(tokens)
    assert logits.shape == (2, 37, TINY["vocab_size"])
    assert (logits - ref.logits).abs().max().item() <= 1e-5
    assert (hidden - ref.hidden_states[-1]).abs().max().item() <= 1e-5
    torch.testing.assert_close(tk.output(hidden), logits, rtol=0, atol=0)


def test_tiny_shapes_and_keys():
    m = llama2_tiny()
    sd = m.state_dict()
    assert sd["tok_embeddings.weight"].shape == (512, 128)
    assert sd["layers.0.attn.q_proj.weight"].shape == (128, 128)
    assert sd["layers.0.attn.k_proj.weight"].shape == (64, 128)  # 2 KV heads x 32
    assert sd["layers.3.mlp.w1.weight"].shape == (352, 128)
    assert sd["layers.3.mlp.w2.weight"].shape == (128, 352)
    assert sd["norm.scale"].shape == (128,) and sd["output.weight"].shape == (512, 128)
    per_layer = {k.split(".", 2)[2] for k in sd if k.startswith("layers.0.")}
    assert per_layer == {
        "sa_norm.scale", "mlp_norm.scale", "attn.q_proj.weight", "attn.k_proj.weight",
        "attn.v_proj.weight", "attn.output_proj.weight", "mlp.w1.weight", "mlp.w2.weight", "mlp.w3.weight",
    }  # fmt: skip
    assert len(sd) == 3 + 4 * 9 and m.max_seq_len == 512 and len(m.layers) == 4


@pytest.mark.parametrize(
    "builder,expected", [(llama2_7b, 6_738_415_616), (llama2_13b, 13_015_864_320), (llama2_70b, 68_976_648_192)]
)
def test_param_counts_on_meta(builder, expected):
    with torch.device("meta"):
        m = builder()
    assert sum(p.numel() for p in m.parameters()) == expected
    assert all(t.is_meta for t in [*m.parameters(), *m.buffers()])


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_7b_on_meta_allocates_nothing():
    before = _rss_bytes()
    with torch.device("meta"):
        m = llama2_7b()
    assert _rss_bytes() - before < 64 * 2**20  # the real thing would be 27 GB
    assert all(t.is_meta for t in [*m.parameters(), *m.buffers()])


def test_meta_then_load_assign_matches_cpu_model():
    torch.manual_seed(0)
    ref = llama2_tiny().eval()
    with torch.device("meta"):
        m = llama2_tiny()
    m.load_state_dict(ref.state_dict(), strict=True, assign=True)
    m.init_buffers()
    tokens = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(tokens), ref(tokens), rtol=0, atol=0)


def test_init_on_device_bf16():
    with torch.device("meta"):
        m = llama2_tiny()
    init_on_device(m, "cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in m.parameters())
    assert all(torch.isfinite(p).all() for p in m.parameters())
    rope = m.layers[0].attn.pos_embeddings
    assert rope.cache.dtype == torch.float32
    torch.testing.assert_close(rope.cache, RotaryPositionalEmbeddings(32, 512).cache, rtol=0, atol=0)
    torch.testing.assert_close(m.norm.scale, torch.ones(128, dtype=torch.bfloat16))
    with torch.no_grad():
        logits = m(torch.randint(0, 512, (2, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def _greedy(model: TransformerDecoder, prompt: torch.Tensor, steps: int, cached: bool):
    tokens, all_logits = prompt, []
    if cached:
        model.setup_caches(prompt.shape[0], torch.float32, max_seq_len=prompt.shape[1] + steps)
        b, s = prompt.shape
        logits = model(prompt, input_pos=torch.arange(s).expand(b, s))[:, -1]
    for _i in range(steps):
        if not cached:
            logits = model(tokens)[:, -1]
        all_logits.append(logits)
        nxt = logits.argmax(-1, keepdim=True)  # [b, 1]
        tokens = torch.cat([tokens, nxt], dim=1)
        if cached:
            pos = torch.full_like(nxt, tokens.shape[1] - 1)
            logits = model(nxt, input_pos=pos)[:, -1]
    return tokens, torch.stack(all_logits, 1)


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_kv_cache_decoding_matches_full_recompute(num_kv_heads):
    torch.manual_seed(0)
    m = tk_model(num_heads=4, num_kv_heads=num_kv_heads).eval()
    prompt = torch.randint(0, TINY["vocab_size"], (2, 5))
    with torch.no_grad():
        full_tokens, full_logits = _greedy(m, prompt, 12, cached=False)
        assert not m.caches_are_enabled()
        cached_tokens, cached_logits = _greedy(m, prompt, 12, cached=True)
        assert m.caches_are_enabled()
        assert torch.equal(full_tokens, cached_tokens)
        torch.testing.assert_close(cached_logits, full_logits, rtol=0, atol=1e-5)
        # reset_caches + a second generation gives the same again
        m.reset_caches()
        again = m(prompt, input_pos=torch.arange(5).expand(2, 5))[:, -1]
        torch.testing.assert_close(again, full_logits[:, 0], rtol=0, atol=1e-5)
    m.remove_caches()
    assert not m.caches_are_enabled()


def test_kv_cache_needs_input_pos():
    m = tk_model(num_heads=4, num_kv_heads=2)
    m.setup_caches(1, torch.float32)
    with pytest.raises(ValueError, match="input_pos"):
        m(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds"):
        m.setup_caches(1, torch.float32, max_seq_len=TINY["max_seq_len"] + 1)


def test_packed_block_causal_mask_matches_separate_documents():
    torch.manual_seed(0)
    m = tk_model(num_heads=4, num_kv_heads=2).eval()
    a = torch.randint(0, TINY["vocab_size"], (1, 5))
    b = torch.randint(0, TINY["vocab_size"], (1, 7))
    packed = torch.cat([a, b], dim=1)  # [1, 12]
    input_pos = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    mask = torch.block_diag(torch.ones(5, 5), torch.ones(7, 7)).bool().tril().unsqueeze(0)  # [1, 12, 12]
    with torch.no_grad():
        out = m(packed, mask=mask, input_pos=input_pos)
        torch.testing.assert_close(out[:, :5], m(a), rtol=0, atol=1e-5)
        torch.testing.assert_close(out[:, 5:], m(b), rtol=0, atol=1e-5)
        # a plain causal mask is the is_causal path
        causal = torch.ones(12, 12, dtype=torch.bool).tril().unsqueeze(0)
        torch.testing.assert_close(m(packed, mask=causal), m(packed), rtol=0, atol=1e-5)


def test_builder_reports_all_shape_problems():
    with pytest.raises(ValueError) as e:
        tk_model(num_heads=3, num_kv_heads=2, embed_dim=64)
    assert "divisible by num_heads" in str(e.value) and "multiple of num_kv_heads" in str(e.value)


def test_forward_traces_as_one_graph():
    """No graph breaks (torch.compile friendliness): training, packed and cached decoding."""
    from tunekit.modules.peft import LoRASpec

    torch._dynamo.reset()
    m = tk_model(num_heads=4, num_kv_heads=2, num_layers=1, lora=LoRASpec(targets=["q_proj", "w2"]))
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 8))
    compiled(tokens).sum().backward()
    mask = torch.ones(2, 8, 8, dtype=torch.bool).tril()
    compiled(tokens, mask=mask, input_pos=torch.arange(8).expand(2, 8)).sum().backward()
    m.setup_caches(2, torch.float32, max_seq_len=16)
    with torch.no_grad():
        compiled(tokens[:, :1], input_pos=torch.full((2, 1), 3))
    torch._dynamo.reset()
