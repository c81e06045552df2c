"""Coming from torchtune: its key names on tunekit's command line and in a user YAML get tunekit's
key in the paragraph; bad input to ``tunekit import-torchtune`` is one paragraph, exit 1, nothing
written."""

from __future__ import annotations

import pytest
from _harness import assert_unchanged, assert_user_error, run_recipe, run_tunekit, snapshot


@pytest.mark.parametrize("override,needles", [
    ("resume_from_checkpoint=true", ["`resume_from_checkpoint` is torchtune's key", "`resume=auto`"]),
    ("model.lora_rank=16", ["`model.lora_rank` is torchtune's key", "`lora.rank=16`"]),
    ("enable_activation_checkpointing=true", ["torchtune's key", "`activation_checkpointing=true`"]),
    ("optimizer=torch.optim.AdamW", ["`optimizer` is a config group", "`optimizer=adamw`"]),
    ("optimizer=bitsandbytes.optim.PagedAdamW8bit",
     ["`optimizer=pkg.Class` shorthand", "`optimizer._component_=bitsandbytes.optim.PagedAdamW8bit`"]),
    ("optimizer_in_bwd=true", ["`optimizer_in_bwd` is torchtune's key", "`optimizer_in_backward=true`",
                               "gradient_accumulation_steps"]),
    ("model.quantize_base=True", ["`model.quantize_base` is torchtune's key", "`lora.quantize_base=nf4`"]),
], ids=["resume_from_checkpoint", "model.lora_rank", "enable_activation_checkpointing", "optimizer-shorthand",
        "optimizer-shorthand-other", "optimizer_in_bwd", "model.quantize_base"])
def test_torchtune_override_gets_tunekits_key(override, needles):
    assert_user_error(run_recipe("lora_finetune", None, override, "--cfg", "job"), override, *needles)


def test_torchtune_keys_in_a_user_yaml_are_named_with_the_file(tmp_path):
    cfg = tmp_path / "my_lora.yaml"
    cfg.write_text("defaults:\n  - lora_finetune_schema\n  - model: tiny\n  - _self_\n"
                   "resume_from_checkpoint: True\nenable_activation_checkpointing: True\n")
    before = snapshot(tmp_path)
    proc = run_tunekit("validate", str(cfg), "--no-build")
    assert_user_error(proc, str(cfg), "`resume=auto`", "`activation_checkpointing=true`")
    assert_unchanged(before, tmp_path)


_TT = ("model:\n  _component_: torchtune.models.llama2.lora_llama2_7b\n  lora_rank: 8\n"
       "loss:\n  _component_: {loss}\n")


@pytest.mark.parametrize("content,needles", [
    (None, ["tt.yaml", "does not exist", "tune cp"]),
    ("model:\n  _component_: torchtune.models.llama2.llama2_7b\n  bad: [1, 2\n", ["tt.yaml", "line"]),
    (_TT.replace("llama2.lora_llama2_7b", "gemma.lora_gemma_2b").format(loss="torch.nn.CrossEntropyLoss"),
     ["`model._component_`=torchtune.models.gemma.lora_gemma_2b", "tunekit has no such model", "llama2_7b"]),
    (_TT.format(loss="torchtune.rlhf.loss.DPOLoss"),
     ["`loss._component_`=torchtune.rlhf.loss.DPOLoss", "no tunekit recipe", "lora_finetune"]),
], ids=["missing", "yaml-syntax", "unknown-model", "dpo-recipe"])
def test_import_torchtune_bad_config(tmp_path, content, needles):
    src = tmp_path / "tt.yaml"
    if content is not None:
        src.write_text(content)
    before = snapshot(tmp_path)
    proc = run_tunekit("import-torchtune", str(src), "-o", str(tmp_path / "out.yaml"))
    assert_user_error(proc, *needles)
    assert_unchanged(before, tmp_path)


def test_import_torchtune_never_overwrites_output(tmp_path):
    src = tmp_path / "tt.yaml"
    src.write_text(_TT.format(loss="torch.nn.CrossEntropyLoss"))
    out = tmp_path / "mine.yaml"
    out.write_text("# the user's own config\n")
    before = snapshot(tmp_path)
    assert_user_error(run_tunekit("import-torchtune", str(src), "-o", str(out)), "mine.yaml", "already exists",
                      "--force")
    assert_unchanged(before, tmp_path)
