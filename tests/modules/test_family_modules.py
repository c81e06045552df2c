"""The blocks later families add: tied output projection, per-head q/k norms, llama3 RoPE scaling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunekit.models.llama2 import init_on_device
from tunekit.models.qwen3 import qwen3
from tunekit.modules import Llama3RopeScaling, RotaryPositionalEmbeddings, TiedLinear, TransformerDecoder

TINY = dict(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=48,
            max_seq_len=32)


def _tied() -> TransformerDecoder:
    return qwen3(**TINY, head_dim=16, tie_word_embeddings=True)


def test_tied_output_has_no_weight_of_its_own_and_stays_tied_through_materialising_and_loading():
    torch.manual_seed(0)
    ref = _tied()
    sd = ref.state_dict()
    assert "output.weight" not in sd and isinstance(ref.output, TiedLinear)
    assert sum(p.numel() for p in ref.parameters()) == sum(v.numel() for v in sd.values())

    with torch.device("meta"):
        model = _tied()
    model.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    model.init_buffers()
    assert model.output.weight is model.tok_embeddings.weight
    tokens = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(model(tokens), ref(tokens), atol=0, rtol=0)

    with torch.device("meta"):
        fresh = _tied()
    init_on_device(fresh, "cpu", dtype=torch.bfloat16)
    assert fresh.output.weight is fresh.tok_embeddings.weight and fresh.output.weight.dtype == torch.bfloat16


def test_tied_weight_is_one_parameter_whose_gradient_is_the_sum_of_both_uses():
    torch.manual_seed(0)
    tied = _tied()
    untied = qwen3(**TINY, head_dim=16)
    untied.load_state_dict({**tied.state_dict(), "output.weight": tied.tok_embeddings.weight.detach().clone()})
    tokens = torch.randint(0, 64, (2, 9))
    tied(tokens).logsumexp(-1).sum().backward()
    untied(tokens).logsumexp(-1).sum().backward()
    emb = tied.tok_embeddings.weight
    assert [n for n, p in tied.named_parameters() if p is emb] == ["tok_embeddings.weight"]
    both = untied.tok_embeddings.weight.grad + untied.output.weight.grad
    torch.testing.assert_close(emb.grad, both, atol=1e-6, rtol=1e-5)


def test_a_tied_model_accepts_a_stored_copy_of_the_output_only_when_equal():
    model = _tied()
    sd = dict(model.state_dict())
    model.load_state_dict({**sd, "output.weight": sd["tok_embeddings.weight"].clone()}, strict=True)
    with pytest.raises(RuntimeError, match="differs from tok_embeddings.weight"):
        model.load_state_dict({**sd, "output.weight": torch.zeros_like(sd["tok_embeddings.weight"])})


def test_tied_linear_must_tie_to_the_decoders_own_embedding():
    other = nn.Embedding(64, 32)
    with pytest.raises(ValueError, match="tied to this decoder's tok_embeddings"):
        TransformerDecoder(tok_embeddings=nn.Embedding(64, 32), layers=[], norm=nn.Identity(),
                           output=TiedLinear(other), max_seq_len=8)


def test_qk_norms_normalise_each_head_before_rope():
    torch.manual_seed(0)
    model = qwen3(**TINY, head_dim=16)
    attn = model.layers[0].attn
    assert attn.q_norm.scale.shape == (16,) and attn.k_norm.scale.shape == (16,)
    assert attn.q_proj.weight.shape == (4 * 16, 32)  # heads * head_dim != embed_dim
    seen = {}
    attn.pos_embeddings.register_forward_hook(lambda m, args, out: seen.setdefault("q", args[0]))
    model(torch.randint(0, 64, (1, 5)))
    rms = seen["q"].pow(2).mean(-1).sqrt()  # every query head of every position has unit RMS
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


def test_llama3_scaling_keeps_high_frequencies_and_divides_low_ones():
    plain = RotaryPositionalEmbeddings(16, max_seq_len=4, base=500_000.0)
    scaled = RotaryPositionalEmbeddings(16, max_seq_len=4, base=500_000.0,
                                        scaling=Llama3RopeScaling(factor=8.0, original_max_position_embeddings=32))
    angle = lambda r: torch.atan2(-r.cache[1, 1, 0::2], r.cache[1, 0, 0::2])  # noqa: E731
    a, b = angle(plain), angle(scaled)
    assert torch.equal(a[0], b[0])  # wavelength 2*pi < 32/4: unchanged
    torch.testing.assert_close(b[-1], a[-1] / 8)  # wavelength > 32: divided by the factor
    assert scaled.scaling_type.startswith("llama3(factor=8,") and plain.scaling_type is None
