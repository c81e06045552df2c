"""Bad input, preference-tuning class: DPO settings, preference data files and data/recipe
mismatches, through the real entry points (`tunekit validate lora_dpo ...`, and the recipes,
which fail at data loading, before any training step).

Each case asserts exit status 1, no traceback, one paragraph naming the key / file / row and
the fix, and that the user's data file is byte-identical afterwards with nothing written beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability._harness import assert_unchanged, assert_user_error, run_recipe, run_tunekit, snapshot

FAST = ["epochs=1", "max_steps_per_epoch=2", "batch_size=2", "metric_logger.also_stdout=false"]
GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A dog."}


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_dpo_settings_are_named_with_the_fix():
    # every problem at once: a cross-field dpo rule, and two SFT settings DPO cannot honour
    proc = run_tunekit("validate", "lora_dpo", "dpo.loss_type=ipo", "dpo.label_smoothing=0.1", "packed=true",
                       "train_on_input=true")
    assert_user_error(proc, "3 problems", "dpo.label_smoothing", "no effect", "loss_type=sigmoid", "label_smoothing=0",
                      "packed", "set packed=false", "train_on_input", "set train_on_input=false")


def test_malformed_preference_rows_are_named_by_line(tmp_path):
    data = _write(tmp_path / "data" / "pairs.jsonl", [
        GOOD, {"prompt": "Say hi.", "chosen": "Hi."}, {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "Hi."},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello.", "rejected": "Go."}])
    before = snapshot(data.parent)
    proc = run_tunekit("validate", "lora_dpo", "dataset=preference", f"dataset.source={data}",
                       "dataset.template=plain")
    assert_user_error(proc, str(data), "3 malformed row(s) of 4", "line 2", "missing the field 'rejected'",
                      "line 3", "same reply", "line 4", "dataset.template=model")
    assert_unchanged(before, data.parent)


def test_replies_cut_away_by_max_seq_len_say_the_length_that_fits(tmp_path):
    data = _write(tmp_path / "data" / "pairs.jsonl",
                  [{**GOOD, "prompt": "Describe the long road to the old mill in detail. " * 4}] * 4)
    before = snapshot(data.parent)
    proc = run_tunekit("validate", "lora_dpo", "dataset=preference", f"dataset.source={data}",
                       "dataset.template=plain", "dataset.val_fraction=0", "max_seq_len=8")
    assert_user_error(proc, str(data), "max_seq_len=8", "nothing to learn", "Set max_seq_len=")
    assert_unchanged(before, data.parent)


def test_dpo_recipe_refuses_instruction_data(tmp_path):
    run = tmp_path / "run"
    proc = run_recipe("lora_dpo", run, *FAST, "dataset=alpaca_tiny")
    assert_user_error(proc, "dataset=alpaca_tiny", "not preference data", "dataset=preference",
                      "dataset.source=", "lora_finetune")
    assert not list(run.glob("epoch_*")) and not list(run.glob("step_*"))


def test_sft_recipe_refuses_preference_data(tmp_path):
    data = _write(tmp_path / "data" / "pairs.jsonl", [GOOD] * 8)
    before = snapshot(data.parent)
    proc = run_recipe("lora_finetune", tmp_path / "run", *FAST, "dataset=preference", f"dataset.source={data}",
                      "dataset.template=plain")
    assert_user_error(proc, "preference data", "recipes.lora_dpo", "dataset=alpaca_tiny")
    assert_unchanged(before, data.parent)


def test_whole_conversations_that_differ_before_the_reply_are_named(tmp_path):
    # torchtune's / TRL's form: 'chosen' and 'rejected' as whole conversations; they must share the prompt
    user = [{"role": "user", "content": "Name a colour."}]
    data = _write(tmp_path / "data" / "pairs.jsonl", [
        {"chosen": user + [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Name an animal."}, {"role": "assistant", "content": "A dog."}]}])
    before = snapshot(data.parent)
    proc = run_tunekit("validate", "lora_dpo", "dataset=preference", f"dataset.source={data}",
                       "dataset.template=llama2_chat")
    assert_user_error(proc, str(data), "line 1", "'chosen' and 'rejected' differ at message 0",
                      "must share every turn but the last")
    assert_unchanged(before, data.parent)
