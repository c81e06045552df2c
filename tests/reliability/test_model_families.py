"""Checkpoints of the other model families handed to the wrong model, or declaring what no family
implements: one paragraph naming the file, the field and the fix; the checkpoint untouched.

Each case writes a tiny random checkpoint of a family with transformers (offline), then runs the
real LoRA recipe on it; every case fails before training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _harness import REPO, assert_unchanged, assert_user_error, run_recipe, run_tunekit, snapshot

TOKENIZER = REPO / "src" / "tunekit" / "assets" / "tokenizer" / "tokenizer.model"
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
_CONFIGS = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": _LLAMA3_ROPE, "rms_norm_eps": 1e-5}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"rope_theta": 1e6, "rms_norm_eps": 1e-5,
                                                         "sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"rope_theta": 1e6, "tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"rope_theta": 1e6, "head_dim": 32}),
}
# model= overrides building each family's tiny model (what the checkpoint above holds)
_TK = {"vocab_size": 512, "embed_dim": 64, "intermediate_dim": 160, "num_layers": 2, "num_heads": 4,
       "num_kv_heads": 2, "max_seq_len": 256}
_MODEL = {
    "llama3": ("LLAMA3", {"rope_scaling_factor": 8.0, "rope_original_max_position_embeddings": 32}),
    "mistral": ("MISTRAL", {}),
    "qwen2": ("QWEN2", {"tie_word_embeddings": True}),
    "qwen3": ("QWEN3", {"head_dim": 32}),
}


def _checkpoint(tmp_path: Path, family: str, **config_changes) -> Path:
    import transformers

    cfg_cls, model_cls, extra = _CONFIGS[family]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**_TINY, **extra))
    d = tmp_path / f"tiny_{family}"
    model.save_pretrained(d)
    shutil.copy(TOKENIZER, d / "tokenizer.model")
    if config_changes:
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(config_changes)
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def _model(family: str, **changes) -> list[str]:
    model_type, extra = _MODEL[family]
    args = {**_TK, **extra, **changes}
    return [f"model._component_=tunekit.models.{family}.{family}", f"model_info.model_type={model_type}",
            *(f"+model.{k}={v}" for k, v in args.items())]


def _lora(tmp_path: Path, ckpt: Path, *extra: str):
    return run_recipe("lora_finetune", tmp_path / "run", f"checkpointer.checkpoint_dir={ckpt}",
                      f"output_dir={tmp_path / 'out'}", "max_seq_len=256", *extra, timeout=180)


def _no_checkpoint_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("epoch_*"))


@pytest.mark.parametrize("family, needles", [
    ("qwen2", ["model_type='qwen2'", "checkpointer.model_type=LLAMA2 implements 'llama'"]),
    ("llama3", ["rope_scaling type 'llama3'", "supported: none, plain rope only"]),
    ("qwen3", ["model_type='qwen3'", "head_dim=32"]),
], ids=["qwen2-as-llama2", "llama3-as-llama2", "qwen3-as-llama2"])  # fmt: skip
def test_another_familys_checkpoint_under_the_default_llama2_model(tmp_path, family, needles):
    ckpt = _checkpoint(tmp_path, family)
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt), str(ckpt / "config.json"), *needles, "does not implement",
                      "use a model family that implements it", "model=")
    assert_unchanged(before, ckpt)
    _no_checkpoint_written(tmp_path)


@pytest.mark.parametrize("family, changes, needles", [
    ("mistral", {"sliding_window": 16}, ["sliding_window=16", "supported: null"]),
    ("llama3", {"rope_parameters": {**_LLAMA3_ROPE, "rope_type": "yarn"}},
     ["rope_scaling type 'yarn'", "supported: 'llama3'"]),
    ("qwen3", {"attention_bias": True}, ["attention_bias=true", "supported: false"]),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"], "use_sliding_window": True,
               "sliding_window": 16}, ["'sliding_attention'", "sliding_window=16"]),
], ids=["mistral-sliding-window", "llama3-yarn", "qwen3-attention-bias", "qwen2-sliding-layers"])  # fmt: skip
def test_config_json_declaring_what_the_family_does_not_implement(tmp_path, family, changes, needles):
    ckpt = _checkpoint(tmp_path, family, **changes)
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt, *_model(family)), str(ckpt / "config.json"), *needles,
                      "does not implement")
    assert_unchanged(before, ckpt)
    _no_checkpoint_written(tmp_path)


@pytest.mark.parametrize("family, model_changes, needles", [
    ("llama3", {"rope_scaling_factor": 32.0},
     ["rope_scaling='llama3(factor=8, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=32)'",
      "builds rope scaling='llama3(factor=32", "override model.rope_scaling_factor=8 model.rope_low_freq_factor=1",
      "model._component_=tunekit.models.llama3.llama3 with every size"]),
    ("qwen2", {"tie_word_embeddings": False},
     ["tie_word_embeddings=true where the chosen model builds tied input/output embeddings=false"]),
    ("qwen3", {"head_dim": 16}, ["head_dim=32 where the chosen model builds head width=16", "model.head_dim=32"]),
], ids=["llama3-rope-factor", "qwen2-untied-model", "qwen3-head-dim"])  # fmt: skip
def test_model_built_differently_from_the_checkpoint_is_named_before_loading(tmp_path, family, model_changes,
                                                                               needles):
    ckpt = _checkpoint(tmp_path, family)
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt, *_model(family, **model_changes)), str(ckpt / "config.json"),
                      *needles, "pick the model= option built for this checkpoint")
    assert_unchanged(before, ckpt)
    _no_checkpoint_written(tmp_path)


def test_lora_on_the_tied_output_projection_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, "qwen2")
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt, *_model("qwen2"), "lora.targets=[q_proj,output]"),
                      "lora.targets contains 'output'", "ties its output projection", "remove 'output' from lora.targets")
    assert_unchanged(before, ckpt)
    _no_checkpoint_written(tmp_path)


# ---- model=auto: the family read from the checkpoint's own JSON ---------------------------------

@pytest.mark.parametrize("family, changes, needles", [
    ("qwen2", {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "final_logit_softcapping": 30.0},
     ["model_type='gemma2', which no tunekit model family implements", "supported model_type values: 'llama'",
      "'qwen2' (qwen2.5)", "also final_logit_softcapping=30.0 (supported: null)",
      "use a checkpoint of a supported family"]),
    ("mistral", {"sliding_window": 16}, ["sliding_window=16", "supported: null", "does not implement"]),
], ids=["auto-gemma", "auto-mistral-sliding-window"])  # fmt: skip
def test_model_auto_refuses_what_no_family_implements(tmp_path, family, changes, needles):
    # the recipe refuses it before training; `tunekit validate` reads the same config.json (meta device)
    ckpt = _checkpoint(tmp_path, family, **changes)
    before = snapshot(ckpt)
    if family == "mistral":
        proc = run_tunekit("validate", "lora_finetune", "model=auto", f"checkpointer.checkpoint_dir={ckpt}",
                           f"output_dir={tmp_path / 'out'}")
        needles = [*needles, "`model.path`="]
    else:
        proc = _lora(tmp_path, ckpt, "model=auto")
    assert_user_error(proc, str(ckpt / "config.json"), *needles)
    assert_unchanged(before, ckpt)
    _no_checkpoint_written(tmp_path)


def test_model_auto_without_a_checkpoint_dir(tmp_path):
    proc = run_recipe("lora_finetune", tmp_path / "run", "model=auto", f"output_dir={tmp_path / 'out'}")
    assert_user_error(proc, "model=auto", "no config.json / params.json to read the model from",
                      "set checkpointer.checkpoint_dir=<the model directory>", "model=llama3_1_8b")
    _no_checkpoint_written(tmp_path)
