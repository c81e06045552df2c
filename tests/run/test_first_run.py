"""The first five minutes: the bundled sort-letters task, and the before/after examples of a run.

In-process tests on the bundled tokenizer and tiny random models, plus one short run of the real
entry point (`python -m recipes.lora_finetune`) that prints the examples and writes examples.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunekit.config import compose
from tunekit.data import InstructDataset
from tunekit.data.templates import llama2_chat_generation_tokens
from tunekit.generation import generate
from tunekit.models.llama2 import llama2
from tunekit.run.examples import ExampleProbe, HeldOutExample, greedy_answers, held_out_examples
from tunekit.tokenizers import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "src" / "tunekit" / "assets"
DATA = ASSETS / "data" / "sort_letters.json"


def _builder():
    spec = importlib.util.spec_from_file_location("build_sort_letters", ASSETS / "build_sort_letters.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_builder_reproduces_the_shipped_task_data_byte_for_byte():
    build = _builder()
    assert build.render(build.records()) == DATA.read_text(encoding="utf-8")
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    assert len(rows) == 3000 and len({r["instruction"] for r in rows}) == 3000
    tok = tiny_tokenizer()
    for r in rows[:200]:
        letters = r["instruction"].removeprefix("Sort the letters: ").split()
        assert 3 <= len(letters) <= 5 and len(set(letters)) == len(letters)
        assert r["output"] == " ".join(sorted(letters))
        # one token per letter, in the prompt and in the answer
        assert len(tok.encode(r["output"], add_bos=False, add_eos=False)) == len(letters)


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = llama2(vocab_size=512, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                   intermediate_dim=64, max_seq_len=128)
    for p in model.parameters():  # a spread-out init, so greedy answers differ between prompts
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_held_out_examples_are_the_generate_prompt_and_the_expected_answer():
    tok = tiny_tokenizer()
    val = InstructDataset(tok, str(DATA), template="llama2_chat", split="validation", val_fraction=0.1)
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    examples = held_out_examples(val, tok, 5)
    assert [e.row for e in examples] == val.rows[:5]
    for e in examples:
        rec = rows[e.row - 1]
        # exactly the prompt `recipes.generate chat=true prompt=...` builds, and the record's answer
        assert e.prompt == llama2_chat_generation_tokens(tok, [{"role": "user", "content": rec["instruction"]}])
        assert e.expected == rec["output"]
        assert e.prompt_text == f"[INST] {rec['instruction']} [/INST]"


def test_an_answer_cut_by_max_seq_len_is_not_an_example(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "Say it.", "output": "a b c d e f g h i"},
                                {"instruction": "Say it.", "output": "a"}]))
    ds = InstructDataset(tok, str(path), template="llama2_chat", split="all", max_seq_len=26)
    assert len(ds) == 2  # the first keeps some targets, but not its end
    examples = held_out_examples(ds, tok, 5)
    assert [(e.row, e.expected) for e in examples] == [(2, "a")]


def test_batched_greedy_answers_equal_one_prompt_at_a_time():
    tok = tiny_tokenizer()
    model = _tiny_model()
    prompts = [tok.encode(t) for t in ("a b", "c d", "the sun", "a b c d e", "rain", "e f")]
    assert len({len(p) for p in prompts}) < len(prompts)  # some share a length (one batch)
    got = greedy_answers(model, tok, prompts, max_new_tokens=6)
    want = [tok.decode(generate(model, p, max_new_tokens=6, temperature=0, stop_tokens=[tok.eos_id]).tokens[0]).strip()
            for p in prompts]
    assert got == want and len(set(got)) > 1
    assert not model.caches_are_enabled()  # the generator's cache is gone: training is unaffected


def _probe(show: int, score: int) -> ExampleProbe:
    ex = [HeldOutExample(row=10 + i, prompt=[1, 2], expected=want, prompt_text=f"[INST] q{i} [/INST]")
          for i, want in enumerate(["a b", "c d", "e f"])]
    probe = ExampleProbe(tokenizer=tiny_tokenizer(), examples=ex, show=show, score=score, max_new_tokens=8)
    probe.before = ["x", "c d", "y"]
    return probe


def test_probe_prints_before_after_expected_and_exact_match_counts():
    text = _probe(show=2, score=3).format(["a b", "c d", " e f "])
    lines = text.splitlines()
    assert lines[0].startswith("Held-out examples (validation rows this run never trained on)")
    assert lines[1] == "  row 10: [INST] q0 [/INST]"
    assert lines[2].split() == ["base:", '"x"', "[wrong]"]
    assert lines[3].split() == ["fine-tuned:", '"a', 'b"', "[right]"]
    assert lines[4].split() == ["expected:", '"a', 'b"']
    assert "row 12" not in text  # show=2
    assert lines[-1] == "Exact match on 3 held-out rows: base 1/3 (33%), fine-tuned 3/3 (100%)"
    assert "Exact match" not in _probe(show=2, score=0).format(["a b", "c d", "e f"])


def test_probe_record_never_overwrites_an_earlier_one(tmp_path, capsys):
    model = _tiny_model()
    probe = _probe(show=1, score=3)
    first = probe.finish(model, tmp_path)
    saved = (tmp_path / "examples.json").read_bytes()
    assert json.loads(saved) == first and first["exact_match"]["rows"] == 3
    assert first["examples"][0] == {"row": 10, "prompt": "[INST] q0 [/INST]", "expected": "a b", "before": "x",
                                    "after": first["examples"][0]["after"]}
    probe.finish(model, tmp_path)  # a resumed run finishing in the same directory
    assert (tmp_path / "examples.json").read_bytes() == saved and (tmp_path / "examples.1.json").is_file()
    assert "Exact match on 3 held-out rows" in capsys.readouterr().out


def test_the_default_config_is_the_sort_task_with_examples_and_other_data_turns_them_off():
    for recipe in ("lora_finetune", "full_finetune"):
        cfg = compose(recipe)
        assert cfg.dataset.source == str(DATA) and cfg.dataset.template == "llama2_chat"
        assert (cfg.examples.show, cfg.examples.score, cfg.examples.max_new_tokens) == (4, 64, 16)
        off = compose(recipe, ["dataset=alpaca_tiny"])
        assert (off.examples.show, off.examples.score) == (0, 0)
        kept = compose(recipe, ["dataset=alpaca_tiny", "examples.show=2"])
        assert kept.examples.show == 2


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    run = tmp_path_factory.mktemp("first_run") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.lora_finetune", f"hydra.run.dir={run}", "epochs=1",
         "max_steps_per_epoch=3", "batch_size=4", "metric_logger.also_stdout=false", "examples.show=2",
         "examples.score=8"], cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run


def test_a_default_run_ends_with_the_examples_and_writes_them(short_run):
    proc, run = short_run
    out = proc.stdout
    table = out[out.index("Held-out examples"):]
    assert out.index("tunekit lora_finetune: done in") < out.index("Held-out examples")
    assert table.count("    base:") == 2 and table.count("    fine-tuned:") == 2 and table.count("    expected:") == 2
    assert "[INST] Sort the letters: " in table
    record = json.loads((run / "examples.json").read_text())
    assert record["before_label"] == "base" and record["exact_match"]["rows"] == 8
    assert record["exact_match"]["before"] == 0  # the base model cannot do the task
    em = record["exact_match"]
    assert f"Exact match on 8 held-out rows: base {em['before']}/8" in table
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    for e in record["examples"]:
        assert e["expected"] == rows[e["row"] - 1]["output"]


def test_probe_for_run_is_off_by_default_and_says_why_it_cannot_run(capsys):
    from omegaconf import OmegaConf

    from tunekit.run.examples import probe_for_run

    tok = tiny_tokenizer()
    val = InstructDataset(tok, str(DATA), template="llama2_chat", split="validation")
    off = OmegaConf.create({"show": 0, "score": 0, "max_new_tokens": 8})
    on = OmegaConf.create({"show": 2, "score": 5, "max_new_tokens": 8})
    assert probe_for_run(off, val, tok, world_size=1, resumed_at=None) is None
    assert capsys.readouterr().err == ""
    assert probe_for_run(on, None, tok, world_size=1, resumed_at=None) is None
    assert "skipped: the data set has no validation split (dataset.val_fraction=0)" in capsys.readouterr().err
    assert probe_for_run(on, val, tok, world_size=2, resumed_at=None, rank=1) is None
    assert capsys.readouterr().err == ""  # one note per run: rank 0's
    assert "sharded over 2 ranks" in (probe_for_run(on, val, tok, world_size=2, resumed_at=None) or
                                      capsys.readouterr().err)
    fresh = probe_for_run(on, val, tok, world_size=1, resumed_at=None)
    resumed = probe_for_run(on, val, tok, world_size=1, resumed_at=120)
    assert len(fresh.examples) == 5 and fresh.before_label == "base" and resumed.before_label == "step 120"
