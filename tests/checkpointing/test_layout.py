"""The saved checkpoint layout (model/ adapter/ state/ checkpoint.json COMPLETE), file modes, and
what a checkpoint's JSON declares checked against the model code and the built model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tunekit.checkpointing import (
    CheckpointError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    check_model_matches,
    checkpoint_format,
    convert_checkpoint,
    find_weights_dir,
    model_dir,
    read_checkpoint_info,
    state_dir,
)

TINY = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2"


def _adapter() -> dict[str, torch.Tensor]:
    return {"layers.0.attn.q_proj.lora_a.weight": torch.ones(2, 128),
            "layers.0.attn.q_proj.lora_b.weight": torch.zeros(128, 2)}  # fmt: skip


def _save(cls, kind: str, out: Path, **kwargs) -> Path:
    ckpt = cls(TINY / kind, out)
    state = {"model": ckpt.load_checkpoint()["model"], "adapter": _adapter(), "optimizer": {"lr": 1.0},
             "recipe_state": {"epoch": 0}}  # fmt: skip
    return ckpt.save_checkpoint(state, epoch=0, **kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layout")
    return {"hf": _save(FullModelHFCheckpointer, "hf", root / "run_hf", info={"dataset": "alpaca", "seed": 3}),
            "meta": _save(FullModelMetaCheckpointer, "meta", root / "run_meta")}


def test_checkpoint_directory_layout_and_info(saved):
    for fmt, ckpt in saved.items():
        assert sorted(p.name for p in ckpt.iterdir()) == ["COMPLETE", "checkpoint.json", "model", "state"]
        assert sorted(p.name for p in (ckpt / "state").iterdir()) == ["adapter_0.pt", "recipe_state.pt"]
        info = read_checkpoint_info(ckpt)
        digest = hashlib.sha256((ckpt / "state" / "adapter_0.pt").read_bytes()).hexdigest()
        assert info["format"] == fmt and info["epoch"] == 0 and info["step"] is None
        assert info["merged_adapter"] == {"sha256": digest, "file": "state/adapter_0.pt"}
        assert model_dir(ckpt) == ckpt / "model" and state_dir(ckpt) == ckpt / "state"
    assert read_checkpoint_info(saved["hf"])["trained_with"] == {"dataset": "alpaca", "seed": 3}
    assert read_checkpoint_info(saved["meta"])["trained_with"] == {}


def test_without_adapter_merged_adapter_is_null_and_no_adapter_dirs(tmp_path):
    ckpt = FullModelHFCheckpointer(TINY / "hf", tmp_path / "run")
    out = ckpt.save_checkpoint({"model": ckpt.load_checkpoint()["model"]}, epoch=1, step=7)
    assert out.name == "step_7" and sorted(p.name for p in out.iterdir()) == ["COMPLETE", "checkpoint.json", "model"]
    info = json.loads((out / "checkpoint.json").read_text())
    assert info == {"format": "hf", "epoch": 1, "step": 7, "merged_adapter": None, "trained_with": {}}


def test_meta_model_dir_is_what_meta_ships_and_nothing_else(saved):
    mdir = saved["meta"] / "model"
    assert sorted(p.name for p in mdir.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    # llama.cpp's Meta converter globs *.pth / consolidated.*: nothing else may match
    assert [p.name for p in mdir.glob("*.pt*")] == ["consolidated.00.pth"]
    assert not list(saved["meta"].glob("*.pth")) and not list(saved["meta"].glob("*.pt"))
    assert json.loads((mdir / "params.json").read_text()) == json.loads((TINY / "meta" / "params.json").read_text())


def test_hf_model_dir_loads_in_transformers_and_holds_no_training_state(saved):
    from transformers import AutoModelForCausalLM

    mdir = saved["hf"] / "model"
    names = sorted(p.name for p in mdir.iterdir())
    assert names == ["config.json", "generation_config.json", "model-00001-of-00001.safetensors",
                     "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json"]  # fmt: skip
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin")) or "state" in n or "adapter" in n]
    hf = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation="eager").eval()
    ref = AutoModelForCausalLM.from_pretrained(TINY / "hf", dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ref(tokens).logits)


@pytest.mark.parametrize("which", ["run", "epoch", "model"])
def test_readers_take_a_run_an_epoch_or_a_model_dir(saved, tmp_path, which):
    for fmt, cls in (("hf", FullModelHFCheckpointer), ("meta", FullModelMetaCheckpointer)):
        ckpt = saved[fmt]
        path = {"run": ckpt.parent, "epoch": ckpt, "model": ckpt / "model"}[which]
        assert find_weights_dir(path) == ckpt / "model"
        if which != "run":
            assert checkpoint_format(path) == fmt
        reader = cls(path, tmp_path / "out", resume_from_checkpoint=True, adapter_checkpoint="adapter_0.pt",
                     recipe_checkpoint="recipe_state.pt")  # fmt: skip
        assert reader.checkpoint_dir == ckpt / "model"
        state = reader.load_checkpoint()
        assert state["optimizer"] == {"lr": 1.0} and set(state["adapter"]) == set(_adapter())
        # an epoch directory as the state file's location works as well
        reader = cls(TINY / fmt, tmp_path / "out", resume_from_checkpoint=True, adapter_checkpoint=str(ckpt),
                     recipe_checkpoint=str(ckpt / "recipe_state.pt"))  # fmt: skip
        assert reader.load_checkpoint()["recipe_state"] == {"epoch": 0}


def test_readers_still_take_the_old_flat_layout(saved, tmp_path):
    old = tmp_path / "old_run" / "epoch_0"
    shutil.copytree(saved["hf"] / "model", old)
    for f in ("COMPLETE", "state/adapter_0.pt", "state/recipe_state.pt"):
        shutil.copy(saved["hf"] / f, old / Path(f).name)
    assert find_weights_dir(tmp_path / "old_run") == old and checkpoint_format(old) == "hf"
    reader = FullModelHFCheckpointer(old, tmp_path / "out", resume_from_checkpoint=True,
                                     adapter_checkpoint="adapter_0.pt", recipe_checkpoint="recipe_state.pt")
    assert reader.load_checkpoint()["optimizer"] == {"lr": 1.0}
    out = convert_checkpoint(tmp_path / "old_run", tmp_path / "as_meta", to="meta")
    assert sorted(p.name for p in out.iterdir()) == [".tunekit-convert.json", "consolidated.00.pth", "params.json",
                                                     "tokenizer.model"]  # fmt: skip


# --- modes ------------------------------------------------------------------------------------
def _modes(root: Path) -> tuple[set[int], set[int]]:
    dirs, files = {root.stat().st_mode & 0o777}, set()
    for p in root.rglob("*"):
        (dirs if p.is_dir() else files).add(p.stat().st_mode & 0o777)
    return dirs, files


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_saved_files_honour_the_umask(tmp_path, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        ckpt = _save(FullModelHFCheckpointer, "hf", tmp_path / "run")
        peft = FullModelHFCheckpointer(TINY / "hf", tmp_path / "run2")
        sd = peft.load_checkpoint()["model"]
        with_peft = peft.save_checkpoint({"model": sd, "adapter": _adapter(), "adapter_config": {
            "rank": 2, "alpha": 4.0, "targets": ["q_proj"]}}, epoch=0)
        meta = _save(FullModelMetaCheckpointer, "meta", tmp_path / "run3")
        converted = convert_checkpoint(TINY / "meta", tmp_path / "conv", to="hf")
    finally:
        os.umask(old)
    assert (with_peft / "adapter" / "adapter_model.safetensors").is_file()
    for root in (tmp_path / "run", tmp_path / "run2", meta.parent, converted):
        assert _modes(root) == ({dir_mode}, {file_mode}), root
    assert ckpt.stat().st_mode & 0o777 == dir_mode


# --- what the JSON declares -------------------------------------------------------------------
def _hf_copy(tmp_path: Path, **changes) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(TINY / "hf", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("changes, words", [
    ({"model_type": "gemma"}, "model_type='gemma' (checkpointer.model_type=LLAMA2 implements 'llama')"),
    ({"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768}, "sliding_window=4096"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' (supported: 'silu')"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling type 'llama3'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling type 'dynamic'"),
    ({"head_dim": 64}, "head_dim=64 (supported: hidden_size / num_attention_heads = 128/4 = 32)"),
    ({"num_local_experts": 8}, "num_local_experts=8 (mixture of experts"),
    ({"num_experts": 64, "moe_intermediate_size": 128}, "num_experts=64"),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
])  # fmt: skip
def test_config_fields_the_model_code_does_not_implement_are_refused(tmp_path, changes, words):
    d = _hf_copy(tmp_path, **changes)
    with pytest.raises(CheckpointError) as e:
        FullModelHFCheckpointer(d, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(f"{d / 'config.json'} declares ") and words in msg
    assert "does not implement" in msg and "checkpointer.model_type" in msg


@pytest.mark.parametrize("changes", [
    {"sliding_window": None}, {"sliding_window": 4096, "use_sliding_window": False},
    {"sliding_window": 512, "max_position_embeddings": 512}, {"head_dim": 32}, {"rope_scaling": {"rope_type": "default"}},
    {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
])  # fmt: skip
def test_config_fields_that_change_nothing_are_accepted(tmp_path, changes):
    FullModelHFCheckpointer(_hf_copy(tmp_path, **changes), tmp_path / "out")


@pytest.mark.parametrize("changes, words", [
    ({"use_scaled_rope": True}, "use_scaled_rope=True"),
    ({"moe_args": {"num_experts": 16}}, "moe_args="),
])
def test_params_fields_the_model_code_does_not_implement_are_refused(tmp_path, changes, words):
    d = tmp_path / "meta"
    shutil.copytree(TINY / "meta", d)
    params = json.loads((d / "params.json").read_text())
    (d / "params.json").write_text(json.dumps({**params, **changes}))
    with pytest.raises(CheckpointError, match="does not implement") as e:
        FullModelMetaCheckpointer(d, tmp_path / "out")
    assert str(e.value).startswith(f"{d / 'params.json'} declares ") and words in str(e.value)


def test_tied_embeddings_declared_but_not_in_the_files(tmp_path):
    d = _hf_copy(tmp_path, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match="declares tie_word_embeddings=true, but .* holds an lm_head.weight that differs"):
        FullModelHFCheckpointer(d, tmp_path / "out").load_checkpoint()


def _meta_model(**kwargs):
    from tunekit.models.llama2 import llama2

    args = dict(vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=352,
                max_seq_len=64)
    with torch.device("meta"):
        return llama2(**{**args, **kwargs})


def test_check_model_matches_accepts_the_matching_model():
    for kind, cls in (("hf", FullModelHFCheckpointer), ("meta", FullModelMetaCheckpointer)):
        settings = cls(TINY / kind, "/tmp/unused-out").model_settings
        check_model_matches(_meta_model(), settings, str(TINY / kind))


@pytest.mark.parametrize("kind, model_kwargs, words", [
    ("hf", dict(num_layers=2), ["num_hidden_layers=4 where the chosen model builds layers=2", "model.num_layers=4"]),
    ("meta", dict(num_layers=2), ["n_layers=4 where the chosen model builds layers=2", "model.num_layers=4"]),
    ("hf", dict(num_kv_heads=4), ["num_key_value_heads=2 where the chosen model builds key/value heads=4",
                                  "model.num_kv_heads=2"]),
    ("meta", dict(embed_dim=256, num_heads=8, num_kv_heads=4),
     ["dim=128 where the chosen model builds embedding width=256", "n_heads=4 where", "model.embed_dim=128"]),
    ("hf", dict(intermediate_dim=400), ["intermediate_size=352 where the chosen model builds MLP width=400"]),
    ("hf", dict(vocab_size=32000), ["vocab_size=512 where the chosen model builds vocabulary entries=32000"]),
    ("hf", dict(rope_base=500000.0), ["rope_theta=10000.0 where the chosen model builds RoPE base=500000.0",
                                      "model.rope_base=10000.0"]),
    ("meta", dict(norm_eps=1e-6), ["norm_eps=1e-05 where the chosen model builds RMSNorm epsilon=1e-06"]),
])  # fmt: skip
def test_check_model_matches_names_the_file_field_values_and_fix(kind, model_kwargs, words):
    cls = FullModelHFCheckpointer if kind == "hf" else FullModelMetaCheckpointer
    settings = cls(TINY / kind, "/tmp/unused-out").model_settings
    json_file = TINY / kind / ("config.json" if kind == "hf" else "params.json")
    with pytest.raises(CheckpointError) as e:
        check_model_matches(_meta_model(**model_kwargs), settings, "ignored")
    msg = str(e.value)
    assert msg.startswith(f"{json_file} declares ")
    for w in words:
        assert w in msg, (w, msg)
    assert "Pick the model= option built for this checkpoint" in msg


def test_check_model_matches_declared_scaling_and_tying(tmp_path):
    settings = FullModelHFCheckpointer(TINY / "hf", tmp_path / "o").model_settings
    scaled = {**settings, "declared": {**settings["declared"], "rope_scaling": ("rope_scaling", "llama3"),
                                       "tie_word_embeddings": ("tie_word_embeddings", True)}}
    with pytest.raises(CheckpointError) as e:
        check_model_matches(_meta_model(), scaled, "x")
    assert "rope_scaling='llama3' where the chosen model builds RoPE scaling=null" in str(e.value)
    assert "tie_word_embeddings=true where the chosen model builds tied input/output embeddings=false" in str(e.value)
    check_model_matches(_meta_model(), None, "x")  # nothing declared: nothing checked
    # an older settings dict (rope/eps only) is still checked as far as it goes
    with pytest.raises(CheckpointError, match="norm_eps=0.1"):
        check_model_matches(_meta_model(), {"norm_eps": 0.1, "rope_base": 10000.0, "rope_scaling": None}, "src")


# --- damage inside a run's own checkpoints ----------------------------------------------------
def test_damage_in_a_runs_own_checkpoint_names_the_previous_complete_one(tmp_path):
    run = tmp_path / "run"
    ckpt = FullModelHFCheckpointer(TINY / "hf", run)
    sd = ckpt.load_checkpoint()["model"]
    for epoch in (0, 1, 2):
        ckpt.save_checkpoint({"model": sd}, epoch=epoch)
    (run / "epoch_2" / "model" / "config.json").unlink()
    with pytest.raises(CheckpointError) as e:
        FullModelHFCheckpointer(run / "epoch_2", tmp_path / "o")
    msg = str(e.value)
    assert "is missing: an HF checkpoint directory needs it" in msg and "tunekit download" not in msg
    assert f"The previous complete checkpoint of this run is {run / 'epoch_1'}" in msg
    bad = run / "epoch_1" / "model" / "model-00001-of-00001.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        FullModelHFCheckpointer(run / "epoch_1", tmp_path / "o").load_checkpoint()
    msg = str(e.value)
    assert f"Could not read {bad}: this file of the run checkpoint epoch_1 that tunekit saved in {run}" in msg
    assert f"previous complete checkpoint of this run is {run / 'epoch_0'}" in msg and "download" not in msg


def test_pickle_classification_never_runs_the_file(tmp_path):
    import pickle

    from tunekit.checkpointing._io import load_pickle, pickle_globals

    marker = tmp_path / "ran"

    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2), "x": Touch()}, legacy, _use_new_zipfile_serialization=False)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"x": Touch()}, f)
    for f in (legacy, tmp_path / "plain.pkl"):
        names = pickle_globals(f)  # pathlib.Path.touch, or getattr(pathlib.Path, "touch") in torch's pickles
        assert any(n.startswith("pathlib.Path") for n in names), names
        with pytest.raises(CheckpointError, match="holds Python objects other than tensors"):
            load_pickle(f)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(2)}, good)
    assert load_pickle(good)["w"].shape == (2,)
    good.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pickle(good)
