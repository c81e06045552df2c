"""``model=auto``: the family and sizes read from a checkpoint's config.json / params.json.

In process, on tiny checkpoints built with transformers (no recipe run here: the real entry point
is exercised once in tests/checkpointing/test_family_outputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _family_ref import FAMILIES, make_pair, random_hf

from tunekit.checkpointing import (
    CheckpointError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    check_model_matches,
    model_from_checkpoint,
    model_spec,
    resolve_model_type,
)
from tunekit.models import get_model_type


def _hf_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    random_hf(FAMILIES[name]).save_pretrained(d)
    return d


def _edit(d: Path, **fields) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in fields.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("name", ["llama3", "mistral", "qwen2", "qwen3"])
def test_auto_builds_each_family_with_transformers_logits(tmp_path, name):
    fam = FAMILIES[name]
    tk, hf = make_pair(fam)
    d = tmp_path / name
    hf.save_pretrained(d)
    mt, args = model_spec(d)
    assert mt.name == fam.model_type
    assert {k: args[k] for k in fam.tk if k != "max_seq_len"} == {k: v for k, v in fam.tk.items() if k != "max_seq_len"}
    ckpt = FullModelHFCheckpointer(d, tmp_path / "out", model_type="auto")
    assert ckpt.model_type == fam.model_type
    with torch.device("meta"):
        model = model_from_checkpoint(d)
    check_model_matches(model, ckpt.model_settings, str(d))  # every declared quantity agrees
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
    model.init_buffers()
    tokens = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_auto_tells_llama2_from_llama3_by_the_declared_rope(tmp_path):
    d = _hf_dir(tmp_path, "llama3")
    assert resolve_model_type("auto", d).name == "LLAMA3"  # llama3 scaling
    _edit(d, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rope_scaling=None,
          tie_word_embeddings=False)
    assert resolve_model_type("auto", d).name == "LLAMA2"
    _edit(d, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert resolve_model_type("auto", d).name == "LLAMA3"  # Llama 3.0: no scaling, base 500000
    mt, args = model_spec(d)
    assert args["rope_scaling_factor"] is None and args["rope_base"] == 500000.0


@pytest.mark.parametrize("fields, needle", [
    ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "final_logit_softcapping": 30.0,
      "hidden_activation": "gelu_pytorch_tanh"},
     r"model_type='gemma2', which no tunekit model family implements \(supported model_type values: 'llama'.*"
     r"also hidden_activation='gelu_pytorch_tanh' \(supported: 'silu'\); final_logit_softcapping=30.0"),
    ({"final_logit_softcapping": 30.0}, r"final_logit_softcapping=30.0 \(supported: null\)"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None},
     r"rope_scaling type 'yarn'"),
    ({"use_sliding_window": True, "sliding_window": 128}, r"sliding_window=128 \(supported: null"),
    ({"num_experts": 8, "num_experts_per_tok": 2}, r"num_experts=8 \(mixture of experts"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' \(supported: 'silu'\)"),
    ({"model_type": None}, r"has no model_type field"),
])
def test_auto_refuses_what_no_family_implements_naming_the_field(tmp_path, fields, needle):
    d = _edit(_hf_dir(tmp_path, "qwen2"), **fields)
    with pytest.raises(CheckpointError, match=needle) as err:
        model_spec(d)
    assert str(d / "config.json") in str(err.value)
    with pytest.raises(CheckpointError, match=needle):
        FullModelHFCheckpointer(d, tmp_path / "out", model_type="auto")


def test_auto_refuses_a_directory_without_config_and_names_the_setting(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds neither config.json \(HF\) nor params.json \(Meta\)"):
        model_spec(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"checkpointer.checkpoint_dir='.*nope' is not a directory"):
        FullModelHFCheckpointer(tmp_path / "nope", tmp_path / "out", model_type="auto")


def test_auto_names_the_checkpoint_when_its_family_refuses_the_lora_targets(tmp_path):
    # a tied Qwen2.5 checkpoint with 'output' adapted: one paragraph naming the file and the fix
    from tunekit.modules.peft import LoRASpec

    d = _hf_dir(tmp_path, "qwen2")
    with torch.device("meta"), pytest.raises(CheckpointError) as err:
        model_from_checkpoint(d, lora=LoRASpec(targets=("q_proj", "output")))
    text = str(err.value)
    assert "\n" not in text and str(d / "config.json") in text and "tie_word_embeddings=true" in text
    assert "Remove 'output' from lora.targets" in text


def test_auto_reads_a_meta_llama3_checkpoint_with_scaled_rope(tmp_path):
    fam = FAMILIES["llama3"]
    mt = get_model_type("LLAMA3")
    tk, _ = make_pair(fam)
    d = tmp_path / "meta"
    d.mkdir()
    torch.save(mt.tunekit_to_meta(tk.state_dict()), d / "consolidated.00.pth")
    from tunekit.models import ModelDims

    dims = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, vocab_size=512, intermediate_dim=160)
    params = mt.meta_params(dims, norm_eps=1e-5, rope_theta=500_000.0, rope_scaling={
        "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 32.0
    (d / "params.json").write_text(json.dumps(params))
    got, args = model_spec(d)
    assert got.name == "LLAMA3"
    assert (args["rope_scaling_factor"], args["rope_original_max_position_embeddings"]) == (32.0, 8192)
    ckpt = FullModelMetaCheckpointer(d, tmp_path / "out", model_type="auto")
    with torch.device("meta"):
        model = model_from_checkpoint(d)
    check_model_matches(model, ckpt.model_settings, str(d))
    # Meta's files store the output of a tied model as its own tensor: the auto model is untied
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
