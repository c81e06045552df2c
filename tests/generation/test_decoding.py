"""Sampling helpers and KV-cached generation on small random models."""

from __future__ import annotations

import pytest
import torch

from tunekit.generation import generate, sample_next_token, top_k_filter, top_p_filter
from tunekit.models.llama2 import llama2


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return llama2(vocab_size=61, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                  intermediate_dim=64, max_seq_len=48).eval()


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False], [False, False, True, False, True]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()[0]  # noqa: E731
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    assert keep(1e-6) == [True, False, False, False]  # the top token always stays
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.6)).tolist()[0] == [False, True, False, True]


def test_sampling_respects_filters_and_generator():
    logits = torch.randn(3, 50)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tok = sample_next_token(logits, temperature=1.0, top_k=3, generator=g)
        top3 = logits.topk(3).indices
        assert all(t in row for t, row in zip(tok.tolist(), top3.tolist()))
    a = sample_next_token(logits, temperature=0.7, top_p=0.9, generator=torch.Generator().manual_seed(5))
    b = sample_next_token(logits, temperature=0.7, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


def test_greedy_with_kv_cache_equals_argmax_of_full_recompute():
    model = _model()
    prompt = [1, 7, 9, 3, 22]
    res = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    assert res.steps == 12 and res.stopped == [False] and not model.caches_are_enabled()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert res.tokens[0] == seq[len(prompt):]


def test_cached_decode_logits_match_full_recompute():
    model = _model(1)
    tokens = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=10)
        pre = model(tokens[:, :6], input_pos=torch.arange(6).expand(2, 6))
        steps = [model(tokens[:, i : i + 1], input_pos=torch.full((2, 1), i)) for i in range(6, 10)]
        model.remove_caches()
    torch.testing.assert_close(pre, full[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 6:], atol=1e-5, rtol=1e-5)


def test_stops_at_stop_token_and_batches():
    model = _model(2)
    first = generate(model, [1, 4, 5], max_new_tokens=8, temperature=0.0)
    stop = first.tokens[0][2]
    res = generate(model, [1, 4, 5], max_new_tokens=8, temperature=0.0, stop_tokens=[stop])
    cut = first.tokens[0].index(stop)
    assert res.tokens[0] == first.tokens[0][:cut] and res.stopped == [True] and res.steps == cut + 1
    batch = generate(model, torch.tensor([[1, 4, 5], [1, 4, 5]]), max_new_tokens=8, temperature=0.0)
    assert batch.tokens == [first.tokens[0], first.tokens[0]]
    assert res.tokens_per_second > 0


def test_sampled_generation_is_reproducible_and_capped_by_context():
    model = _model(3)
    a = generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9,
                 generator=torch.Generator().manual_seed(1))
    b = generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9,
                 generator=torch.Generator().manual_seed(1))
    assert a.tokens == b.tokens
    long = generate(model, list(range(40)), max_new_tokens=100, temperature=0.0)
    assert len(long.tokens[0]) == 48 - 40
    with pytest.raises(ValueError, match="no room"):
        generate(model, list(range(48)), max_new_tokens=1)


# ---- on-device sampling (the decode loop's, eager and compiled) -------------------------------


def test_on_device_sampling_follows_the_distribution():
    from tunekit.generation import pick_next_token

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 8000
    logits = probs.log().expand(n, 4)
    args = dict(temperature=torch.tensor(1.0), top_k=torch.tensor(4), top_p=torch.tensor(1.0),
                seed=torch.tensor(7))
    tok = pick_next_token(logits, greedy=False, position=torch.zeros(n, dtype=torch.long), **args)
    freq = torch.bincount(tok, minlength=4).float() / n
    torch.testing.assert_close(freq, probs, atol=0.02, rtol=0)
    # Per position too: one row, many steps.
    tok = torch.cat([pick_next_token(probs.log()[None], greedy=False, position=torch.tensor([p]), **args)
                     for p in range(2000)])
    torch.testing.assert_close(torch.bincount(tok, minlength=4).float() / 2000, probs, atol=0.035, rtol=0)
    # Temperature sharpens: T -> 0 is argmax.
    cold = pick_next_token(logits, greedy=False, position=torch.zeros(n, dtype=torch.long),
                           **{**args, "temperature": torch.tensor(0.05)})
    assert (cold == 0).float().mean() > 0.99


