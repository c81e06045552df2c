"""Bad input of the config / CLI class: every case through a real entry point, as a user types it.

Each case asserts exit status 1, no traceback, the words naming the key (or file, line, option)
and the fix, and, where files are involved, that nothing saved changed. Most cases stop before
training (``tunekit validate``, a recipe failing its config check); two go as far as a real run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability._harness import (
    FAST,
    assert_ok,
    assert_unchanged,
    assert_user_error,
    output,
    run_recipe,
    run_tunekit,
    snapshot,
)

REPO_ASSETS = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"
TOKEN = "hf_" + "Zq8" * 12  # the shape of a Hugging Face token, never a real one


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.fixture
def user_cfg(tmp_path: Path) -> Path:
    """A copy of the shipped lora_finetune config made with `tunekit cp`, as a user would."""
    assert_ok(run_tunekit("cp", "lora_finetune", str(tmp_path / "my.yaml")), "Copied")
    return tmp_path / "my.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


# ------------------------------------------------------------------ required values (???)


def test_required_values_in_user_yaml_stop_the_recipe(user_cfg, tmp_path):
    _edit(user_cfg, "epochs: 3", "epochs: ???")
    _edit(user_cfg, "  lr: 5.0e-03", "  lr: ???")
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, "--config-dir", str(tmp_path), "--config-name", "my")
    text = assert_user_error(proc, "`epochs` is required", "`optimizer.lr` is required",
                             str(user_cfg), "`epochs=...`", "on the command line")
    assert "(2 problems)" in text
    assert not (run_dir / "config_resolved.yaml").exists()


def test_required_value_in_user_yaml_stops_validate(user_cfg, tmp_path):
    _edit(user_cfg, "batch_size: 16", "batch_size: ???")
    proc = run_tunekit("validate", "lora_finetune", "--config-dir", str(tmp_path), "--config-name", "my")
    assert_user_error(proc, "`batch_size` is required", "`batch_size=...`")


def test_required_value_in_user_yaml_stops_tunekit_run(user_cfg, tmp_path):
    _edit(user_cfg, "max_seq_len: 256", "max_seq_len: ???")
    proc = run_tunekit("run", str(user_cfg), f"hydra.run.dir={tmp_path / 'run'}")
    assert_user_error(proc, "`max_seq_len` is required", "`max_seq_len=...`")


def test_required_value_of_a_group_option_names_the_key():
    proc = run_tunekit("validate", "lora_finetune", "dataset=alpaca", "--no-build")
    assert_user_error(proc, "`dataset.source` has no value (???)", "`dataset.source=...`")


# ------------------------------------------------------ values a component refuses


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("optimizer.lr=-1", ["`optimizer.lr`=-1", "Invalid learning rate", "`optimizer.lr=0.001`"]),
        ("optimizer.betas=[0.9]", ["`optimizer.betas`=[0.9]", "`optimizer.betas=[0.9,0.999]`"]),
        ("optimizer.weight_decay=-0.1", ["`optimizer.weight_decay`=-0.1", "`optimizer.weight_decay=0.01`"]),
        ("lr_scheduler.num_warmup_steps=-1", ["`lr_scheduler.num_warmup_steps`=-1", "must be >= 0"]),
        ("+lr_scheduler.min_lr_ratio=2", ["`lr_scheduler.min_lr_ratio`=2", "must be in [0, 1]",
                                          "`lr_scheduler.min_lr_ratio=0.0`"]),
        ("dataset.template=foo", ["`dataset.template`='foo'", "alpaca", "llama2_chat",
                                  "dataset.template=alpaca"]),
        ("dataset.source=/no/such/data.json", ["`dataset.source`='/no/such/data.json'", "does not exist",
                                               ".jsonl", "alpaca_tiny"]),
        ("loss=chunked_cross_entropy loss.num_chunks=0", ["`loss.num_chunks`=0", "must be >= 1",
                                                          "`loss.num_chunks=8`"]),
    ],
    ids=["lr", "betas", "weight_decay", "warmup", "min_lr_ratio", "template", "source", "loss_value"],
)
def test_validate_builds_the_cheap_components(override, needles):
    assert_user_error(run_tunekit("validate", "lora_finetune", *override.split()), *needles)


def test_validate_reports_every_problem_at_once():
    proc = run_tunekit("validate", "lora_finetune", "optimizer.lr=-1", "optimizer.betas=[0.9]",
                       "dataset.template=foo", "lora.rank=0", "lr_scheduler.num_warmup_steps=-3")
    text = assert_user_error(proc, "`optimizer.lr`=-1", "`optimizer.betas`=[0.9]", "`dataset.template`='foo'",
                             "`lora.rank`=0: must be >= 1", "`lr_scheduler.num_warmup_steps`=-3")
    assert "(4 problems)" in text  # the two optimizer values share the optimizer's line


def test_a_run_translates_a_refused_value_before_training(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, *FAST, "optimizer.betas=[0.9]")
    assert_user_error(proc, "`optimizer.betas`=[0.9]", "refused by torch.optim.AdamW",
                      "`optimizer.betas=[0.9,0.999]`")
    assert not list(run_dir.glob("epoch_*")) and not (run_dir / "result.json").exists()


def test_batch_larger_than_the_data_set_is_caught_by_validate():
    proc = run_tunekit("validate", "lora_finetune", "batch_size=1000", "gradient_accumulation_steps=8")
    assert_user_error(proc, "no optimizer step", "`batch_size`=1000", "lower `batch_size`")


# ------------------------------------------------------------- unknown keys and options


def test_validate_reports_all_misspelt_overrides_at_once():
    proc = run_tunekit("validate", "lora_finetune", "lora.rnak=4", "optimzer.lr=1e-4", "epochz=2",
                       "--no-build")
    text = assert_user_error(proc, "unknown key `lora.rnak`", "Did you mean: rank?",
                             "unknown key `optimzer`", "Did you mean: optimizer?",
                             "unknown key `epochz`", "Did you mean: epochs?", "+epochz=2")
    assert "(3 problems)" in text


def test_recipe_reports_all_misspelt_overrides_at_once(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "lora.rnak=4", "batch_sise=3", "model=llama9")
    text = assert_user_error(proc, "`lora.rnak=4`", "Did you mean: rank?", "`batch_sise=3`",
                             "Did you mean: batch_size?", "no option `llama9`", "Valid options for `model`")
    assert "(3 problems)" in text


def test_all_unknown_keys_of_a_user_yaml_at_once(user_cfg, tmp_path):
    _edit(user_cfg, "epochs: 3", "epochz: 3")
    _edit(user_cfg, "  rank: 8", "  rnak: 8")
    proc = run_tunekit("validate", "lora_finetune", "--config-dir", str(tmp_path), "--config-name", "my")
    assert_user_error(proc, str(user_cfg), "unknown key `epochz`", "Did you mean: epochs?",
                      "unknown key `lora.rnak`", "Did you mean: rank?")


def test_unknown_group_option(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "model=llama9")
    assert_user_error(proc, "config group `model` has no option `llama9`", "Did you mean: llama2_7b",
                      "Valid options for `model`: auto, llama2_13b, llama2_70b, llama2_7b, llama3_1_70b")


def test_misspelt_override_without_plus(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "lora.use_dorra=true")
    assert_user_error(proc, "unknown key `lora.use_dorra`", "Did you mean: use_dora?", "+lora.use_dorra=true")


def test_wrong_type(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "batch_size=abc")
    assert_user_error(proc, "`batch_size=abc`", "expects a value of type int", "'abc'")


# ------------------------------------------------------------------------- YAML files


def test_tab_in_user_yaml_names_file_line_column(user_cfg, tmp_path):
    _edit(user_cfg, "  rank: 8", "\trank: 8")
    proc = run_recipe("lora_finetune", tmp_path / "run", "--config-dir", str(tmp_path), "--config-name", "my")
    line = next(i for i, t in enumerate(user_cfg.read_text().splitlines(), 1) if t.startswith("\t"))
    assert_user_error(proc, str(user_cfg), f"line {line}, column 1", "tab", "indent with spaces")


def test_yaml_syntax_error_passed_to_validate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  - lora_finetune_schema\nlora:\n  targets: [q_proj, v_proj\n")
    proc = run_tunekit("validate", str(bad))
    assert_user_error(proc, str(bad), "line ", "column ", "expected ',' or ']'", "unclosed bracket")


def test_yaml_duplicate_key(user_cfg, tmp_path):
    user_cfg.write_text(user_cfg.read_text() + "\noptimizer:\n  lr: 1.0e-3\n")
    proc = run_tunekit("validate", "lora_finetune", "--config-dir", str(tmp_path), "--config-name", "my")
    assert_user_error(proc, str(user_cfg), "duplicate key optimizer", "merge the two blocks")


def test_yaml_that_names_no_recipe(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("epochs: 2\n")
    proc = run_tunekit("validate", str(other))
    assert_user_error(proc, "cannot tell which recipe", "lora_finetune_schema", "--config-name other")


def test_validate_of_a_sweep_command_line():
    proc = run_tunekit("validate", "lora_finetune", "-m", "optimizer.lr=1e-4,3e-4")
    assert_user_error(proc, "not a sweep", "drop `-m`", "`optimizer.lr=1e-4`")


def test_missing_config_dir(tmp_path):
    proc = run_tunekit("validate", "lora_finetune", "--config-dir", str(tmp_path / "nope"),
                       "--config-name", "my")
    assert_user_error(proc, "--config-dir", "is not a directory", "tunekit cp")


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif("_has_cuda()", reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_validate():
    proc = run_tunekit("validate", "lora_finetune", "device=cuda")
    assert_user_error(proc, "`device`='cuda'", "`device=cpu`")


@pytest.mark.skipif("_has_cuda()", reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_stops_the_run_before_it_starts(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, *FAST, "device=cuda:1")
    assert_user_error(proc, "`device`='cuda:1'", "`device=cpu`")
    assert not (run_dir / "config_resolved.yaml").exists()


@pytest.mark.skipif("_has_mps()", reason="this machine has MPS")
def test_mps_without_mps():
    proc = run_tunekit("validate", "generate", "device=mps")
    assert_user_error(proc, "`device`='mps'", "Metal (MPS)", "`device=cpu`")


def test_device_that_does_not_exist(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "device=foo")
    assert_user_error(proc, "`device`='foo'", "is not a device", "auto, cpu, cuda, cuda:N")


# --------------------------------------------------------------------- tunekit commands


def test_cp_refuses_to_overwrite(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("# my own settings\nepochs: 7\n")
    before = snapshot(tmp_path)
    proc = run_tunekit("cp", "lora_finetune", str(mine))
    assert_user_error(proc, str(mine), "exists", "--force")
    assert_unchanged(before, tmp_path)


def test_cp_into_a_directory_refuses_to_overwrite(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tiny.yaml").write_text("# edited\n")
    before = snapshot(tmp_path)
    proc = run_tunekit("cp", "model/tiny", str(tmp_path) + "/")
    assert_user_error(proc, "tiny.yaml", "exists", "--force")
    assert_unchanged(before, tmp_path)


def test_run_of_an_unknown_recipe():
    proc = run_tunekit("run", "lora_finetun", "epochs=1")
    assert_user_error(proc, "unknown recipe `lora_finetun`", "Did you mean: lora_finetune",
                      "Valid recipes: evaluate, full_dpo, full_finetune, generate, lora_dpo, lora_finetune")


def test_cp_of_an_unknown_name(tmp_path):
    proc = run_tunekit("cp", "model/llama2_8b", str(tmp_path / "x.yaml"))
    assert_user_error(proc, "no shipped config or recipe named `model/llama2_8b`", "Did you mean:")
    assert not (tmp_path / "x.yaml").exists()


# --------------------------------------------------------------------------- secrets


def test_token_override_is_refused_and_never_written_or_shown(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, f"+hf_token={TOKEN}")
    assert_user_error(proc, "`+hf_token`", "access token", "HF_TOKEN", "huggingface-cli login")
    assert TOKEN not in output(proc)
    assert not run_dir.exists()


def test_token_in_a_user_yaml_is_refused_and_not_copied(user_cfg, tmp_path):
    user_cfg.write_text(user_cfg.read_text() + f"\nmetric_logger:\n  api_token: {TOKEN}\n")
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, "--config-dir", str(tmp_path), "--config-name", "my")
    assert_user_error(proc, "`metric_logger.api_token`", "access token", "HF_TOKEN")
    assert TOKEN not in output(proc)
    for f in run_dir.rglob("*"):
        assert not f.is_file() or TOKEN not in f.read_text(errors="replace"), f


def test_token_in_the_environment_never_reaches_run_records(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, *FAST, env={"HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN})
    assert_ok(proc)
    assert TOKEN not in output(proc)
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert (run_dir / "config_resolved.yaml") in files and (run_dir / "run_info.json") in files
    assert any(f.parent.name == "logs" for f in files)
    for f in files:
        assert TOKEN.encode() not in f.read_bytes(), f


# ------------------------------------------------------------------ paths of the wrong kind


def test_run_dir_that_is_a_file_is_one_paragraph(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's notes\n")
    before = snapshot(tmp_path)
    proc = run_recipe("lora_finetune", taken, *FAST)
    assert_user_error(proc, str(taken), "a file of that name is in the way", "hydra.run.dir=<a new directory>")
    assert_unchanged(before, tmp_path)


def test_run_dir_below_a_file_is_one_paragraph(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's notes\n")
    before = snapshot(tmp_path)
    proc = run_recipe("lora_finetune", tmp_path / "run", *FAST, f"output_dir={taken / 'out'}")
    assert_user_error(proc, str(taken), "is a file, not a directory", "output_dir=<a new directory>")
    assert taken.read_text() == "the user's notes\n"
    assert before["notes.txt"] == snapshot(tmp_path)["notes.txt"]


def test_cp_below_a_file_is_one_paragraph(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("the user's notes\n")
    before = snapshot(tmp_path)
    assert_user_error(run_tunekit("cp", "lora_finetune", str(taken / "my.yaml")), "tunekit cp", str(taken),
                      "a file of that name is in the way", "a new destination")
    assert_unchanged(before, tmp_path)


def test_cp_into_a_missing_directory_creates_it(tmp_path):
    dest = tmp_path / "new" / "deeper" / "my.yaml"
    assert_ok(run_tunekit("cp", "lora_finetune", str(dest)), "Copied", f"--config-dir {dest.parent}")
    assert dest.read_text() == (Path(__file__).resolve().parents[2] / "conf" / "lora_finetune.yaml").read_text()


def test_resume_given_a_file_names_its_directory(tmp_path):
    f = tmp_path / "recipe_state.pt"
    f.write_bytes(b"x")
    assert_user_error(run_tunekit("validate", "lora_finetune", f"resume={f}", "--no-build"),
                      f"`resume`='{f}'", "is a file, not a directory", f"({tmp_path})")


def test_resume_given_a_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert_user_error(run_tunekit("validate", "lora_finetune", f"resume={tmp_path / 'a'}", "--no-build"),
                      "`resume`=", "symbolic link to nothing (or a link loop)", "a run or checkpoint directory")


def test_checkpoint_dir_given_a_weight_file_validate(tmp_path):
    f = REPO_ASSETS / "model.safetensors"
    assert_user_error(run_tunekit("validate", "lora_finetune", f"checkpointer.checkpoint_dir={f}"),
                      "`checkpointer.checkpoint_dir`=", "is a file, not a directory",
                      f"checkpointer.checkpoint_dir={REPO_ASSETS}")


def test_checkpoint_dir_given_a_weight_file_recipe(tmp_path):
    f = REPO_ASSETS / "model.safetensors"
    proc = run_recipe("lora_finetune", tmp_path / "run", *FAST, f"checkpointer.checkpoint_dir={f}")
    text = assert_user_error(proc, str(f), "is a file, not a directory", f"checkpointer.checkpoint_dir={REPO_ASSETS}")
    assert "tunekit download" not in text  # nothing to download: the path is wrong


@pytest.mark.parametrize("extra", [["epochs=3"], ["epochs=1"]], ids=["three-epochs", "one-epoch"])
def test_keep_last_n_without_step_saves_is_refused(extra):
    # keep_last_n prunes only step_N checkpoints: without save_every_n_steps it silently did nothing
    assert_user_error(run_tunekit("validate", "lora_finetune", "keep_last_n=1", *extra, "--no-build"),
                      "`keep_last_n`=1 has no effect without `save_every_n_steps`", "every epoch_N checkpoint is kept",
                      "save_every_n_steps=<n>", "unset keep_last_n")


@pytest.mark.parametrize("override, needles", [
    ("hydra.run.dir=/tmp/ünïcødé/run", ("`hydra.run.dir=/tmp/ünïcødé/run`", "'ü'", "\"hydra.run.dir='/tmp/ünïcødé/run'\"")),
    ("optimizer.lr=[1e-4", ("'[1e-4'", "needs quotes", "a list is written key=[a,b]")),
], ids=["non-ascii-path", "unclosed-bracket"])
def test_override_the_grammar_cannot_read_says_how_to_quote(tmp_path, override, needles):
    proc = run_recipe("lora_finetune", None, override, *FAST)
    assert_user_error(proc, "Cannot parse", *needles)


def test_quoted_non_ascii_paths_work(tmp_path):
    import json

    d = tmp_path / "ünï cødé"
    d.mkdir()
    data = d / "données.json"
    rows = [{"instruction": f"Nommez la couleur n°{i}.", "output": "Bleu ciel."} for i in range(8)]
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, ensure_ascii=False).encode())  # with a UTF-8 BOM
    proc = run_recipe("lora_finetune", None, f"hydra.run.dir='{d / 'run'}'", "dataset=alpaca",
                      f"dataset.source='{data}'", "dataset.val_fraction=0", *FAST, "batch_size=2")
    assert_ok(proc, "8 train / 0 validation samples", "done in")
    assert (d / "run" / "epoch_0" / "COMPLETE").is_file()


def test_eval_every_n_steps_without_a_validation_split_is_refused():
    # it used to train without ever evaluating, and say nothing
    assert_user_error(run_tunekit("validate", "lora_finetune", "eval_every_n_steps=1", "dataset.val_fraction=0",
                                  "--no-build"),
                      "`eval_every_n_steps`=1 would never evaluate", "`dataset.val_fraction`=0",
                      "dataset.val_fraction=0.1", "unset eval_every_n_steps")


def test_mapping_override_with_a_space_is_quoted_whole(tmp_path):
    # the override used to be cut at the space: "`lora.rank_pattern={q_proj:`"
    proc = run_recipe("lora_finetune", tmp_path / "run", "lora.rank_pattern={q_proj: 4}", "--cfg", "job")
    assert_user_error(proc, "`lora.rank_pattern={q_proj: 4}`", "`+lora.rank_pattern={q_proj: 4}`")
    assert_ok(run_recipe("lora_finetune", tmp_path / "run", "+lora.rank_pattern={q_proj: 4}", "--cfg", "job"),
              "rank_pattern:\n    q_proj: 4")


# ------------------------------------------------------------------ odd values that already get a clear paragraph


@pytest.mark.parametrize("overrides, needles", [
    ("epochs=0", ("`epochs`=0", "must be >= 1")),
    ("batch_size=-1", ("`batch_size`=-1", "must be >= 1")),
    ("max_seq_len=1", ("`max_seq_len`=1", "must be >= 2", "max_seq_len=512")),
    ("lora.alpha=0", ("`lora.alpha`=0.0", "must be > 0")),
    ("lora.targets=[]", ("`lora.targets`=[]", "must not be empty")),
    ("dtype=fp16", ("`dtype`='fp16'", "one of: fp32, bf16")),
    ("optimizer.lr=abc", ("`optimizer.lr`='abc'", "refused by torch.optim.AdamW", "`optimizer.lr=0.001`")),
    ("gradient_accumulation_steps=1000", ("no optimizer step", "`gradient_accumulation_steps`=1000",
                                          "lower `batch_size` or `gradient_accumulation_steps`")),
    ("optimizer=sgd optimizer.momentum=-1", ("`optimizer.momentum`=-1", "torch.optim.SGD", "`optimizer.momentum=0`")),
    ("loss=chunked_cross_entropy loss.num_chunks=0", ("`loss.num_chunks`=0", "`loss.num_chunks=8`")),
    ("dataset.val_fraction=1.5", ("`dataset.val_fraction`=1.5", "in [0, 1)")),
    ("clip_grad_norm=0", ("`clip_grad_norm`=0.0", "must be > 0")),
], ids=lambda v: v if isinstance(v, str) else None)
def test_odd_values_get_one_paragraph(overrides, needles):
    assert_user_error(run_tunekit("validate", "lora_finetune", *overrides.split()), *needles)
