"""Where generation finds weights and adapters, in both checkpoint layouts, and what it refuses.

Directories are built by hand: the current layout (``model/``, ``adapter/``, ``state/``,
``checkpoint.json``) and the older flat one (weights, ``adapter_0.pt`` and ``adapter/`` side by
side). Weight files only need to exist for the lookup; adapters are real tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunekit.checkpointing import CheckpointError
from tunekit.generation._loading import (
    check_adapter_not_merged,
    find_adapter,
    load_adapter,
    merge_adapter,
    resolve_checkpoint,
)
from tunekit.models import get_model_type
from tunekit.models.llama2 import llama2
from tunekit.modules.peft import LoRASpec, get_adapter_state_dict, get_merged_state_dict

LLAMA2 = get_model_type("LLAMA2")
SHAPE = dict(vocab_size=40, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, intermediate_dim=48,
             max_seq_len=16)


def _lora_model(spec: LoRASpec, seed: int = 0):
    torch.manual_seed(seed)
    model = llama2(**SHAPE, lora=spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name or "lora_magnitude" in name:
                p.normal_()
    return model


def _write_model(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")


def _write_adapter(peft_dir: Path, tunekit_file: Path | None, model, spec: LoRASpec, **config) -> str:
    adapter = get_adapter_state_dict(model)
    peft_dir.mkdir(parents=True, exist_ok=True)
    save_file(LLAMA2.adapter_to_peft(adapter, 4, 2, 32), str(peft_dir / "adapter_model.safetensors"))
    cfg = {**LLAMA2.peft_config({"rank": spec.rank, "alpha": spec.alpha, "targets": spec.targets,
                                 "alpha_pattern": spec.alpha_pattern, "use_dora": spec.use_dora}), **config}
    (peft_dir / "adapter_config.json").write_text(json.dumps(cfg))
    if tunekit_file is None:
        return ""
    tunekit_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adapter, tunekit_file)
    return hashlib.sha256(tunekit_file.read_bytes()).hexdigest()


def _new_layout(epoch: Path, model=None, spec=None, *, merged: bool = True) -> str:
    """RUN/epoch_N in the current layout; returns the adapter's sha256 ('' for full fine-tuning)."""
    _write_model(epoch / "model")
    sha = ""
    if model is not None:
        sha = _write_adapter(epoch / "adapter", epoch / "state" / "adapter_0.pt", model, spec)
    (epoch / "state").mkdir(exist_ok=True)
    info = {"format": "hf", "epoch": 0, "step": None, "trained_with": {},
            "merged_adapter": {"sha256": sha, "file": "state/adapter_0.pt"} if sha and merged else None}
    (epoch / "checkpoint.json").write_text(json.dumps(info))
    (epoch / "COMPLETE").write_text("{}")
    return sha


def _old_layout(epoch: Path, model=None, spec=None) -> str:
    _write_model(epoch)
    sha = _write_adapter(epoch / "adapter", epoch / "adapter_0.pt", model, spec) if model is not None else ""
    (epoch / "COMPLETE").write_text("{}")
    return sha


SPEC = LoRASpec(rank=2, alpha=4.0, targets=["q_proj", "k_proj", "w2"])


@pytest.mark.parametrize("given", ["run", "epoch", "model"])
def test_current_layout_is_found_from_the_run_the_epoch_or_its_model_dir(tmp_path, given):
    epoch = tmp_path / "run" / "epoch_0"
    sha = _new_layout(epoch, _lora_model(SPEC), SPEC)
    found = resolve_checkpoint({"run": tmp_path / "run", "epoch": epoch, "model": epoch / "model"}[given])
    assert found.weights_dir == epoch / "model" and found.checkpoint_dir == epoch
    assert found.merged_adapter == {"file": "state/adapter_0.pt", "sha256": sha}


def test_newest_complete_checkpoint_of_a_run_is_used(tmp_path):
    _new_layout(tmp_path / "run" / "epoch_0")
    _new_layout(tmp_path / "run" / "epoch_1")
    _write_model(tmp_path / "run" / "epoch_2" / "model")  # an interrupted save: no COMPLETE
    assert resolve_checkpoint(tmp_path / "run").weights_dir == tmp_path / "run" / "epoch_1" / "model"


def test_flat_layout_lora_checkpoint_counts_as_merged(tmp_path):
    epoch = tmp_path / "run" / "epoch_0"
    _old_layout(epoch, _lora_model(SPEC), SPEC)
    for given in (tmp_path / "run", epoch):
        found = resolve_checkpoint(given)
        assert found.weights_dir == epoch and found.checkpoint_dir == epoch
        assert found.merged_adapter == {"file": "adapter_0.pt", "sha256": None}