def test_on_device_sampling_keeps_exactly_the_filtered_tokens():
    from tunekit.generation import pick_next_token

    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    for k, p in [(5, 1.0), (40, 0.7), (8, 0.6), (1, 1.0), (100, 1e-4)]:
        allowed = top_k_filter(logits / 0.9, min(k, 40))
        allowed = torch.isfinite(top_p_filter(allowed, p))[0].nonzero().flatten().tolist()
        seen = set()
        for pos in range(400):
            t = pick_next_token(logits, greedy=False, temperature=torch.tensor(0.9), top_k=torch.tensor(k),
                                top_p=torch.tensor(p), seed=torch.tensor(3), position=torch.tensor([pos]))
            seen.add(int(t))
        assert seen == set(allowed), (k, p)
    assert torch.equal(pick_next_token(logits, greedy=True), logits.argmax(-1))


def test_uniform_noise_is_deterministic_and_in_range():
    from tunekit.generation import uniform_noise

    u = uniform_noise(torch.tensor(5), torch.tensor([0, 1, 1]), 1000)
    assert u.shape == (3, 1000) and u.dtype == torch.float32
    assert (u > 0).all() and (u < 1).all() and abs(u.mean().item() - 0.5) < 0.02
    assert torch.equal(u, uniform_noise(torch.tensor(5), torch.tensor([0, 1, 1]), 1000))
    assert not torch.equal(u[1], u[2])  # rows differ at the same position
    assert not torch.equal(u[0], u[1])  # positions differ
    assert not torch.equal(u, uniform_noise(torch.tensor(6), torch.tensor([0, 1, 1]), 1000))


def test_seed_and_generator_make_sampling_reproducible():
    model = _model(4)
    kw = dict(max_new_tokens=12, temperature=0.9, top_k=30, top_p=0.95)
    a = generate(model, [1, 2, 3], seed=11, **kw)
    assert generate(model, [1, 2, 3], seed=11, **kw).tokens == a.tokens
    assert generate(model, [1, 2, 3], seed=12, **kw).tokens != a.tokens
    torch.manual_seed(3)
    b = generate(model, [1, 2, 3], **kw)
    torch.manual_seed(3)
    assert generate(model, [1, 2, 3], **kw).tokens == b.tokens


def test_stop_check_interval_does_not_change_the_result():
    from tunekit.generation import TokenGenerator

    model = _model(2)
    first = generate(model, [1, 4, 5], max_new_tokens=20, temperature=0.0)
    stop = first.tokens[0][3]
    cut = first.tokens[0].index(stop)
    for every in (1, 3, 8, 50):
        with TokenGenerator(model, stop_check_interval=every) as gen:
            res = gen.generate([1, 4, 5], max_new_tokens=20, temperature=0.0, stop_tokens=[stop, 60])
        assert res.tokens[0] == first.tokens[0][:cut] and res.stopped == [True] and res.steps == cut + 1
    assert not model.caches_are_enabled()


def test_token_generator_reuses_a_caller_cache_and_grows_its_own():
    from tunekit.generation import TokenGenerator

    model = _model(5)
    ref = generate(model, [1, 2, 3, 4], max_new_tokens=10, temperature=0.0).tokens
    model.setup_caches(batch_size=1, dtype=torch.float32, max_seq_len=10)
    with TokenGenerator(model) as gen:
        res = gen.generate([1, 2, 3, 4], max_new_tokens=10, temperature=0.0)
    assert res.tokens[0] == ref[0][:6]  # capped by the caller's 10-slot cache
    assert model.caches_are_enabled()  # the caller's cache stays
    model.remove_caches()
    with TokenGenerator(model, cache_len=8) as gen:
        assert gen.generate([1, 2, 3, 4], max_new_tokens=4, temperature=0.0).tokens[0] == ref[0][:4]
        assert gen.generate([1, 2, 3, 4], max_new_tokens=10, temperature=0.0).tokens == ref  # grows to 14
        assert model.layers[0].attn.kv_cache.k_cache.shape[2] == 14
    assert not model.caches_are_enabled()


