"""``tunekit import-torchtune``: configs written in torchtune's published layout become tunekit
configs that compose and validate, with every setting left behind listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunekit.cli.import_torchtune import main as import_torchtune
from tunekit.cli.main import main as tunekit
from tunekit.config import compose, config_problems
from tunekit.config.torchtune import (
    TorchtuneConfigError,
    checkpoint_files,
    torchtune_key_hint,
    torchtune_option_hint,
    translate,
)

CONFIGS = Path(__file__).parent / "torchtune_configs"
MODELS = {p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "model").glob("*.yaml")}


def _translate(name: str):
    return translate(yaml.safe_load((CONFIGS / name).read_text()), source=name, models=MODELS)


def _dropped(t) -> dict[str, str]:
    return dict(t.not_carried)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_translated_config_validates(name, tmp_path, capsys):
    out = tmp_path / "my.yaml"
    assert import_torchtune([str(CONFIGS / name), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"Wrote {out}" in err and "tunekit validate" in err
    header = out.read_text().split("defaults:")[0]
    for key, _ in _translate(name).not_carried:  # the file says what was left behind, as stderr did
        assert key in header and f"not carried over: {key}" in err
    written = yaml.safe_load(out.read_text())
    # the shipped recipe's hydra settings come along (no token-bearing .hydra record, sweep summary)
    assert written["hydra"]["output_subdir"] == "${tunekit.hydra_subdir:}" and "sweep_summary" in written["hydra"]["callbacks"]
    source = [] if "source" in written.get("dataset", {}) else ["dataset.source=alpaca_tiny"]
    assert tunekit(["validate", str(out), *source, "--no-build"]) == 0, capsys.readouterr().err
    assert "OK:" in capsys.readouterr().out


def test_lora_single_device_keeps_the_run_as_torchtune_trains_it():
    t = _translate("llama2_7B_lora_single_device.yaml")
    assert t.recipe == "lora_finetune"
    assert t.defaults == {"model": "llama2_7b", "checkpointer": "hf", "tokenizer": "auto", "dataset": "alpaca",
                          "optimizer": "adamw", "lr_scheduler": "cosine", "loss": "chunked_cross_entropy",
                          "metric_logger": "jsonl"}
    c = t.config
    assert c["lora"] == {"targets": ["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"], "rank": 8,
                         "alpha": 16.0, "dropout": 0.0}
    assert c["checkpointer"]["checkpoint_files"] == ["pytorch_model-00001-of-00002.bin",
                                                     "pytorch_model-00002-of-00002.bin"]
    # torchtune's Alpaca trains on the prompt too and holds nothing out: said explicitly
    assert c["train_on_input"] is True and c["dataset"] == {"val_fraction": 0.0}
    assert c["optimizer"] == {"fused": True, "weight_decay": 0.01, "lr": 3e-4}
    assert c["lr_scheduler"] == {"num_warmup_steps": 100}
    assert c["gradient_accumulation_steps"] == 8 and c["activation_checkpointing"] is True and c["dtype"] == "bf16"
    assert "resume" not in c and "seed" not in c and "device" not in c
    assert c["hydra"] == {"run": {"dir": "/tmp/torchtune/llama2_7B/lora_single_device"}}
    dropped = _dropped(t)
    assert "Hub data sets" in dropped["dataset._component_=torchtune.datasets.alpaca_cleaned_dataset"]
    assert not any(k.startswith("profiler") for k in dropped)  # disabled: nothing lost
    assert any("max_seq_len: null" in n for n in t.notes) and any("seed: null" in n for n in t.notes)


def test_full_config_filename_format_resume_and_unsupported_switches():
    t = _translate("llama2_7B_full.yaml")
    c = t.config
    assert t.recipe == "full_finetune" and "lora" not in c
    assert c["checkpointer"]["checkpoint_files"] == ["pytorch_model-00001-of-00002.bin",
                                                     "pytorch_model-00002-of-00002.bin"]
    assert c["resume"] == "auto"
    assert (c["max_seq_len"], c["packed"], c["seed"], c["clip_grad_norm"], c["compile"]) == (2048, True, 42, 1.0, True)
    assert t.defaults["lr_scheduler"] == "constant" and c["lr_scheduler"] == {"num_warmup_steps": 0}
    assert t.defaults["metric_logger"] == "wandb" and c["metric_logger"] == {"project": "llama2-full"}
    # optimizer in backward cannot clip (tunekit refuses the pair, as torchtune's recipes do): the clipping
    # stays, the saver is left out with why; activation offloading is carried over
    assert "optimizer_in_backward" not in c and c["activation_offloading"] is True
    why = _dropped(t)["optimizer_in_bwd: True"]
    assert "clip_grad_norm=1.0" in why and "refuses" in why and "clip_grad_norm=null" in why


def test_qlora_meta_checkpointer_and_local_data():
    t = _translate("llama2_7B_qlora_single_device.yaml")
    c = t.config
    assert t.recipe == "lora_finetune" and t.defaults["checkpointer"] == "meta"
    assert c["checkpointer"] == {"checkpoint_dir": "/tmp/Llama-2-7b", "checkpoint_files": ["consolidated.00.pth"],
                                 "model_type": "LLAMA2"}
    assert c["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"]
    assert c["lora"]["dropout"] == 0.05
    assert c["dataset"]["source"] == "my_data.json" and c["train_on_input"] is False
    # QLoRA's 4-bit base is carried over, merged as torchtune merges (onto the dequantized NF4 base)
    assert (c["lora"]["quantize_base"], c["lora"]["merge_base"]) == ("nf4", "dequantized")
    assert not any("QLoRA" in key or "quantize" in key for key in _dropped(t))
    assert any("lora.quantize_base=nf4" in n and "merge_base=dequantized" in n for n in t.notes)


def test_llama3_1_lora_reads_the_checkpoints_tokenizer():
    t = _translate("llama3_1_8B_lora.yaml")
    assert t.defaults["model"] == "llama3_1_8b" and t.defaults["tokenizer"] == "auto"  # original/ beside the weights
    assert t.config["checkpointer"]["checkpoint_files"] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert t.config["checkpointer"]["checkpoint_dir"] == "/tmp/Meta-Llama-3.1-8B-Instruct"
    assert t.config["checkpointer"]["model_type"] == "LLAMA3"


def test_checkpoint_files_forms():
    assert checkpoint_files({"filename_format": "m-{}-of-{}.bin", "max_filename": "003"}, "k") == \
        ["m-001-of-003.bin", "m-002-of-003.bin", "m-003-of-003.bin"]
    with pytest.raises(TorchtuneConfigError, match="`k`.*two"):
        checkpoint_files({"filename_format": "m-{}.bin", "max_filename": "3"}, "k")
    with pytest.raises(TorchtuneConfigError, match="list of file names"):
        checkpoint_files("consolidated.00.pth", "k")


def test_without_output_the_config_is_printed(capsys):
    assert import_torchtune([str(CONFIGS / "llama2_7B_full.yaml")]) == 0
    printed = capsys.readouterr()
    assert yaml.safe_load(printed.out)["defaults"][0] == "full_finetune_schema"
    assert "not carried over: optimizer_in_bwd: True" in printed.err


# ------------------------------------------------------------ QLoRA and the low-memory savers
def _composed(t, tmp_path):
    """The translation written to a file, composed as `tunekit run` would and validated: the config."""
    (tmp_path / "my.yaml").write_text(t.text)
    overrides = [] if "source" in t.config.get("dataset", {}) else ["dataset.source=alpaca_tiny"]
    cfg = compose(t.recipe, overrides, user_config_dir=tmp_path, config_name="my")
    assert config_problems(cfg, t.recipe) == []
    return cfg


def _qlora_layout(t, *, rank, alpha, targets, accumulation, model):
    c = t.config
    assert t.recipe == "lora_finetune" and t.defaults["model"] == model
    assert c["lora"] == {"targets": targets, "rank": rank, "alpha": alpha, "dropout": 0.0,
                         "quantize_base": "nf4", "merge_base": "dequantized"}
    assert c["gradient_accumulation_steps"] == accumulation and c["activation_checkpointing"] is True
    assert c["dtype"] == "bf16" and c["train_on_input"] is True
    assert "activation_offloading" not in c and "optimizer_in_backward" not in c  # both off in torchtune's
    assert not any("QLoRA" in key or "quantize" in key or key.startswith("fsdp") for key in _dropped(t))


def test_qlora_single_device_composes_with_the_nf4_base(tmp_path):
    t = _translate("llama2_7B_qlora_single_device.yaml")
    assert not any("several GPUs" in n for n in t.notes)  # no FSDP settings: a one-GPU config
    cfg = _composed(t, tmp_path)
    assert cfg.lora.quantize_base == "nf4" and cfg.lora.merge_base == "dequantized" and cfg.lora.rank == 8
    assert list(cfg.lora.targets) == ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"]
    assert cfg.model._component_.startswith("tunekit.models.llama2.llama2_")
    assert cfg.gradient_accumulation_steps == 16 and cfg.activation_checkpointing and cfg.dtype == "bf16"
    assert cfg.optimizer._component_ == "torch.optim.AdamW" and cfg.optimizer.lr == 3e-4


@pytest.mark.parametrize("name,rank,alpha,targets,accumulation,model", [
    ("llama2_7B_qlora.yaml", 8, 16.0, ["q_proj", "v_proj", "k_proj", "output_proj", "w1", "w2", "w3"], 8,
     "llama2_7b"),
    ("llama2_70B_qlora.yaml", 16, 32.0, ["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"], 1, "llama2_70b"),
], ids=["7B_qlora", "70B_qlora"])
def test_distributed_qlora_keeps_the_nf4_base_and_says_how_to_launch(name, rank, alpha, targets, accumulation,
                                                                      model):
    t = _translate(name)
    _qlora_layout(t, rank=rank, alpha=alpha, targets=targets, accumulation=accumulation, model=model)
    launch = [n for n in t.notes if "several GPUs" in n]
    assert len(launch) == 1 and "torchrun --nproc-per-node N -m recipes.lora_finetune" in launch[0]
    assert "NF4 base" in launch[0]
    if model == "llama2_70b":
        assert len(t.config["checkpointer"]["checkpoint_files"]) == 15
        assert t.config["checkpointer"]["checkpoint_files"][-1] == "pytorch_model-00015-of-00015.bin"


def test_full_low_memory_carries_every_saver_and_validates(tmp_path):
    t = _translate("llama2_7B_full_low_memory.yaml")
    c = t.config
    assert t.recipe == "full_finetune" and "lora" not in c
    assert c["optimizer_in_backward"] is True and c["activation_offloading"] is True
    assert c["activation_checkpointing"] is True and c["gradient_accumulation_steps"] == 1
    assert "clip_grad_norm" not in c
    # bitsandbytes' paged 32-bit AdamW: torch's AdamW, with what differs (the paging) said
    assert t.defaults["optimizer"] == "adamw" and c["optimizer"] == {"lr": 1e-5, "weight_decay": 0.01}
    paged = [n for n in t.notes if "PagedAdamW" in n]
    assert len(paged) == 1 and "paging is not reproduced" in paged[0] and "adamw_cpu_offload" in paged[0]
    assert any("optimizer_in_backward=true runs in one process" in n for n in t.notes)
    assert not any(k.startswith(("optimizer", "enable_activation")) for k in _dropped(t))
    cfg = _composed(t, tmp_path)
    assert cfg.optimizer_in_backward and cfg.activation_offloading and cfg.activation_checkpointing
    assert cfg.optimizer._component_ == "torch.optim.AdamW" and cfg.optimizer.lr == 1e-5
    assert cfg.lr_scheduler.num_warmup_steps == 100 and cfg.epochs == 3


def _low_memory(**changes):
    cfg = yaml.safe_load((CONFIGS / "llama2_7B_full_low_memory.yaml").read_text())
    cfg.update(changes)
    return translate(cfg, source="tt.yaml", models=MODELS)


def test_optimizer_in_bwd_with_accumulation_validates_and_names_what_was_left_out(tmp_path):
    t = _low_memory(gradient_accumulation_steps=4,
                    optimizer={"_component_": "bitsandbytes.optim.PagedAdamW8bit", "lr": 2e-5, "betas": [0.9, 0.95]})
    c = t.config
    # the optimizer steps stay as configured (4 micro-batches each); the saver that cannot run with them is out
    assert c["gradient_accumulation_steps"] == 4 and "optimizer_in_backward" not in c
    assert c["activation_offloading"] is True
    why = _dropped(t)["optimizer_in_bwd: True"]
    assert "gradient_accumulation_steps=4" in why and "refuses" in why
    assert "gradient_accumulation_steps=1" in why and "optimizer_in_backward=true" in why
    # PagedAdamW8bit -> torchao's 8-bit AdamW, its arguments passed through, the paging named
    assert t.defaults["optimizer"] == "adamw8bit"
    assert c["optimizer"] == {"lr": 2e-5, "betas": [0.9, 0.95], "weight_decay": 0.01}
    assert any("PagedAdamW8bit became optimizer=adamw8bit" in n and "paging is not reproduced" in n for n in t.notes)
    cfg = _composed(t, tmp_path)
    assert cfg.optimizer._component_ == "tunekit.training.low_memory.adamw8bit" and not cfg.optimizer_in_backward
    assert list(cfg.optimizer.betas) == [0.9, 0.95] and cfg.gradient_accumulation_steps == 4


def test_cpu_offload_optimizer_becomes_adamw_cpu_offload(tmp_path):
    spec = {"_component_": "torchtune.modules.optim.CPUOffloadOptimizer", "optimizer_class": "torch.optim.AdamW",
            "offload_gradients": True, "lr": 2e-5, "fused": True}
    t = _low_memory(optimizer=spec, optimizer_in_bwd=False)
    assert t.defaults["optimizer"] == "adamw_cpu_offload"
    assert t.config["optimizer"] == {"lr": 2e-5, "weight_decay": 0.01} and "optimizer_in_backward" not in t.config
    assert not any(k.startswith("optimizer") for k in _dropped(t))  # optimizer_class, fused, offload: as tunekit's
    cfg = _composed(t, tmp_path)
    assert cfg.optimizer._component_ == "tunekit.training.low_memory.adamw_cpu_offload" and cfg.optimizer.lr == 2e-5
    # with optimizer_in_bwd as well: the CPU-offload optimizer already frees the gradients; the pair is refused
    t = _low_memory(optimizer={**spec, "_component_": "torchao.optim.CPUOffloadOptimizer"})
    assert t.defaults["optimizer"] == "adamw_cpu_offload" and "optimizer_in_backward" not in t.config
    assert "already frees each gradient" in _dropped(t)["optimizer_in_bwd: True"]
    # with accumulation: plain AdamW keeps the steps as configured, and says how to get the offload back
    t = _low_memory(optimizer={**spec, "offload_gradients": False}, gradient_accumulation_steps=2, optimizer_in_bwd=False)
    assert t.defaults["optimizer"] == "adamw" and t.config["optimizer"]["lr"] == 2e-5
    why = _dropped(t)["optimizer._component_=torchtune.modules.optim.CPUOffloadOptimizer"]
    assert "gradient_accumulation_steps=2" in why and "optimizer=adamw_cpu_offload" in why
    assert _composed(t, tmp_path).optimizer._component_ == "torch.optim.AdamW"


def test_torchao_adamw8bit_passes_its_own_arguments():
    t = _low_memory(optimizer={"_component_": "torchao.optim.AdamW8bit", "lr": 1e-5, "block_size": 128,
                               "bf16_stochastic_round": True, "amsgrad": False})
    assert t.defaults["optimizer"] == "adamw8bit" and not any("adamw8bit" in n for n in t.notes)  # the same class
    assert t.config["optimizer"] == {"lr": 1e-5, "block_size": 128, "bf16_stochastic_round": True,
                                     "weight_decay": 0.01}
    assert "conf/optimizer/adamw8bit.yaml" in _dropped(t)["optimizer.amsgrad"]


def test_fsdp_settings_mark_a_distributed_config_and_refuse_in_backward():
    t = _low_memory(fsdp_cpu_offload=True, custom_sharded_layers=["tok_embeddings", "output"])
    dropped = _dropped(t)
    assert "GPUs" in dropped["fsdp_cpu_offload: True"] and "decoder layer" in dropped[
        "custom_sharded_layers: ['tok_embeddings', 'output']"]
    assert "optimizer_in_backward" not in t.config and "one process" in dropped["optimizer_in_bwd: True"]
    assert any("torchrun --nproc-per-node N -m recipes.full_finetune" in n for n in t.notes)


def test_qlora_on_a_full_builder_is_named_not_dropped_silently():
    t = _low_memory(model={"_component_": "torchtune.models.llama2.llama2_7b", "quantize_base": True})
    assert "lora" not in t.config and "lora_finetune" in _dropped(t)["model.quantize_base: True"]


def test_key_and_option_hints_give_the_new_settings():
    assert "`lora.quantize_base=nf4`" in torchtune_key_hint("model.quantize_base", "True")
    assert "`lora.quantize_base=null`" in torchtune_key_hint("quantize_base", "false")
    assert "`optimizer_in_backward=true`" in torchtune_key_hint("optimizer_in_bwd", "true")
    assert "`activation_offloading=true`" in torchtune_key_hint("enable_activation_offloading", "True")
    assert "`optimizer=adamw8bit` is tunekit's option" in torchtune_option_hint("optimizer", "torchao.optim.AdamW8bit")
    assert "`model=llama2_7b` with lora.quantize_base=nf4 (QLoRA)" in torchtune_option_hint(
        "model", "torchtune.models.llama2.qlora_llama2_7b")
    paged = torchtune_option_hint("optimizer", "bitsandbytes.optim.PagedAdamW8bit")
    assert "`optimizer._component_=bitsandbytes.optim.PagedAdamW8bit`" in paged and "`optimizer=adamw8bit`" in paged
