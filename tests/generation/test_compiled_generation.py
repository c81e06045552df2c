"""The compiled decode step (torch.compile, inductor on the CPU) against the eager loop.

One compiled TokenGenerator serves every test (compiling is the slow part). Its shapes are
those of `recipes.generate` on the bundled tiny model with its default prompt (24 tokens) and
max_new_tokens=40, so the recipe test reuses inductor's on-disk cache.
"""

from __future__ import annotations

import pytest
import torch

from tunekit.generation import TokenGenerator, default_compile_mode
from tunekit.models.llama2 import llama2_tiny

PROMPT = [1, *range(100, 123)]  # 24 tokens, like the recipe's default prompt
NEW = 40


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return llama2_tiny().eval()


@pytest.fixture(scope="module")
def compiled(model):
    gen = TokenGenerator(model, compile=True)
    yield gen
    gen.close()


def test_default_compile_mode_follows_the_device():
    assert default_compile_mode("cpu") == "default"
    assert default_compile_mode("cuda") == "reduce-overhead"


def test_compiled_greedy_equals_eager_token_for_token(model, compiled):
    res = compiled.generate(PROMPT, max_new_tokens=NEW, temperature=0.0)
    assert compiled.compile_mode == "default" and res.compile_seconds > 0
    with TokenGenerator(model) as eager:
        ref = eager.generate(PROMPT, max_new_tokens=NEW, temperature=0.0)
    assert res.tokens == ref.tokens and res.steps == NEW
    again = compiled.generate(PROMPT, max_new_tokens=NEW, temperature=0.0)
    assert again.compile_seconds == 0 and again.tokens == ref.tokens and again.tokens_per_second > 0


def test_compiled_sampling_is_seeded_and_matches_eager(model, compiled):
    kw = dict(max_new_tokens=NEW, temperature=0.8, top_k=50)
    a = compiled.generate(PROMPT, seed=1, **kw)
    assert a.compile_seconds > 0  # the sampling variant of the step
    assert compiled.generate(PROMPT, seed=1, **kw).tokens == a.tokens
    assert compiled.generate(PROMPT, seed=2, **kw).tokens != a.tokens
    with TokenGenerator(model) as eager:  # same noise, same pick: eager agrees
        assert eager.generate(PROMPT, seed=1, **kw).tokens == a.tokens
    # Other settings are tensors: no recompilation.
    b = compiled.generate(PROMPT, seed=1, max_new_tokens=NEW, temperature=1.3, top_k=5, top_p=0.9)
    assert b.compile_seconds == 0 and b.tokens != a.tokens


def test_compiled_path_stops_at_eos(compiled):
    ref = compiled.generate(PROMPT, max_new_tokens=NEW, temperature=0.0).tokens[0]
    stop = ref[11]
    cut = ref.index(stop)
    res = compiled.generate(PROMPT, max_new_tokens=NEW, temperature=0.0, stop_tokens=[stop])
    assert res.tokens[0] == ref[:cut] and res.stopped == [True] and res.steps == cut + 1
    assert res.compile_seconds == 0