def test_stop_reason_says_what_ended_each_row_with_the_numbers():
    from tunekit.generation import STOP_CACHE_LEN, STOP_MAX_NEW_TOKENS, STOP_MAX_SEQ_LEN, STOP_TOKEN, TokenGenerator

    model = _model(3)
    prompt = [1, 5, 9, 2, 7]
    capped = generate(model, prompt, max_new_tokens=6, temperature=0)
    assert capped.stop_reason == [STOP_MAX_NEW_TOKENS] and capped.max_new_tokens == 6 and capped.context_len == 48
    assert capped.describe_stop() == "reached max_new_tokens=6"
    # 5 + 100 > max_seq_len=48: the context window ends it, after 43 tokens, and says so.
    full = generate(model, prompt, max_new_tokens=100, temperature=0)
    assert full.stop_reason == [STOP_MAX_SEQ_LEN] and len(full.tokens[0]) == 43 and full.stopped == [False]
    assert full.describe_stop() == ("stopped at the model's context window: max_seq_len=48 = 5-token prompt + "
                                    "43 new tokens, before max_new_tokens=100 was reached")
    # Exactly filling the window is what was asked for: max_new_tokens, not the window.
    assert generate(model, prompt, max_new_tokens=43, temperature=0).stop_reason == [STOP_MAX_NEW_TOKENS]
    stop = full.tokens[0][4]
    cut = full.tokens[0].index(stop)
    hit = generate(model, prompt, max_new_tokens=100, temperature=0, stop_tokens=[stop])
    assert hit.stop_reason == [STOP_TOKEN] and hit.stopped == [True] and len(hit.tokens[0]) == cut
    assert hit.describe_stop(stop_token_name="EOS (id 2)") == f"stopped at EOS (id 2) after {cut} new tokens"
    # Two rows: one stops at its stop token, the other runs into the cap.
    rows = torch.tensor([prompt, [1, 3, 3, 8, 4]])
    other = generate(model, rows[1], max_new_tokens=10, temperature=0).tokens[0]
    only_first = next(t for t in full.tokens[0][:10] if t not in other)
    both = generate(model, rows, max_new_tokens=10, temperature=0, stop_tokens=[only_first])
    assert both.stop_reason == [STOP_TOKEN, STOP_MAX_NEW_TOKENS] and both.stopped == [True, False]
    # A cache the caller installed ends it at its own length.
    model.setup_caches(batch_size=1, dtype=torch.float32, max_seq_len=12)
    try:
        with TokenGenerator(model) as gen:
            res = gen.generate(prompt, max_new_tokens=30, temperature=0)
        assert res.stop_reason == [STOP_CACHE_LEN] and res.context_len == 12 and len(res.tokens[0]) == 7
        assert "the KV cache's length: cache length=12" in res.describe_stop()
    finally:
        model.remove_caches()


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, "top_k must be >= 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": float("nan")}, r"top_p must be in \(0, 1\]"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
])  # fmt: skip
def test_bad_sampling_settings_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(_model(), [1, 2, 3], **{"max_new_tokens": 4, **kwargs})


def test_a_prompt_that_fills_the_context_names_both_lengths():
    with pytest.raises(ValueError, match=r"the prompt has 48 tokens but the model's context window \(max_seq_len\) "
                                         r"is 48 positions.*at most 47 tokens"):
        generate(_model(), list(range(1, 49)), max_new_tokens=4)
