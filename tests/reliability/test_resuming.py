"""Bad-input suite, class "resume": a run never continues or replaces another experiment silently.

One short LoRA run (``base``) is made per module; each case copies what it needs and checks the
refusal paragraph, the exit status and that the saved run is byte-identical afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _harness import FAST, assert_ok, assert_unchanged, assert_user_error, run_recipe, snapshot

from tunekit.checkpointing import state_dir
from tunekit.config.resolvers import asset_path

DATA = Path(asset_path("data/alpaca_tiny.json"))


def _other_data(tmp: Path) -> Path:
    """The bundled data with every response changed: same row count, other content."""
    rows = json.loads(DATA.read_text())
    for r in rows:
        r["output"] = r["output"].upper()
    path = tmp / "other.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_suite") / "outputs"
    run = root / "a"
    assert_ok(run_recipe("lora_finetune", run, *FAST, "save_every_n_steps=1"))
    return run


@pytest.fixture()
def saved(base, tmp_path) -> tuple[Path, dict]:
    """A private copy of the base run (so cases may not disturb each other) and its snapshot."""
    run = tmp_path / "outputs" / "a"
    shutil.copytree(base, run)
    return run, snapshot(run)


def test_second_run_into_a_used_directory_is_refused(saved):
    run, before = saved
    proc = run_recipe("lora_finetune", run, *FAST)
    assert_user_error(proc, str(run), "already holds another", "epoch_0", f"resume={run}", "hydra.run.dir",
                      "Nothing was written")
    # Hydra appends the refusal to the run's log file; every other file is byte-identical and
    # nothing new is written (no .hydra/ record over the first run's).
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.endswith(".log")} == \
        {k: v for k, v in before.items() if not k.endswith(".log")}
    assert not (run / "logs" / "metrics.jsonl.attempt-1").exists()


def test_resume_with_other_data_is_refused_naming_the_field_and_the_override(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, f"resume={run}", "dataset=alpaca",
                      f"dataset.source={_other_data(tmp_path)}")
    assert_user_error(proc, "trained with other settings", "data:", "resume_accept=[data]", "new run")
    assert_unchanged(before, run)
    assert not list((tmp_path / "b").glob("epoch_*"))


def test_resume_with_other_batch_size_is_refused(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST[:2], "batch_size=2", "log_every_n_steps=1",
                      f"resume={run}")
    assert_user_error(proc, "batch_size:", "4 then, 2 now", "resume_accept=[batch_size]")
    assert_unchanged(before, run)


def test_resume_with_other_lora_settings_is_refused(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "lora.rank=4", f"resume={run}")
    assert_user_error(proc, "lora:", "resume_accept=[lora]")
    assert_unchanged(before, run)


def test_resume_with_other_max_seq_len_is_refused(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "max_seq_len=300", f"resume={run}")
    assert_user_error(proc, "max_seq_len:", "resume_accept=[")
    assert_unchanged(before, run)


def test_accepted_change_continues(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "epochs=2", "seed=5", "resume_accept=[seed]",
                      f"resume={run / 'epoch_0'}")
    assert_ok(proc, "resuming from")
    assert_unchanged(before, run)
    assert (tmp_path / "b" / "epoch_1" / "COMPLETE").is_file()


def test_resume_auto_never_adopts_a_sibling_trained_on_other_data(saved):
    run, before = saved
    sibling = run.parent / "b"
    proc = run_recipe("lora_finetune", sibling, *FAST, "resume=auto", "dataset=alpaca",
                      f"dataset.source={_other_data(run.parent.parent)}")
    text = assert_ok(proc, "is not continuing", str(run), "data:", "found no checkpoint to continue")
    assert "resuming from" not in text
    assert_unchanged(before, run)


def test_resume_auto_continues_its_own_run_and_says_so(saved):
    run, before = saved
    proc = run_recipe("lora_finetune", run, *FAST, "epochs=2", "resume=auto")
    assert_ok(proc, "resuming from", str(run / "epoch_0"), "resume=auto")
    for name, entry in before.items():  # the checkpoints it continued from are untouched
        if name.startswith(("epoch_0", "step_1")):
            assert snapshot(run)[name] == entry, name


def test_full_finetune_refuses_a_lora_checkpoint(saved, tmp_path):
    run, before = saved
    proc = run_recipe("full_finetune", tmp_path / "b", *FAST, f"resume={run / 'epoch_0'}")
    assert_user_error(proc, "saved by lora_finetune", "recipes.lora_finetune resume=")
    assert_unchanged(before, run)


def test_interrupted_save_is_never_resumed(saved, tmp_path):
    run, _ = saved
    (run / "epoch_0" / "COMPLETE").unlink()
    before = snapshot(run)
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, f"resume={run / 'epoch_0'}")
    assert_user_error(proc, "COMPLETE", "interrupted", "resume=auto")
    assert_unchanged(before, run)


def test_resume_of_a_directory_without_checkpoints(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, f"resume={empty}")
    assert_user_error(proc, str(empty), "no complete")


def test_seeds_checkpointer_way_in_needs_the_recipe_checkpoint(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "checkpointer.resume_from_checkpoint=true")
    assert_user_error(proc, "recipe_checkpoint", "resume_from_checkpoint")


def test_seeds_checkpointer_way_in_continues_the_run(saved, tmp_path):
    run, before = saved
    state = state_dir(run / "step_1")
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "checkpointer.resume_from_checkpoint=true",
                      f"checkpointer.recipe_checkpoint={state / 'recipe_state.pt'}",
                      f"checkpointer.adapter_checkpoint={state / 'adapter_0.pt'}")
    assert_ok(proc, "resuming from", "checkpointer.resume_from_checkpoint")
    assert_unchanged(before, run)
    res = json.loads((tmp_path / "b" / "result.json").read_text())
    ref = json.loads((run / "result.json").read_text())
    assert res["start_step"] == 1 and res["final_train_loss"] == ref["final_train_loss"]


def test_two_ways_of_resuming_at_once_are_refused(saved, tmp_path):
    run, before = saved
    state = state_dir(run / "step_1")
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, f"resume={run}",
                      "checkpointer.resume_from_checkpoint=true",
                      f"checkpointer.recipe_checkpoint={state / 'recipe_state.pt'}")
    assert_user_error(proc, "both ask to resume", "use one")
    assert_unchanged(before, run)


def test_resume_of_a_finished_run_with_nothing_left_is_refused(saved, tmp_path):
    # it used to "resume", run no step, write a result.json and say "checkpoints in <dir>" with none there
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, f"resume={run}")
    assert_user_error(proc, f"{run / 'epoch_0'} already finished 1 epoch(s)", "epochs=1", "nothing is left to train",
                      "epochs=2", f"recipes.generate checkpoint={run / 'epoch_0'}")
    assert not (tmp_path / "b" / "result.json").exists()
    assert_unchanged(before, run)


def test_resume_of_a_finished_run_with_more_epochs_continues(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "b", *FAST, "epochs=2", f"resume={run}")
    assert_ok(proc, f"resuming from {run / 'epoch_0'}")
    assert (tmp_path / "b" / "epoch_1" / "COMPLETE").is_file()
    assert_unchanged(before, run)


def test_resume_of_an_older_checkpoint_inside_its_own_run_is_refused(saved, tmp_path):
    # it used to continue there, save over the newer step_N / epoch_N and log the steps twice
    run, before = saved
    proc = run_recipe("lora_finetune", run, *FAST, "save_every_n_steps=1", "optimizer.lr=1e-3",
                      f"resume={run / 'step_1'}")
    assert_user_error(proc, f"resume={run / 'step_1'} is not the newest checkpoint of its run", "epoch_0 came after it",
                      "hydra.run.dir=<a new directory>", f"resume={run}", "Nothing was written")
    assert_unchanged(before, run, allow_new=True)  # Hydra's log may appear; its .hydra/ record is kept


def test_branching_off_an_older_checkpoint_into_a_new_directory_works(saved, tmp_path):
    run, before = saved
    proc = run_recipe("lora_finetune", tmp_path / "branch", *FAST, "save_every_n_steps=1", f"resume={run / 'step_1'}")
    assert_ok(proc, f"resuming from {run / 'step_1'}")
    assert (tmp_path / "branch" / "epoch_0" / "COMPLETE").is_file()
    assert_unchanged(before, run)
