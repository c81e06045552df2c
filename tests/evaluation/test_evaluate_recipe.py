"""The real entry points: a LoRA run with `eval_tasks` and its end-of-run plots, then
`tunekit run evaluate` on that run (local task + perplexity of the data set's validation split).

Two subprocesses in all; every assertion reads their outputs. The evaluate recipe scores the
run's merged checkpoint; the in-run evaluation scored the unmerged LoRA model: their per-sample
log-likelihoods agree, and the validation-split perplexity is exp(the run's final val_loss).
"""

from __future__ import annotations

import json
import math

import pytest
from _eval_helpers import ROWS, write_task

from tests.reliability._harness import FAST, assert_ok, run_recipe, run_tunekit

pytest.importorskip("lm_eval")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_recipe")
    task = write_task(root / "task")
    fast = [o for o in FAST if o != "plots=false"]
    train = run_recipe("lora_finetune", root / "run", *fast, "dataset=alpaca_tiny", f"eval_tasks=[{task}]")
    assert_ok(train, "| tiny_mc | acc |", "plots of loss")
    evaluate = run_tunekit("run", "evaluate", f"hydra.run.dir={root / 'eval'}", f"checkpoint={root / 'run'}",
                           f"tasks=[{task}]", "perplexity.source=dataset", "max_seq_len=256", "batch_size=4")
    assert_ok(evaluate, "| tiny_mc | acc |", "| perplexity (dataset", "results in")
    return root


def _samples(path):
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def test_eval_tasks_after_training_are_written_and_logged_with_the_metrics(runs):
    run = runs / "run"
    results = json.loads((run / "eval" / "results.json").read_text())
    acc = results["results"]["tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and results["n-samples"]["tiny_mc"]["effective"] == len(ROWS)
    assert "| tiny_mc | acc |" in (run / "eval" / "results.md").read_text()
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "result.json").read_text())["global_step"]
    logged = [r for r in records if "eval/tiny_mc/acc" in r]
    assert logged == [{"step": final, "eval/tiny_mc/acc": acc}]


def test_a_run_ends_with_its_plots(runs):
    plots = runs / "run" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["grad_norm.png", "loss.png", "lr.png", "tokens_per_second.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots.iterdir())


def test_evaluate_on_the_run_matches_the_in_run_evaluation(runs):
    out = runs / "eval"
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "samples"}
    results = json.loads((out / "results.json").read_text())
    assert results["evaluated"]["weights"].endswith("epoch_0/model")  # the run's newest complete checkpoint
    in_run = json.loads((runs / "run" / "eval" / "results.json").read_text())
    assert results["results"]["tiny_mc"]["acc,none"] == in_run["results"]["tiny_mc"]["acc,none"]
    ours, theirs = _samples(out / "samples" / "tiny_mc.jsonl"), _samples(runs / "run" / "eval" / "samples" / "tiny_mc.jsonl")
    assert ours.keys() == theirs.keys() == set(range(len(ROWS)))
    for k in ours:
        assert [r[0][0] for r in ours[k]["resps"]] == pytest.approx([r[0][0] for r in theirs[k]["resps"]], abs=1e-4)


def test_validation_split_perplexity_is_the_runs_final_validation_loss(runs):
    ppl = json.loads((runs / "eval" / "results.json").read_text())["perplexity"]
    val_loss = json.loads((runs / "run" / "result.json").read_text())["final_val_loss"]
    assert ppl["loss"] == pytest.approx(val_loss, abs=1e-4)
    assert ppl["perplexity"] == pytest.approx(math.exp(val_loss), rel=1e-4)
    assert "validation split" in ppl["source"] and ppl["documents"] > 0
