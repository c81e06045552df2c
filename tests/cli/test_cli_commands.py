"""The `tunekit` command and the recipe entrypoints, through their real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=120
    )


def tunekit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return _run("-m", "tunekit.cli.main", *args, cwd=cwd)


def recipe(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return _run("-m", f"recipes.{name}", *args, env=env)


def _one_paragraph_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert "\n\n" not in proc.stderr.strip()
    return proc.stderr


def test_ls_lists_recipes_groups_and_options(tmp_path):
    out = tunekit("ls", cwd=tmp_path).stdout
    assert "lora_finetune" in out and "full_finetune" in out and "generate" in out
    assert "checkpointer   hf*, meta" in out
    assert "llama2_7b" in out and "tiny*" in out


def test_cp_primary_group_option_and_recipe(tmp_path):
    proc = tunekit("cp", "lora_finetune", "mine/my_lora.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and "--config-dir mine --config-name my_lora" in proc.stdout
    assert (tmp_path / "mine/my_lora.yaml").read_text().startswith("# LoRA fine-tuning")
    assert tunekit("cp", "model/llama2_7b", "mine/", cwd=tmp_path).returncode == 0
    assert (tmp_path / "mine/model/llama2_7b.yaml").is_file()
    assert tunekit("cp", "lora_finetune.py", "r.py", cwd=tmp_path).returncode == 0
    assert "recipe_main(\"lora_finetune\")" in (tmp_path / "r.py").read_text()
    again = tunekit("cp", "lora_finetune", "mine/my_lora.yaml", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    bad = tunekit("cp", "model/llama2_7", "x.yaml", cwd=tmp_path)
    assert bad.returncode == 1 and "Did you mean: model/llama2_7b" in bad.stderr
    # the copy runs with --config-dir/--config-name
    (tmp_path / "mine/my_lora.yaml").write_text(
        (tmp_path / "mine/my_lora.yaml").read_text().replace("batch_size: 16", "batch_size: 5")
    )
    run = tunekit("run", "lora_finetune", "--config-dir", "mine", "--config-name", "my_lora", "--cfg", "job", cwd=tmp_path)
    assert run.returncode == 0 and "batch_size: 5" in run.stdout


def test_cp_help_documents_config_dir():
    out = tunekit("cp", "--help").stdout
    assert "--config-dir" in out and "--config-name" in out


def test_validate_ok_and_all_problems_at_once(tmp_path):
    ok = tunekit("validate", "lora_finetune", "model=llama2_7b", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = tunekit("validate", "lora_finetune", "epochs=0", "lora.rank=0", "+optimizer.lrr=1", cwd=tmp_path)
    text = _one_paragraph_error(bad)
    assert "(3 problems)" in text and "`epochs`=0" in text and "`lora.rank`=0" in text
    assert "`optimizer`: unexpected key `lrr` (did you mean: lr?)" in text
    unknown = tunekit("validate", "lora_finetun", cwd=tmp_path)
    assert unknown.returncode == 1 and "Did you mean: lora_finetune" in unknown.stderr


def test_run_prints_config_from_any_directory(tmp_path):
    proc = tunekit("run", "lora_finetune", "model=llama2_7b", "optimizer.lr=0.123", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.123" in proc.stdout and "tunekit.models.llama2.llama2_7b" in proc.stdout


def test_download_is_a_registered_subcommand():
    proc = tunekit("download", "--help")
    assert proc.returncode == 0 and "usage: tunekit download" in proc.stdout


@pytest.mark.parametrize(
    ("checkpointer", "cls", "repo"),
    [("hf", "FullModelHFCheckpointer", "Llama-2-7b-hf"), ("meta", "FullModelMetaCheckpointer", "Llama-2-7b")],
)
def test_recipe_cfg_job_names_checkpointer_and_builder(checkpointer, cls, repo, tmp_path):
    proc = recipe(
        "lora_finetune", f"checkpointer={checkpointer}", "model=llama2_7b", "optimizer.lr=0.123",
        "--cfg", "job", "--resolve", env={"TUNEKIT_MODELS_ROOT": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"_component_: tunekit.checkpointing.{cls}" in proc.stdout
    assert f"checkpoint_dir: {tmp_path}/meta-llama/{repo}" in proc.stdout
    assert "_component_: tunekit.models.llama2.llama2_7b" in proc.stdout
    assert "lr: 0.123" in proc.stdout


def test_recipe_unknown_option_and_misspelt_key_are_one_paragraph():
    text = _one_paragraph_error(recipe("lora_finetune", "checkpointer=nope"))
    assert "Valid options for `checkpointer`: hf, meta." in text
    text = _one_paragraph_error(recipe("full_finetune", "optimzer.lr=1"))
    assert "Did you mean: optimizer?" in text and "+optimzer.lr=1" in text


def test_recipe_validation_error_is_one_paragraph():
    text = _one_paragraph_error(recipe("generate", "temperature=-1", "max_new_tokens=0"))
    assert "`temperature`=-1.0: must be >= 0.0" in text and "`max_new_tokens`=0" in text


def test_cfg_job_is_fast_and_does_not_import_torch():
    proc = _run("-X", "importtime", "-m", "recipes.lora_finetune", "--cfg", "job")
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "hydra" in imported


def test_validate_and_run_take_a_yaml_file(tmp_path):
    assert tunekit("cp", "lora_finetune", "my.yaml", cwd=tmp_path).returncode == 0
    ok = tunekit("validate", "my.yaml", "epochs=1", cwd=tmp_path)
    assert ok.returncode == 0 and "OK: `lora_finetune`" in ok.stdout and "optimizer, lr schedule" in ok.stdout
    run = tunekit("run", "my.yaml", "batch_size=7", "--cfg", "job", cwd=tmp_path)
    assert run.returncode == 0 and "batch_size: 7" in run.stdout


def test_validate_no_build_skips_building():
    proc = tunekit("validate", "lora_finetune", "--no-build", "optimizer.lr=-1")
    assert proc.returncode == 0 and "build" not in proc.stdout.split("signature")[-1]


def test_validate_notes_a_model_not_downloaded_yet(tmp_path):
    proc = _run("-m", "tunekit.cli.main", "validate", "lora_finetune", "model=llama2_7b",
                env={"TUNEKIT_MODELS_ROOT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "does not exist yet" in proc.stderr and "tunekit download meta-llama/Llama-2-7b-hf" in proc.stderr


def test_validate_notes_a_warmup_longer_than_the_run():
    proc = tunekit("validate", "lora_finetune", "max_steps_per_epoch=2", "epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert "`lr_scheduler.num_warmup_steps`=10 is not below the run's 2 optimizer steps" in proc.stderr
