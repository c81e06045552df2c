"""The built model against what its checkpoint declares beyond shapes (RoPE base, norm eps, scaling)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunekit.checkpointing import CheckpointError, FullModelHFCheckpointer, FullModelMetaCheckpointer
from tunekit.checkpointing import check_model_matches as check_model_settings
from tunekit.models.llama2 import llama2, llama2_tiny
from tunekit.run.model import build_training_model

ASSETS = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2"
TINY = dict(vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=352,
            max_seq_len=512)  # fmt: skip
PLAIN = {"norm_eps": 1e-5, "rope_base": 10000.0, "rope_scaling": None}


def _meta_model(**kw):
    with torch.device("meta"):
        return llama2(**TINY, **kw)


def test_shipped_checkpoints_declare_what_the_tiny_model_uses(tmp_path):
    hf = FullModelHFCheckpointer(ASSETS / "hf", tmp_path / "a")
    meta = FullModelMetaCheckpointer(ASSETS / "meta", tmp_path / "b")
    assert {k: hf.model_settings[k] for k in PLAIN} == {k: meta.model_settings[k] for k in PLAIN} == PLAIN
    with torch.device("meta"):
        check_model_settings(llama2_tiny(), hf.model_settings, "tiny")  # no error
    check_model_settings(_meta_model(), None, "anything")  # nothing declared: nothing checked


def test_settings_are_read_from_every_config_spelling(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(ASSETS / "hf", d)
    config = json.loads((d / "config.json").read_text())
    del config["rope_theta"]
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}  # transformers 5
    config["rms_norm_eps"] = 1e-6
    (d / "config.json").write_text(json.dumps(config))
    got = FullModelHFCheckpointer(d, tmp_path / "o").model_settings
    assert {k: got[k] for k in PLAIN} == {"norm_eps": 1e-6, "rope_base": 500000.0, "rope_scaling": None}
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope_scaling type 'yarn'"):  # refused when read
        FullModelHFCheckpointer(d, tmp_path / "o")

    m = tmp_path / "meta"
    shutil.copytree(ASSETS / "meta", m)
    params = json.loads((m / "params.json").read_text())
    del params["rope_theta"]  # as Llama 2's params.json: 10000 implied
    (m / "params.json").write_text(json.dumps(params))
    got = FullModelMetaCheckpointer(m, tmp_path / "o2").model_settings
    assert {k: got[k] for k in PLAIN} == PLAIN


@pytest.mark.parametrize("declared, message, override", [
    ({**PLAIN, "rope_base": 1e6}, "declares rope_theta=1000000.0 where the chosen model builds RoPE base=10000.0",
     "model.rope_base=1000000.0"),
    ({**PLAIN, "norm_eps": 1e-6}, "declares norm_eps=1e-06 where the chosen model builds RMSNorm epsilon=1e-05",
     "model.norm_eps=1e-06"),
    ({**PLAIN, "rope_scaling": "linear"}, "declares rope_scaling='linear' where the chosen model builds RoPE scaling=null",
     "Pick the model= option"),
])  # fmt: skip
def test_mismatches_are_refused_with_the_fix(declared, message, override):
    with pytest.raises(CheckpointError) as info:
        check_model_settings(_meta_model(), declared, "/ckpt")
    text = str(info.value)
    assert text.startswith("/ckpt ") and message in text and override in text


def test_all_mismatches_are_reported_at_once_and_a_matching_model_passes():
    declared = {"norm_eps": 1e-6, "rope_base": 1e6, "rope_scaling": None}
    with pytest.raises(CheckpointError) as info:
        check_model_settings(_meta_model(), declared, "/ckpt")
    assert "rope_theta=1000000.0 where" in str(info.value) and "norm_eps=1e-06 where" in str(info.value)
    check_model_settings(_meta_model(rope_base=1e6, norm_eps=1e-6), declared, "/ckpt")


def test_training_model_is_checked_before_any_weight_is_read():
    from tunekit.run.settings import train_settings

    def never():
        raise AssertionError("the weights were read before the settings were checked")

    with pytest.raises(CheckpointError, match="rope_theta=1000000.0"):
        build_training_model(lambda: llama2(**TINY), never, settings=train_settings(),
                             declared={**PLAIN, "rope_base": 1e6}, source="/ckpt")
