"""tunekit's harness wrapper against lm-evaluation-harness's own HF backend, on a local task.

The same tiny multiple-choice task (YAML + JSONL, written here) is scored by ``HFLM`` over the
transformers model loaded from the bundled tiny HF checkpoint (fp32) and by ``TunekitLM`` over
tunekit's model of the same files: every request's log-likelihood agrees to 1e-4 and so does
the accuracy. Rolling log-likelihoods and greedy generation are compared the same way.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from _eval_helpers import ROWS, write_task  # noqa: E402


@pytest.fixture(scope="module")
def both(tiny_hf_dir, tiny_model_and_tokenizer):
    from lm_eval.models.huggingface import HFLM

    from tunekit.evaluation import make_lm

    model, tokenizer = tiny_model_and_tokenizer
    hf = HFLM(pretrained=str(tiny_hf_dir), dtype="float32", device="cpu", batch_size=4)
    ours = make_lm(model, tokenizer, batch_size=3)
    return hf, ours


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_local_task_scores_the_same_per_sample_and_in_accuracy(both, tmp_path):
    from tunekit.evaluation import run_tasks

    hf, ours = both
    task = str(write_task(tmp_path))
    theirs, mine = run_tasks(hf, [task]), run_tasks(ours, [task])
    assert mine["results"]["tiny_mc"]["acc,none"] == theirs["results"]["tiny_mc"]["acc,none"]
    a = sorted(mine["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    b = sorted(theirs["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    assert len(a) == len(ROWS) == len(b)
    for x, y in zip(a, b):
        assert x["arguments"] == y["arguments"]
        for (lx, gx), (ly, gy) in zip((r[0] for r in x["resps"]), (r[0] for r in y["resps"])):
            assert lx == pytest.approx(ly, abs=1e-4)
            assert gx == gy


def test_loglikelihood_with_empty_context_and_rolling_match(both):
    hf, ours = both
    pairs = [("", "The cat sat on the mat."), ("Water is", " wet"), ("A long text about", " llamas and alpacas")]
    for (lx, gx), (ly, gy) in zip(ours.loglikelihood(_requests("loglikelihood", pairs)),
                                  hf.loglikelihood(_requests("loglikelihood", pairs))):
        assert lx == pytest.approx(ly, abs=1e-4) and gx == gy
    # longer than a few windows of a short context: the rolling windows must line up exactly
    texts = [("The quick brown fox jumps over the lazy dog. " * 3,), ("Numbers: 1 2 3 4 5 6 7 8 9 10.",)]
    hf._max_length = ours.max_length = 16
    try:
        mine = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
        theirs = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
    finally:
        hf._max_length, ours.max_length = None, ours.model.max_seq_len
    assert mine == pytest.approx(theirs, abs=1e-4)


def test_greedy_generate_until_matches_and_stops_at_the_until_string(both):
    hf, ours = both
    args = [("Give three tips for staying healthy.", {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}),
            ("The cat", {"until": ["."], "max_gen_toks": 12, "do_sample": False}),
            ("Water", {"until": ["."], "max_gen_toks": 12, "do_sample": False})]
    mine = ours.generate_until(_requests("generate_until", args))
    theirs = hf.generate_until(_requests("generate_until", args))
    assert mine == theirs
    assert all("." not in text for text in mine[1:])
    json.dumps(mine)
