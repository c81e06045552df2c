"""A model family is one folder + one row: throwaway families prove the table does the work.

Nothing here registers a real family; each test adds a row for its duration only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunekit.models import (
    LLAMA2,
    LLAMA_PEFT_TARGETS,
    MODEL_TYPES,
    ConversionError,
    ModelDims,
    Weight,
    get_model_type,
    permute_from_hf,
    register_model_type,
)
from tunekit.models.llama2 import llama2
from tunekit.modules.peft import LORA_TARGETS

REPO = Path(__file__).resolve().parents[2]
DIMS = ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, vocab_size=40, intermediate_dim=48)


@pytest.fixture
def register(monkeypatch):
    """Register a row for one test (MODEL_TYPES is restored afterwards)."""
    monkeypatch.setattr("tunekit.models.MODEL_TYPES", dict(MODEL_TYPES))
    import tunekit.models as models

    def add(mt):
        return models.register_model_type(mt)

    return add


def _tunekit_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = llama2(vocab_size=DIMS.vocab_size, num_layers=DIMS.num_layers, num_heads=DIMS.num_heads,
                   num_kv_heads=DIMS.num_kv_heads, embed_dim=DIMS.embed_dim,
                   intermediate_dim=DIMS.intermediate_dim, max_seq_len=16)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_family_that_renames_one_key_is_one_row_and_round_trips(register):
    toy = register(LLAMA2.derive(name="TOY_LLAMA", display_name="Toy Llama", hf_model_type="toy_llama",
                                 hf_architectures=("ToyLlamaForCausalLM",),
                                 hf_renames={"mlp.w1.weight": "mlp.gate.weight"}))
    assert get_model_type("TOY_LLAMA") is toy
    sd = _tunekit_sd()
    hf = toy.tunekit_to_hf(sd, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    assert "model.layers.1.mlp.gate.weight" in hf and not any("gate_proj" in k for k in hf)
    # Only the name changed: every other key and the q/k permutation are Llama 2's.
    llama_hf = LLAMA2.tunekit_to_hf(sd, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    renamed = {k.replace("mlp.gate_proj.", "mlp.gate."): v for k, v in llama_hf.items()}
    assert renamed.keys() == hf.keys() and all(torch.equal(hf[k], renamed[k]) for k in hf)
    back = toy.hf_to_tunekit(hf, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # Llama 2 does not know the renamed key, and says which.
    with pytest.raises(ConversionError, match=r"not Llama 2 weights: model\.layers\.0\.mlp\.gate\.weight"):
        LLAMA2.hf_to_tunekit(hf, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    # Meta names, shapes and the config follow from the same row.
    assert toy.tunekit_to_meta(sd).keys() == LLAMA2.tunekit_to_meta(sd).keys()
    assert toy.expected_shapes(DIMS) == LLAMA2.expected_shapes(DIMS)
    config = toy.hf_config(DIMS, norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=16, dtype=torch.float32)
    assert config["model_type"] == "toy_llama" and config["architectures"] == ["ToyLlamaForCausalLM"]
    assert toy.hf_config_dims(config) == DIMS
    # PEFT names follow the rename too (module names and rank/alpha patterns).
    assert toy.peft_target_names["w1"] == "gate" and toy.peft_target_names["w2"] == "down_proj"
    peft = toy.peft_config({"targets": ["w1", "q_proj"], "rank_pattern": {"layers.0.mlp.w1": 2}})
    assert peft["target_modules"] == ["gate", "q_proj"] and peft["rank_pattern"] == {"layers.0.mlp.gate": 2}
    adapter = {"layers.0.mlp.w1.lora_a.weight": torch.randn(2, 32), "layers.0.mlp.w1.lora_b.weight": torch.randn(48, 2)}
    out = toy.adapter_to_peft(adapter, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    assert set(out) == {"base_model.model.model.layers.0.mlp.gate.lora_A.weight",
                        "base_model.model.model.layers.0.mlp.gate.lora_B.weight"}
    assert toy.peft_to_adapter(out, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim).keys() == adapter.keys()


def test_checkpointers_find_a_registered_family_through_the_table(register, tmp_path):
    from tunekit.checkpointing import FullModelHFCheckpointer

    toy = register(LLAMA2.derive(name="TOY_LLAMA", display_name="Toy Llama", hf_model_type="toy_llama",
                                 hf_renames={"mlp.w3.weight": "mlp.up.weight"}))
    sd = _tunekit_sd(1)
    model_dir = tmp_path / "toy"
    model_dir.mkdir()
    save_file(toy.tunekit_to_hf(sd, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim),
              str(model_dir / "model.safetensors"))
    (model_dir / "config.json").write_text(json.dumps(
        toy.hf_config(DIMS, norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=16, dtype=torch.float32)))
    loaded = FullModelHFCheckpointer(checkpoint_dir=model_dir, output_dir=tmp_path / "out",
                                     model_type="TOY_LLAMA").load_checkpoint()["model"]
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_extra_tensors_with_a_rope_rule_follow_their_rows(register):
    # Qwen2.5-style q/k/v biases: q/k biases are permuted like the rows of their weights.
    biased = register(LLAMA2.derive(name="TOY_BIASED", display_name="Toy biased", extra_weights=(
        Weight("attn.q_proj.bias", "self_attn.q_proj.bias", None, ("q",), 0, "heads"),
        Weight("attn.k_proj.bias", "self_attn.k_proj.bias", None, ("kv",), 0, "kv_heads"),
        Weight("attn.v_proj.bias", "self_attn.v_proj.bias", None, ("kv",), 0),
    )))
    sd = _tunekit_sd(2)
    hf = LLAMA2.tunekit_to_hf(sd, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    for i in range(DIMS.num_layers):
        for proj in ("q", "k", "v"):
            w = hf[f"model.layers.{i}.self_attn.{proj}_proj.weight"]
            hf[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = w[:, 0].clone()  # bias row r = W[r, 0]
    tk = biased.hf_to_tunekit(hf, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    for proj in ("q", "k", "v"):
        assert torch.equal(tk[f"layers.1.attn.{proj}_proj.bias"], tk[f"layers.1.attn.{proj}_proj.weight"][:, 0])
    assert torch.equal(tk["layers.0.attn.k_proj.bias"],
                       permute_from_hf(hf["model.layers.0.self_attn.k_proj.bias"][:, None], 2)[:, 0])
    back = biased.tunekit_to_hf(tk, DIMS.num_heads, DIMS.num_kv_heads, DIMS.embed_dim)
    assert back.keys() == hf.keys() and all(torch.equal(back[k], hf[k]) for k in hf)
    shapes = biased.expected_shapes(DIMS)
    assert shapes["layers.1.attn.q_proj.bias"] == (32,) and shapes["layers.1.attn.k_proj.bias"] == (16,)
    # Meta has no names for them: refused, naming the keys.
    with pytest.raises(ConversionError, match=r"Toy biased has no Meta name for 6 key\(s\): layers\.0\.attn\.k_proj"
                                              r"\.bias.*cannot be written in Meta format"):
        biased.tunekit_to_meta(tk)


def test_rows_that_contradict_themselves_are_refused():
    with pytest.raises(ValueError, match="hf names used twice"):
        LLAMA2.derive(name="BAD", display_name="Bad", hf_renames={"mlp.w1.weight": "mlp.up_proj.weight"})
    with pytest.raises(ValueError, match="does not have"):
        LLAMA2.derive(name="BAD", display_name="Bad", hf_renames={"mlp.w9.weight": "x"})
    with pytest.raises(ValueError, match="rope='rows'"):
        LLAMA2.derive(name="BAD", display_name="Bad",
                      extra_weights=(Weight("attn.q_norm.scale", "self_attn.q_norm.weight", None, ("hd",), rope="rows"),))
    with pytest.raises(ValueError, match="already registered"):
        register_model_type(LLAMA2.derive(name="LLAMA2", display_name="Another"))


def test_llama2_row_states_nothing_beyond_the_layout_defaults():
    assert LLAMA2.peft_target_names == dict(LLAMA_PEFT_TARGETS)
    assert tuple(LLAMA2.peft_target_names) == LORA_TARGETS
    assert MODEL_TYPES["LLAMA2"] is LLAMA2 and LLAMA2.display_name == "Llama 2"


_PRIVATE_MODEL_IMPORT = re.compile(r"tunekit\.models(?:\.\w+)*\._\w+|from\s+tunekit\.models(?:\.\w+)*\s+import\s+[^\n]*\b_\w+")
# Importers outside models/ that are switching to the public names (their owners' rooms).
_PENDING: set[str] = set()


def test_nothing_outside_models_imports_a_private_model_module():
    offenders = []
    for path in [*(REPO / "src" / "tunekit").rglob("*.py"), *(REPO / "recipes").rglob("*.py")]:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("src/tunekit/models/") or rel in _PENDING:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE_MODEL_IMPORT.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "import from tunekit.models instead:\n" + "\n".join(offenders)
