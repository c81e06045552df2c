"""Bad input to `python -m recipes.generate`: one paragraph naming the setting/file and the fix.

One real LoRA run (the recipe's own output: ``model/``, ``adapter/``, ``state/``,
``checkpoint.json``) is made per module; the older flat layout is built from a copy of it by
moving files. Cases that read saved files check that every byte saved is still there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from _harness import FAST, REPO, assert_ok, assert_unchanged, assert_user_error, run_recipe, snapshot

BASE = REPO / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"


def _flat_layout(epoch: Path, flat: Path) -> None:
    """A copy of a current-layout epoch dir in the older flat layout (everything side by side)."""
    shutil.copytree(epoch, flat)
    for sub in ("model", "state"):
        for f in (flat / sub).iterdir():
            f.rename(flat / f.name)
        (flat / sub).rmdir()
    (flat / "checkpoint.json").unlink()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"current": RUN (as the recipe saved it), "flat": RUN (older flat layout), "sha": adapter sha256}``."""
    root = tmp_path_factory.mktemp("gen_runs")
    proc = run_recipe("lora_finetune", root / "current", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epoch = root / "current" / "epoch_0"
    sha = json.loads((epoch / "checkpoint.json").read_text())["merged_adapter"]["sha256"]
    assert sha == hashlib.sha256((epoch / "state" / "adapter_0.pt").read_bytes()).hexdigest()
    _flat_layout(epoch, root / "flat" / "epoch_0")
    return {"flat": root / "flat", "current": root / "current", "sha": sha, "root": root}


def _generate(tmp_path: Path, *overrides: str):
    return run_recipe("generate", tmp_path / "gen", "max_new_tokens=8", *overrides, timeout=180)


# ---- an adapter applied onto weights that already contain it --------------------------------

def test_flat_lora_epoch_plus_its_adapter_is_refused(tmp_path, runs):
    epoch = runs["flat"] / "epoch_0"
    before = snapshot(runs["flat"])
    proc = _generate(tmp_path, f"checkpoint={epoch}", f"adapter={epoch}")
    assert_user_error(proc, "holds merged weights", f"{epoch}/adapter_0.pt", "already in",
                      "applied twice", "Drop adapter=", "point checkpoint= at the base model")
    assert_unchanged(before, runs["flat"])


@pytest.mark.parametrize("given", ["run", "epoch", "model"])
def test_current_layout_lora_checkpoint_plus_adapter_is_refused(tmp_path, runs, given):
    epoch = runs["current"] / "epoch_0"
    checkpoint = {"run": runs["current"], "epoch": epoch, "model": epoch / "model"}[given]
    before = snapshot(runs["current"])
    proc = _generate(tmp_path, f"checkpoint={checkpoint}", f"adapter={epoch}")
    assert_user_error(proc, f"checkpoint={epoch} holds merged weights", "state/adapter_0.pt",
                      f"sha256 {runs['sha'][:12]}", "applied twice", "Drop adapter=",
                      "point checkpoint= at the base model")
    assert_unchanged(before, runs["current"])


# ---- what stops generation, and prompts that do not fit ---------------------------------------

def test_prompt_longer_than_the_context_window(tmp_path):
    proc = _generate(tmp_path, "prompt=" + " ".join(["word"] * 2000))
    assert_user_error(proc, "The prompt is 6001 tokens long", "2000 words", "context window is 512 tokens",
                      "max_seq_len", "Shorten `prompt`", "`max_new_tokens`=8")


def test_context_window_that_ends_generation_is_reported(tmp_path):
    # 490 prompt tokens + max_new_tokens=64 > 512: the window stops it after 22 tokens (greedy: no EOS
    # before that on the bundled model), and the report says so instead of "max_new_tokens".
    proc = run_recipe("generate", tmp_path / "gen", "prompt=" + " ".join(["word"] * 163), "temperature=0",
                      "max_new_tokens=64", timeout=180)
    text = assert_ok(proc, "stopped at the model's context window: max_seq_len=512 = 490-token prompt + 22 new "
                           "tokens, before max_new_tokens=64 was reached")
    assert "reached max_new_tokens" not in text


# ---- prompt formats: Alpaca input, chat messages ----------------------------------------------

@pytest.mark.parametrize("overrides, needles", [
    (["input=some numbers"], ["`input`='some numbers' is the input of an Alpaca instruction", "set template=alpaca"]),
    (["template=alpaca", "messages=[{role: user, content: Hi}]"],
     ["`messages` and `template`='alpaca' both format the prompt", "keep one"]),
], ids=["input-without-alpaca", "messages-with-alpaca"])  # fmt: skip
def test_prompt_settings_that_do_not_go_together(tmp_path, overrides, needles):
    assert_user_error(_generate(tmp_path, *overrides), *needles)


def test_messages_file_that_ends_with_the_assistant(tmp_path):
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]))
    before = snapshot(tmp_path)
    assert_user_error(_generate(tmp_path, f"messages={conv}"), f"messages='{conv}'",
                      "ends with a 'assistant' message", "end it with one", "messages='[{role: user, content: Hi}]'")
    assert_unchanged(before, tmp_path, allow_new=True)


# ---- sampling settings --------------------------------------------------------------------------

