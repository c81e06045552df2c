"""Every checkpoint error, by message: it names the file/key and says what to do."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tunekit.checkpointing import (
    CheckpointError,
    CheckpointFileNotFoundError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    validate_state_dict,
)


def test_missing_checkpoint_dir_suggests_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_MODELS_ROOT", str(tmp_path / "models"))
    missing = tmp_path / "models" / "meta-llama" / "Llama-2-7b-hf"
    with pytest.raises(CheckpointFileNotFoundError, match=r"Llama-2-7b-hf does not exist.*`tunekit download meta-llama/Llama-2-7b-hf`"):
        FullModelHFCheckpointer(missing, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"tunekit download <repo_id> --output-dir"):
        FullModelMetaCheckpointer(tmp_path / "elsewhere", tmp_path / "out")


def test_no_weights_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFileNotFoundError, match=r"No HF weights in .*empty.*tunekit download"):
        FullModelHFCheckpointer(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(CheckpointFileNotFoundError, match=r"No Meta weights in .*consolidated\.00\.pth"):
        FullModelMetaCheckpointer(tmp_path / "empty", tmp_path / "out")


def test_index_lists_missing_shard(hf_dir, tmp_path):
    shard = sorted(hf_dir.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointFileNotFoundError, match=rf"lists shard\(s\) {shard.name} .*incomplete"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out")


def test_missing_checkpoint_files_and_config(hf_dir, tmp_path):
    with pytest.raises(CheckpointFileNotFoundError, match=r"checkpoint_files: .*model-9\.safetensors not found"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out", checkpoint_files=["model-9.safetensors"])
    (hf_dir / "config.json").unlink()
    with pytest.raises(CheckpointFileNotFoundError, match=r"config\.json is missing"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out")


def test_meta_missing_params(meta_dir, tmp_path):
    (meta_dir / "params.json").unlink()
    with pytest.raises(CheckpointFileNotFoundError, match=r"params\.json is missing"):
        FullModelMetaCheckpointer(meta_dir, tmp_path / "out")


def test_wrong_model_type_lists_valid(hf_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"model_type: Unknown model_type 'GPT2'.*valid model types: LLAMA2"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out", model_type="GPT2")


def test_output_dir_inside_checkpoint_dir(hf_dir):
    with pytest.raises(CheckpointError, match=r"output_dir .* is inside checkpoint_dir"):
        FullModelHFCheckpointer(hf_dir, hf_dir / "outputs")


def test_keys_and_shapes_that_do_not_match_are_listed(hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(num_hidden_layers=3, vocab_size=65)
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        FullModelHFCheckpointer(hf_dir, tmp_path / "out").load_checkpoint()
    msg = str(e.value)  # the JSON file and its fields are blamed, not "the model"
    assert f"{hf_dir / 'config.json'} does not describe the weights beside it" in msg
    assert "num_hidden_layers=3 but the weight files hold 2" in msg and "vocab_size=65 but the weight files hold 64" in msg
    assert "Restore the config.json that came with these weights" in msg


def test_a_single_bad_tensor_is_listed_with_its_file(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    shard, sd = next((f, load_file(str(f))) for f in sorted(hf_dir.glob("model-*.safetensors"))
                     if any(k.endswith("mlp.up_proj.weight") for k in load_file(str(f))))
    key = next(k for k in sd if k.endswith("mlp.up_proj.weight"))
    sd[key] = sd[key][:-1].clone()
    save_file(sd, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        FullModelHFCheckpointer(hf_dir, tmp_path / "out").load_checkpoint()
    msg = str(e.value)
    assert re.search(r"mlp\.w3\.weight in .*model-\d+-of-\d+\.safetensors: checkpoint \(63, 32\), model \(64, 32\)", msg)


def test_unknown_key_names_file_and_key(hf_dir, tmp_path):
    from safetensors.torch import save_file

    save_file({"vision_tower.proj.weight": torch.zeros(2)}, str(hf_dir / "model-extra.safetensors"))
    (hf_dir / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"In .*model-extra\.safetensors: 1 key\(s\).*vision_tower\.proj\.weight"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out").load_checkpoint()


def test_truncated_safetensors(hf_dir, tmp_path):
    shard = sorted(hf_dir.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"Could not read checkpoint file .*{shard.name}: it looks truncated or corrupt"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "out").load_checkpoint()


def test_truncated_bin_and_pth(hf_bin_dir, meta_dir, tmp_path):
    shard = hf_bin_dir / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00002\.bin: it looks truncated or corrupt"):
        FullModelHFCheckpointer(hf_bin_dir, tmp_path / "out").load_checkpoint()
    (meta_dir / "consolidated.00.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: it looks truncated or corrupt"):
        FullModelMetaCheckpointer(meta_dir, tmp_path / "out").load_checkpoint()


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(meta_dir, tmp_path):
    torch.save({"tok_embeddings.weight": torch.zeros(1), "x": Evil()}, meta_dir / "consolidated.00.pth")
    with pytest.raises(CheckpointError) as e:
        FullModelMetaCheckpointer(meta_dir, tmp_path / "out").load_checkpoint()
    msg = str(e.value)
    assert re.search(r"Refusing to load .*consolidated\.00\.pth: the file holds Python objects other than tensors "
                     r"\(__builtin__\.print\)", msg)
    assert "tunekit will not run them" in msg
    assert "weights_only=False" not in msg and "truncated" not in msg and "download" not in msg


def test_model_parallel_parts_disagree(meta_dir, tmp_path):
    sd = torch.load(meta_dir / "consolidated.00.pth", weights_only=True)
    del sd["layers.1.ffn_norm.weight"]
    torch.save(sd, meta_dir / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth and consolidated\.01\.pth hold different keys.*layers\.1\.ffn_norm"):
        FullModelMetaCheckpointer(meta_dir, tmp_path / "out").load_checkpoint()


def test_validate_state_dict_reports_everything():
    with pytest.raises(CheckpointError) as e:
        validate_state_dict({"a": (2, 3), "b": (4,)}, {"a": torch.zeros(3, 3), "c": torch.zeros(1)},
                            source="ckpt/", key_files={"a": "f1.safetensors", "c": "f2.safetensors"})  # fmt: skip
    msg = str(e.value)
    assert "missing keys: b" in msg and "unexpected keys: c (in f2.safetensors)" in msg
    assert "a in f1.safetensors: checkpoint (3, 3), model (2, 3)" in msg


def test_missing_recipe_checkpoint_file(hf_dir, tmp_path):
    with pytest.raises(CheckpointFileNotFoundError, match=r"recipe_checkpoint: recipe_state\.pt was not found \(looked in .*recipe_state\.pt"):
        FullModelHFCheckpointer(hf_dir, tmp_path / "o", recipe_checkpoint="recipe_state.pt", resume_from_checkpoint=True)
