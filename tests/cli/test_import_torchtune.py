"""``tunekit import-torchtune``: configs written in torchtune's published layout become tunekit
configs that compose and validate, with every setting left behind listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunekit.cli.import_torchtune import main as import_torchtune
from tunekit.cli.main import main as tunekit
from tunekit.config.torchtune import TorchtuneConfigError, checkpoint_files, translate

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
    dropped = _dropped(t)
    assert "optimizer-in-backward" in dropped["optimizer_in_bwd: True"]
    assert "not implemented" in dropped["enable_activation_offloading: True"]


def test_qlora_meta_checkpointer_and_local_data():
    t = _translate("llama2_7B_qlora_single_device.yaml")
    c = t.config
    assert t.recipe == "lora_finetune" and t.defaults["checkpointer"] == "meta"
    assert c["checkpointer"] == {"checkpoint_dir": "/tmp/Llama-2-7b", "checkpoint_files": ["consolidated.00.pth"],
                                 "model_type": "LLAMA2"}
    assert c["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"]
    assert c["lora"]["dropout"] == 0.05
    assert c["dataset"]["source"] == "my_data.json" and c["train_on_input"] is False
    assert "4-bit" in _dropped(t)["model (QLoRA)"]


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
    assert "not carried over: optimizer_in_bwd" in printed.err