@pytest.mark.parametrize("override, needles", [
    ("temperature=inf", ("`temperature`=inf", "finite number >= 0", "0 = greedy")),
    ("temperature=-1", ("`temperature`=-1.0", "must be >= 0.0")),
    ("top_k=0", ("`top_k`=0", "must be >= 1")),
    ("top_p=1.5", ("`top_p`=1.5", "must be in [0.0, 1.0]")),
    ("top_p=0", ("`top_p`=0", "keeps no tokens", "(0, 1] or null")),
    ("max_new_tokens=0", ("`max_new_tokens`=0", "must be >= 1")),
])  # fmt: skip
def test_bad_sampling_settings(tmp_path, override, needles):
    assert_user_error(_generate(tmp_path, override), *needles)


# ---- directories that are not what the setting needs --------------------------------------------

def test_checkpoint_dir_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("not weights")
    before = snapshot(notes)
    proc = _generate(tmp_path, f"checkpoint={notes}")
    assert_user_error(proc, f"checkpoint='{notes}' holds no model weights", "README.txt", "config.json",
                      "params.json", "run directory")
    assert_unchanged(before, notes)


def test_adapter_dir_given_as_checkpoint(tmp_path, runs):
    adapter = runs["current"] / "epoch_0" / "adapter"
    proc = _generate(tmp_path, f"checkpoint={adapter}")
    assert_user_error(proc, "is a LoRA adapter directory, not a model", f"pass it as adapter={adapter}")


def test_model_dir_given_as_adapter(tmp_path):
    proc = _generate(tmp_path, f"adapter={BASE}")
    assert_user_error(proc, "is not a LoRA adapter", "holds model weights but no LoRA adapter",
                      "give it as checkpoint= instead")


# ---- adapters that cannot be applied ------------------------------------------------------------

def _adapter_copy(runs, tmp_path: Path) -> Path:
    """A PEFT + tunekit adapter directory copied out of the LoRA run (the run itself is never edited)."""
    dst = tmp_path / "adapter_copy"
    shutil.copytree(runs["flat"] / "epoch_0" / "adapter", dst)
    shutil.copy2(runs["flat"] / "epoch_0" / "adapter_0.pt", dst / "adapter_0.pt")
    return dst


def test_adapter_with_shapes_of_another_model(tmp_path, runs):
    dst = _adapter_copy(runs, tmp_path)
    adapter = torch.load(dst / "adapter_0.pt", weights_only=True)
    key = "layers.2.attn.q_proj.lora_a.weight"
    adapter[key] = torch.zeros(adapter[key].shape[0], 256)  # trained on a model twice as wide
    torch.save(adapter, dst / "adapter_0.pt")
    before, saved = snapshot(dst), snapshot(runs["flat"])
    proc = _generate(tmp_path, f"adapter={dst}")
    assert_user_error(proc, f"adapter={dst} does not fit this model", "layers.2.attn.q_proj: lora_a (8, 256)",
                      "vs weight (128, 128)", "trained on a different model", "base_model_name_or_path")
    assert_unchanged(before, dst)
    assert_unchanged(saved, runs["flat"])


def test_adapter_with_a_corrupt_config(tmp_path, runs):
    dst = _adapter_copy(runs, tmp_path)
    (dst / "adapter_config.json").write_text('{"r": 8, "lora_alpha": ')
    before = snapshot(dst)
    proc = _generate(tmp_path, f"adapter={dst}")
    assert_user_error(proc, f"{dst}/adapter_config.json is not a readable JSON file", "save or download it again")
    assert_unchanged(before, dst)


def test_adapter_with_settings_that_are_not_implemented(tmp_path, runs):
    dst = _adapter_copy(runs, tmp_path)
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, "bias": "lora_only"}))
    proc = _generate(tmp_path, f"adapter={dst}")
    assert_user_error(proc, "adapter_config.json: this adapter cannot be applied",
                      "bias='lora_only' (trained LoRA biases are not supported)", "merge_and_unload")


def test_truncated_adapter_file(tmp_path, runs):
    dst = _adapter_copy(runs, tmp_path)
    data = (dst / "adapter_0.pt").read_bytes()
    (dst / "adapter_0.pt").write_bytes(data[: len(data) // 3])  # an interrupted copy
    before = snapshot(dst)
    proc = _generate(tmp_path, f"adapter={dst}")
    assert_user_error(proc, f"{dst}/adapter_0.pt", "truncated or corrupt")
    assert_unchanged(before, dst)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu(tmp_path):
    assert_user_error(_generate(tmp_path, "device=cuda"), "`device`='cuda'", "without CUDA", "device=cpu")


@pytest.mark.parametrize("key, what", [("checkpoint", "a run or checkpoint directory"),
                                       ("adapter", "an adapter directory")])
def test_a_file_given_where_a_directory_goes(tmp_path, runs, key, what):
    # it used to say only "not an existing directory" of a file that exists
    f = runs["current"] / "epoch_0" / ("model" if key == "checkpoint" else "adapter")
    f = next(p for p in f.iterdir() if p.suffix == ".safetensors")
    proc = run_recipe("generate", tmp_path / "gen", f"{key}={f}", "max_new_tokens=2")
    assert_user_error(proc, f"`{key}`='{f}'", "is a file, not a directory", f"give {what}", f"({f.parent})")
