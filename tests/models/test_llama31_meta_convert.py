"""Llama 3.1's RoPE scaling through Meta's format: HF (rope_scaling llama3) -> Meta (params.json
``use_scaled_rope``) -> HF, bit-exact, with ``tunekit convert`` both ways."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _family_ref import FAMILIES, random_hf
from safetensors.torch import load_file

from tunekit.cli.convert import main as convert_main

_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _hf_weights(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("factor", [8.0, 32.0], ids=["llama3.1", "llama3.2"])
def test_hf_meta_hf_round_trip_keeps_the_scaling_and_every_bit(tmp_path, factor, capsys):
    from transformers import AutoModelForCausalLM

    fam = FAMILIES["llama3"]
    fam = replace(fam, hf={**fam.hf, "rope_parameters": {**_ROPE, "factor": factor}, "tie_word_embeddings": False})
    hf = random_hf(fam)
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    assert convert_main([str(src), str(tmp_path / "meta"), "--to", "meta"]) == 0
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_theta"] == 500_000.0
    assert params.get("rope_scaling_factor") == (None if factor == 8.0 else factor)  # Meta's default is 8
    assert "rope_high_freq_factor" not in params

    # params.json does not record the context length: the source's 256 is given back (default: 131072)
    assert convert_main([str(tmp_path / "meta"), str(tmp_path / "back"), "--to", "hf",
                         "--max-position-embeddings", "256"]) == 0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["rope_scaling"] == {k: v for k, v in {**_ROPE, "factor": factor}.items() if k != "rope_theta"}
    assert config["max_position_embeddings"] == 256 and config["model_type"] == "llama"
    before, after = _hf_weights(src), _hf_weights(tmp_path / "back")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    tokens = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens).logits, hf(tokens).logits, atol=1e-5, rtol=0)


def test_hf_to_meta_refuses_a_scaling_meta_cannot_express(tmp_path, capsys):
    fam = FAMILIES["llama3"]  # original_max_position_embeddings=32: Meta's code fixes 8192
    random_hf(fam).save_pretrained(tmp_path / "hf")
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "meta"), "--to", "meta"]) == 1
    err = capsys.readouterr().err
    assert "original_max_position_embeddings=32" in err and "can only stay in HF format" in err
    assert "Traceback" not in err and not (tmp_path / "meta").exists()
