"""Bad input to ``tunekit export SRC DEST.gguf``: one paragraph, exit 1, nothing written or replaced."""

from __future__ import annotations

import json
import shutil

import pytest
from _harness import REPO, assert_unchanged, assert_user_error, run_tunekit, snapshot

TINY_HF = REPO / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"


@pytest.mark.parametrize("argv,needles", [
    (["--dtype", "q4_k"], ["--dtype 'q4_k'", "f32, f16, bf16, q8_0"]),
    (["--dtype", "fp16"], ["--dtype 'fp16'", "f16"]),
], ids=["unknown-quant", "convert-spelling"])
def test_unknown_dtype_names_the_choices(tmp_path, argv, needles):
    proc = run_tunekit("export", str(TINY_HF), str(tmp_path / "m.gguf"), *argv)
    assert_user_error(proc, *needles)
    assert not any(tmp_path.iterdir())


def test_missing_source_is_named_with_what_to_give(tmp_path):
    proc = run_tunekit("export", str(tmp_path / "no_such_run"), str(tmp_path / "m.gguf"))
    assert_user_error(proc, "no_such_run", "does not exist", "run directory")
    assert not any(tmp_path.iterdir())


def test_existing_dest_is_never_overwritten_without_force(tmp_path):
    dest = tmp_path / "served.gguf"
    dest.write_bytes(b"the user's own file")
    before = snapshot(tmp_path)
    proc = run_tunekit("export", str(TINY_HF), str(dest))
    assert_user_error(proc, "served.gguf", "already exists", "--force")
    assert_unchanged(before, tmp_path)


def test_dest_without_gguf_suffix_is_refused(tmp_path):
    proc = run_tunekit("export", str(TINY_HF), str(tmp_path / "model.bin"))
    assert_user_error(proc, "model.bin", "does not end in .gguf", "model.gguf")
    assert not any(tmp_path.iterdir())


def test_unsupported_family_names_config_and_alternative(tmp_path):
    src = tmp_path / "gemma"
    shutil.copytree(TINY_HF, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gemma",
                                                 "architectures": ["GemmaForCausalLM"]}))
    before = snapshot(tmp_path)
    proc = run_tunekit("export", str(src), str(tmp_path / "g.gguf"))
    assert_user_error(proc, "config.json", "model_type='gemma'", "supported: llama, mistral, qwen2, qwen3",
                      "convert_hf_to_gguf.py")
    assert_unchanged(before, tmp_path)


def test_adapter_directory_as_source_says_how_to_export_it(tmp_path):
    adapter = tmp_path / "run" / "epoch_0" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    before = snapshot(tmp_path)
    proc = run_tunekit("export", str(adapter), str(tmp_path / "m.gguf"))
    assert_user_error(proc, f"SRC '{adapter}' is a LoRA adapter directory", "--adapter",
                      f"({tmp_path / 'run' / 'epoch_0'})", "merged weights")
    assert_unchanged(before, tmp_path)
