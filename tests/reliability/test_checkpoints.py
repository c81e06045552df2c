"""Bad checkpoints handed to a recipe: one paragraph naming the file/field and the fix, nothing saved touched.

Each case copies the bundled tiny checkpoint, breaks the copy one way, and runs the real LoRA
recipe on it (``checkpointer.checkpoint_dir=<bad copy>``); every case fails before training.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from _harness import REPO, assert_unchanged, assert_user_error, run_recipe, snapshot

ASSETS = REPO / "src" / "tunekit" / "assets" / "tiny_llama2"


def _copy(tmp_path: Path, kind: str = "hf") -> Path:
    dst = tmp_path / f"ckpt_{kind}"
    shutil.copytree(ASSETS / kind, dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def _lora(tmp_path: Path, ckpt: Path, *extra: str):
    out = tmp_path / "out"
    return run_recipe("lora_finetune", tmp_path / "run", f"checkpointer.checkpoint_dir={ckpt}",
                      f"output_dir={out}", *extra, timeout=180)


class _RunsCode:
    """A pickle that calls os.system when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo PWNED > /dev/null",))


def test_truncated_safetensors(tmp_path):
    ckpt = _copy(tmp_path)
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = snapshot(ckpt)
    text = assert_user_error(_lora(tmp_path, ckpt), str(f), "truncated or corrupt", "download it again")
    assert "weights_only" not in text
    assert_unchanged(before, ckpt)


def test_pickle_carrying_code_is_refused_and_named(tmp_path):
    ckpt = _copy(tmp_path, "meta")
    f = ckpt / "consolidated.00.pth"
    import torch

    torch.save({"tok_embeddings.weight": torch.zeros(2, 2), "payload": _RunsCode()}, f)
    before = snapshot(ckpt)
    text = assert_user_error(_lora(tmp_path, ckpt, "checkpointer=meta"), str(f),
                             "Python objects other than tensors", "posix.system", "will not run",
                             "plain state dict of tensors")
    assert "weights_only=False" not in text and "download it again" not in text
    assert_unchanged(before, ckpt)


def test_missing_config_json(tmp_path):
    ckpt = _copy(tmp_path)
    (ckpt / "config.json").unlink()
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt), str(ckpt / "config.json"), "missing", "tunekit download")
    assert_unchanged(before, ckpt)


def test_config_json_with_wrong_layer_count(tmp_path):
    ckpt = _copy(tmp_path)
    _edit_json(ckpt / "config.json", num_hidden_layers=2)
    before = snapshot(ckpt)
    text = assert_user_error(_lora(tmp_path, ckpt), str(ckpt / "config.json"), "num_hidden_layers=2",
                             "weight files hold 4", "restore the config.json")
    assert "does not match the model" not in text
    assert_unchanged(before, ckpt)


def test_params_json_with_wrong_dim(tmp_path):
    ckpt = _copy(tmp_path, "meta")
    _edit_json(ckpt / "params.json", n_layers=3)
    assert_user_error(_lora(tmp_path, ckpt, "checkpointer=meta"), str(ckpt / "params.json"), "n_layers=3",
                      "weight files hold 4", "restore the params.json")


@pytest.mark.parametrize("changes, needles", [
    ({"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh", "head_dim": 256},
     ["model_type='gemma'", "implements 'llama'", "hidden_act='gelu_pytorch_tanh'", "head_dim=256"]),
    ({"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768},
     ["model_type='mistral'", "sliding_window=4096"]),
], ids=["gemma", "mistral-sliding-window"])  # fmt: skip
def test_config_json_declaring_what_llama_does_not_implement(tmp_path, changes, needles):
    ckpt = _copy(tmp_path)
    _edit_json(ckpt / "config.json", **changes)
    before = snapshot(ckpt)
    assert_user_error(_lora(tmp_path, ckpt), str(ckpt / "config.json"), *needles, "does not implement",
                      "checkpointer.model_type")
    assert_unchanged(before, ckpt)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("epoch_*"))