def test_full_finetune_and_base_model_dirs_hold_no_merged_adapter(tmp_path):
    _old_layout(tmp_path / "old" / "epoch_0")
    _new_layout(tmp_path / "new" / "epoch_0")
    _write_model(tmp_path / "base")
    assert resolve_checkpoint(tmp_path / "old").merged_adapter is None
    assert resolve_checkpoint(tmp_path / "new").merged_adapter is None
    base = resolve_checkpoint(tmp_path / "base")
    assert base.checkpoint_dir is None and base.merged_adapter is None


def test_checkpoint_json_saying_not_merged_wins_over_an_adapter_file(tmp_path):
    epoch = tmp_path / "epoch_0"
    _new_layout(epoch, _lora_model(SPEC), SPEC, merged=False)
    assert (epoch / "state" / "adapter_0.pt").is_file()
    assert resolve_checkpoint(epoch).merged_adapter is None


@pytest.mark.parametrize("sub, needle", [
    ("state", "training state, not a model: use checkpoint="),
    ("adapter", "is a LoRA adapter directory, not a model: pass it as adapter="),
    ("", "holds no model weights (it contains: adapter/, checkpoint.json, state/)"),
])  # fmt: skip
def test_directories_that_are_not_models_say_what_they_are(tmp_path, sub, needle):
    epoch = tmp_path / "epoch_0"
    _new_layout(epoch, _lora_model(SPEC), SPEC)
    if not sub:  # a checkpoint whose model/ went missing
        for f in (epoch / "model").iterdir():
            f.unlink()
        (epoch / "model").rmdir()
        (epoch / "COMPLETE").unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(epoch / sub if sub else epoch)
    assert needle in str(err.value)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_adapter_is_found_in_either_layout_from_any_entry_point(tmp_path, layout):
    epoch = tmp_path / "run" / "epoch_0"
    (_new_layout if layout == "new" else _old_layout)(epoch, _lora_model(SPEC), SPEC)
    file = epoch / ("state/adapter_0.pt" if layout == "new" else "adapter_0.pt")
    for given in (tmp_path / "run", epoch, epoch / "adapter"):
        src = find_adapter(given)
        assert src.peft_dir == epoch / "adapter" and src.tunekit_file == file and src.checkpoint_dir == epoch


@pytest.mark.parametrize("layout", ["new", "old"])
def test_merged_checkpoint_plus_adapter_is_refused_naming_the_adapter(tmp_path, layout):
    epoch = tmp_path / "run" / "epoch_0"
    sha = (_new_layout if layout == "new" else _old_layout)(epoch, _lora_model(SPEC), SPEC)
    with pytest.raises(CheckpointError) as err:
        check_adapter_not_merged(resolve_checkpoint(epoch), epoch)
    msg = str(err.value)
    assert f"sha256 {sha[:12]}" in msg and "adapter_0.pt" in msg and "that very adapter" in msg
    assert "Drop adapter=" in msg and "point checkpoint= at the base model" in msg
    # Another adapter on merged weights is refused too (it was trained on the base weights).
    other = tmp_path / "other"
    _write_adapter(other, None, _lora_model(SPEC, seed=1), SPEC)
    with pytest.raises(CheckpointError, match="holds merged weights") as err:
        check_adapter_not_merged(resolve_checkpoint(epoch), other)
    assert "that very adapter" not in str(err.value)
    # Base weights take an adapter.
    _write_model(tmp_path / "base")
    check_adapter_not_merged(resolve_checkpoint(tmp_path / "base"), epoch)
    # So do the merged weights, for an adapter trained on them (a second run from this checkpoint).
    weights = resolve_checkpoint(epoch).weights_dir
    for base in (weights, epoch):
        second = tmp_path / f"second_{base.name}"
        _write_adapter(second, None, _lora_model(SPEC, seed=2), SPEC, base_model_name_or_path=str(base))
        check_adapter_not_merged(resolve_checkpoint(epoch), second)
    with pytest.raises(CheckpointError, match="holds merged weights"):
        check_adapter_not_merged(resolve_checkpoint(epoch), tmp_path / "other")  # its base: None


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("source", ["tunekit", "peft"])
def test_loaded_adapter_merges_to_the_models_own_merged_weights(tmp_path, use_dora, source):
    spec = LoRASpec(rank=2, alpha=4.0, targets=["q_proj", "k_proj", "w2", "output"], alpha_pattern={"w2": 8.0},
                    use_dora=use_dora)
    model = _lora_model(spec)
    epoch = tmp_path / "epoch_0"
    _new_layout(epoch, model, spec)
    given = epoch if source == "tunekit" else epoch / "adapter"
    if source == "peft":
        (epoch / "state" / "adapter_0.pt").unlink()
    adapter, scalings = load_adapter(given, model_type="LLAMA2", num_heads=4, num_kv_heads=2, embed_dim=32)
    assert scalings["layers.0.attn.q_proj"] == 2.0 and scalings["layers.1.mlp.w2"] == 4.0
    base = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    merged = merge_adapter(base, adapter, scalings)
    want = get_merged_state_dict(model)
    assert merged.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(merged[k], want[k], rtol=0, atol=0, msg=k)