def test_config_json_not_json(tmp_path):
    ckpt = _copy(tmp_path)
    (ckpt / "config.json").write_text('{"model_type": "llama", ')
    assert_user_error(_lora(tmp_path, ckpt), str(ckpt / "config.json"), "not valid JSON", "tunekit download")


def test_corrupt_file_in_the_runs_own_checkpoint_points_to_the_previous_one(tmp_path):
    from tunekit.checkpointing import FullModelHFCheckpointer

    run = tmp_path / "old_run"
    ckptr = FullModelHFCheckpointer(ASSETS / "hf", run)
    sd = ckptr.load_checkpoint()["model"]
    ckptr.save_checkpoint({"model": sd}, epoch=0)
    ckptr.save_checkpoint({"model": sd}, epoch=1)
    bad = next((run / "epoch_1" / "model").glob("*.safetensors"))
    bad.write_bytes(bad.read_bytes()[:1000])
    before = snapshot(run)
    text = assert_user_error(_lora(tmp_path, run / "epoch_1"), str(bad), "epoch_1",
                             "previous complete checkpoint of this run", str(run / "epoch_0"))
    assert "download" not in text.lower()
    assert_unchanged(before, run)


def test_corrupt_only_checkpoint_of_a_run_says_there_is_none(tmp_path):
    from tunekit.checkpointing import FullModelMetaCheckpointer

    run = tmp_path / "old_run"
    ckptr = FullModelMetaCheckpointer(ASSETS / "meta", run)
    ckptr.save_checkpoint({"model": ckptr.load_checkpoint()["model"]}, epoch=0)
    bad = run / "epoch_0" / "model" / "consolidated.00.pth"
    bad.write_bytes(bad.read_bytes()[:5000])
    before = snapshot(run)
    text = assert_user_error(_lora(tmp_path, run, "checkpointer=meta"), str(bad), "no other complete checkpoint",
                             "base model")
    assert "download it again" not in text
    assert_unchanged(before, run)


def test_weights_holding_nan_are_refused_before_training(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = _copy(tmp_path)
    f = ckpt / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.1.self_attn.q_proj.weight"][0, :3] = float("nan")
    sd["model.norm.weight"][0] = float("inf")
    save_file(sd, f, metadata={"format": "pt"})
    before = snapshot(ckpt)
    text = assert_user_error(_lora(tmp_path, ckpt), str(f), "NaN or inf", "layers.1.attn.q_proj.weight (3 values)",
                             "norm.scale (1 values)", "earlier checkpoint", "download the model again")
    assert "loss is nan" not in text  # the weights are named, not the learning rate
    assert not list((tmp_path / "out").glob("epoch_*"))
    assert_unchanged(before, ckpt)


def test_weights_holding_nan_are_refused_by_generate(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = _copy(tmp_path)
    f = ckpt / "model.safetensors"
    sd = load_file(f)
    sd["model.embed_tokens.weight"][5] = float("nan")
    save_file(sd, f, metadata={"format": "pt"})
    proc = run_recipe("generate", tmp_path / "gen", f"checkpointer.checkpoint_dir={ckpt}", "max_new_tokens=4")
    assert_user_error(proc, str(f), "NaN or inf", "tok_embeddings.weight", "garbage text")


@pytest.mark.parametrize("content, needles", [
    ("zip", ("a zip archive of other files (readme.txt)", "not a PyTorch checkpoint")),
    ("lfs", ("a Git LFS pointer", "git lfs pull")),
    ("html", ("a web page", "error or login page")),
], ids=["zip-of-other-files", "git-lfs-pointer", "html-page"])
def test_weight_file_that_is_something_else(tmp_path, content, needles):
    import zipfile

    ckpt = _copy(tmp_path, "meta")
    f = ckpt / "consolidated.00.pth"
    if content == "zip":
        with zipfile.ZipFile(f, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif content == "lfs":
        f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    else:
        f.write_text("<!DOCTYPE html><html><body>Access to this model is restricted</body></html>\n")
    before = snapshot(ckpt)
    text = assert_user_error(_lora(tmp_path, ckpt, "checkpointer=meta"), str(f), *needles, "real weight file")
    assert "truncated" not in text and "weights_only" not in text
    assert_unchanged(before, ckpt)