def test_rslora_scaling_is_alpha_over_sqrt_rank(tmp_path):
    spec = LoRASpec(rank=4, alpha=8.0, targets=["v_proj"])
    _write_adapter(tmp_path / "a", None, _lora_model(spec), spec, use_rslora=True)
    _, scalings = load_adapter(tmp_path / "a", model_type="LLAMA2", num_heads=4, num_kv_heads=2, embed_dim=32)
    assert scalings["layers.0.attn.v_proj"] == pytest.approx(8.0 / math.sqrt(4))


@pytest.mark.parametrize("config, needle", [
    ({"bias": "all"}, "bias='all' (trained LoRA biases are not supported)"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
    ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ({"lora_alpha": "sixteen"}, "lora_alpha='sixteen' (must be a number)"),
])  # fmt: skip
def test_peft_settings_that_are_not_implemented_are_refused(tmp_path, config, needle):
    _write_adapter(tmp_path / "a", None, _lora_model(SPEC), SPEC, **config)
    with pytest.raises(CheckpointError) as err:
        load_adapter(tmp_path / "a", model_type="LLAMA2", num_heads=4, num_kv_heads=2, embed_dim=32)
    assert needle in str(err.value) and "merge_and_unload" in str(err.value)


def test_unreadable_and_foreign_adapters_name_the_file(tmp_path):
    _write_adapter(tmp_path / "a", None, _lora_model(SPEC), SPEC)
    (tmp_path / "a" / "adapter_config.json").write_text('{"r": 8,')
    with pytest.raises(CheckpointError, match=r"adapter_config\.json is not a readable JSON file"):
        load_adapter(tmp_path / "a", model_type="LLAMA2", num_heads=4, num_kv_heads=2, embed_dim=32)
    _write_adapter(tmp_path / "b", None, _lora_model(SPEC), SPEC)
    save_file({"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": torch.zeros(2, 4)},
              str(tmp_path / "b" / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: 1 key\(s\).*not Llama 2 weights"):
        load_adapter(tmp_path / "b", model_type="LLAMA2", num_heads=4, num_kv_heads=2, embed_dim=32)


def test_adapter_for_another_model_is_refused_naming_module_and_shapes():
    spec = LoRASpec(rank=2, alpha=4.0, targets=["q_proj"])
    adapter = get_adapter_state_dict(_lora_model(spec))
    base = {k: v for k, v in _lora_model(spec).state_dict().items() if ".lora_" not in k}
    wide = {k: torch.zeros(2, 64) if k.endswith("lora_a.weight") else v for k, v in adapter.items()}
    with pytest.raises(CheckpointError) as err:
        merge_adapter(base, wide, {"layers.0.attn.q_proj": 2.0, "layers.1.attn.q_proj": 2.0}, source="adapter=X")
    msg = str(err.value)
    assert msg.startswith("adapter=X does not fit this model: 2 module(s) have shapes that do not fit")
    assert "layers.0.attn.q_proj: lora_a (2, 64), lora_b (32, 2) vs weight (32, 32)" in msg
    assert "trained on a different model" in msg
    with pytest.raises(CheckpointError, match=r"1 module\(s\) the model does not have \(layers\.7\.attn\.q_proj\)"):
        merge_adapter(base, {**adapter, "layers.7.attn.q_proj.lora_a.weight": torch.zeros(2, 32)},
                      {"layers.7.attn.q_proj": 2.0})
    with pytest.raises(CheckpointError, match=r"lack their lora_b \(layers\.0\.attn\.q_proj\)"):
        merge_adapter(base, {"layers.0.attn.q_proj.lora_a.weight": adapter["layers.0.attn.q_proj.lora_a.weight"]},
                      {"layers.0.attn.q_proj": 2.0})
