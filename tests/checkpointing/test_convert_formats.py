"""`tunekit convert` / convert_checkpoint: Meta <-> HF, re-sharding, dtype, run directories, errors.

Parity is checked against transformers (the HF output loads there and gives tunekit's logits on
the Meta input) and by exact round trips of the weight files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ckpt_helpers import (
    HEADS,
    KV_HEADS,
    assert_same,
    meta_params,
    read_weights,
    reference_meta_from_hf,
    tiny_tk_model,
)

from tunekit.checkpointing import (
    CheckpointError,
    FullModelHFCheckpointer,
    FullModelMetaCheckpointer,
    checkpoint_format,
    convert_checkpoint,
)
from tunekit.cli.main import main as tunekit_main
from tunekit.models.llama2._convert import Llama2Dims, hf_config, meta_params_dims
from tunekit.models.llama2._convert import meta_params as make_meta_params

REPO = Path(__file__).resolve().parents[2]
TINY_META = REPO / "src" / "tunekit" / "assets" / "tiny_llama2" / "meta"


def _tk(d: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    cls = FullModelHFCheckpointer if checkpoint_format(d) == "hf" else FullModelMetaCheckpointer
    return cls(d, tmp_path / "unused_out").load_checkpoint()["model"]


def test_meta_to_hf_loads_in_transformers_with_equal_logits_and_tokenizer(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.models.llama2 import llama2_tiny
    from tunekit.tokenizers import SentencePieceTokenizer

    out = tmp_path / "tiny-hf"
    assert tunekit_main(["convert", str(TINY_META), str(out), "--to", "hf"]) == 0
    assert f"Wrote HF checkpoint to {out}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_key_value_heads"],
            config["vocab_size"], config["max_position_embeddings"]) == (128, 352, 2, 512, 4096)
    assert (out / "model.safetensors.index.json").is_file() and (out / ".tunekit-convert.json").is_file()
    marker = json.loads((out / ".tunekit-convert.json").read_text())
    assert marker["source"] == str(TINY_META) and marker["format"] == "hf"
    assert set(marker["files"]) == {p.name for p in out.iterdir()} - {".tunekit-convert.json"}

    model = llama2_tiny().eval()
    model.load_state_dict(_tk(TINY_META, tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)

    hf_tok, ours = AutoTokenizer.from_pretrained(out), SentencePieceTokenizer(TINY_META / "tokenizer.model")
    text = "The river ran past the old mill."
    assert hf_tok(text)["input_ids"] == ours.encode(text, add_bos=True, add_eos=False)


def test_hf_to_meta_and_back_is_exact(tmp_path):
    """Meta -> HF -> Meta gives back the original tensors; HF -> Meta reads as the HF weights."""
    hf, meta = tmp_path / "hf", tmp_path / "meta"
    convert_checkpoint(TINY_META, hf, to="hf")
    convert_checkpoint(hf, meta, to="meta")
    orig = torch.load(TINY_META / "consolidated.00.pth", weights_only=True)
    orig.pop("rope.freqs", None)
    assert_same(torch.load(meta / "consolidated.00.pth", weights_only=True), orig)
    assert_same(_tk(meta, tmp_path), _tk(hf, tmp_path))
    params = json.loads((meta / "params.json").read_text())
    original = json.loads((TINY_META / "params.json").read_text())
    assert meta_params_dims(params) == meta_params_dims({**original, "vocab_size": -1})
    assert (meta / "tokenizer.model").read_bytes() == (TINY_META / "tokenizer.model").read_bytes()


def test_hf_with_gqa_to_meta_model_parallel(hf_dir, hf_state, tmp_path):
    """A transformers-written HF model (GQA) to 2 Meta files: merged, they equal the
    independent reference conversion; params.json describes the same sizes."""
    out = convert_checkpoint(hf_dir, tmp_path / "meta", to="meta", model_parallel_size=2)
    assert sorted(p.name for p in out.glob("*.pth")) == ["consolidated.00.pth", "consolidated.01.pth"]
    params = json.loads((out / "params.json").read_text())
    assert meta_params_dims(params) == meta_params_dims({**meta_params(), "vocab_size": -1})
    assert_same(FullModelMetaCheckpointer(out, tmp_path / "o").load_checkpoint()["model"],
          FullModelMetaCheckpointer(_reference_meta_dir(hf_state, tmp_path), tmp_path / "o2")
          .load_checkpoint()["model"])
    assert params["n_heads"] == HEADS and params["n_kv_heads"] == KV_HEADS


def _reference_meta_dir(hf_state, tmp_path) -> Path:
    d = tmp_path / "ref_meta"
    d.mkdir()
    torch.save(reference_meta_from_hf(hf_state), d / "consolidated.00.pth")
    (d / "params.json").write_text(json.dumps(meta_params()))
    return d


def test_hf_reshard_and_cast(hf_dir, hf_state, tmp_path):
    out = convert_checkpoint(hf_dir, tmp_path / "bf16", to="hf", dtype="bf16", max_shard_size="20KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert_same(read_weights(out, "model-*.safetensors"), {k: v.to(torch.bfloat16) for k, v in hf_state.items()})
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert (out / "tokenizer.model").is_file()


def test_bin_input_stays_bin(hf_bin_dir, hf_state, tmp_path):
    out = convert_checkpoint(hf_bin_dir, tmp_path / "out", to="hf")
    assert not list(out.glob("*.safetensors")) and (out / "pytorch_model.bin.index.json").is_file()
    assert_same(read_weights(out, "pytorch_model-*.bin"), hf_state)


def test_run_directory_source_uses_the_newest_complete_checkpoint(hf_dir, tmp_path):
    ckpt = FullModelHFCheckpointer(hf_dir, tmp_path / "run")
    sd = ckpt.load_checkpoint()["model"]
    ckpt.save_checkpoint({"model": sd}, epoch=0)
    newer = {k: v + 1 for k, v in sd.items()}
    ckpt.save_checkpoint({"model": newer}, epoch=1)
    (tmp_path / "run" / "epoch_2").mkdir()  # a save that never completed: ignored
    out = convert_checkpoint(tmp_path / "run", tmp_path / "meta", to="meta")
    got = FullModelMetaCheckpointer(out, tmp_path / "o").load_checkpoint()["model"]
    assert_same(got, newer)
    assert json.loads((out / ".tunekit-convert.json").read_text())["source"] == str(tmp_path / "run" / "epoch_1" / "model")
    # the epoch directory and its model/ directory are sources too
    for src in (tmp_path / "run" / "epoch_0", tmp_path / "run" / "epoch_0" / "model"):
        again = convert_checkpoint(src, tmp_path / f"meta_{src.name}", to="meta")
        assert_same(FullModelMetaCheckpointer(again, tmp_path / "o").load_checkpoint()["model"], sd)


def test_force_replaces_only_an_earlier_convert_output(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    for force in (False, True):  # a directory convert did not write is never replaced
        with pytest.raises(CheckpointError, match="not written by tunekit convert; it holds notes.txt"):
            convert_checkpoint(TINY_META, dest, to="hf", force=force)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    (dest / "notes.txt").unlink()  # an empty directory is fine
    convert_checkpoint(TINY_META, dest, to="hf")
    with pytest.raises(CheckpointError, match="earlier tunekit convert output .*pass --force"):
        convert_checkpoint(TINY_META, dest, to="hf", dtype="bf16")
    convert_checkpoint(TINY_META, dest, to="hf", dtype="bf16", force=True)
    assert json.loads((dest / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it
    (dest / "mine.txt").write_text("added by the user")
    with pytest.raises(CheckpointError, match="also holds mine.txt, which convert did not write"):
        convert_checkpoint(TINY_META, dest, to="hf", force=True)
    assert (dest / "mine.txt").read_text() == "added by the user"


def test_failed_convert_leaves_the_earlier_output_intact(tmp_path, monkeypatch):
    import tunekit.checkpointing._export as export

    dest = tmp_path / "out"
    convert_checkpoint(TINY_META, dest, to="hf")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_hf_weights", boom)
    with pytest.raises(OSError):
        convert_checkpoint(TINY_META, dest, to="hf", force=True)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(to="gguf"), "to must be one of hf, meta, got 'gguf'"),
    (dict(to="hf", dtype="int8"), "dtype must be one of fp32, bf16, fp16"),
    (dict(to="hf", model_type="GEMMA2"), "GEMMA2"),
    (dict(to="hf", model_parallel_size=2), "model_parallel_size applies to Meta output only"),
    (dict(to="meta", max_position_embeddings=2048), "max_position_embeddings applies to HF output only"),
    (dict(to="meta", model_parallel_size=3), "model_parallel_size (3) must divide n_heads=4, n_kv_heads=2, dim=128"),
])  # fmt: skip
def test_bad_arguments_are_refused_with_the_reason(tmp_path, kwargs, message):
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(TINY_META, tmp_path / "out", **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_source_problems_are_refused_with_the_reason(hf_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"source='.*empty' holds no model weights"):
        (tmp_path / "empty").mkdir()
        convert_checkpoint(tmp_path / "empty", tmp_path / "out", to="hf")
    with pytest.raises(CheckpointError, match="is inside the source"):
        convert_checkpoint(hf_dir, hf_dir / "sub", to="meta")
    with pytest.raises(CheckpointError, match="max_position_embeddings comes from the HF source's config.json"):
        convert_checkpoint(hf_dir, tmp_path / "out", to="hf", max_position_embeddings=8)
    # what the Llama model code does not implement is refused on reading, in either direction
    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    config["attention_bias"] = True
    (hf_dir / "config.json").write_text(json.dumps(config))
    for to in ("meta", "hf"):
        with pytest.raises(CheckpointError) as info:
            convert_checkpoint(hf_dir, tmp_path / "out", to=to)
        assert "declares attention_bias=true" in str(info.value) and "rope_scaling type 'linear'" in str(info.value)
    assert not (tmp_path / "out").exists()
    config = {k: v for k, v in config.items() if k not in ("rope_scaling", "attention_bias")}
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}  # transformers 5
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope_scaling type 'yarn'"):
        convert_checkpoint(hf_dir, tmp_path / "out", to="meta")


def test_cli_reports_errors_in_one_line_and_exit_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tunekit.cli.main", "convert", str(tmp_path / "missing"), str(tmp_path / "o"),
         "--to", "hf"], capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("tunekit convert: error: source=") and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    help_text = subprocess.run([sys.executable, "-m", "tunekit.cli.main", "--help"], capture_output=True,
                               text=True, timeout=60, cwd=REPO).stdout
    assert "convert" in help_text


# Meta's and HF's published Llama 2 configs (the fields that describe the model).
_PUBLISHED_PARAMS = {
    "7b": {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1},
    "13b": {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": -1},
    "70b": {"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
            "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1},
}
_PUBLISHED_HF = {  # hidden, intermediate, heads, kv heads, layers
    "7b": (4096, 11008, 32, 32, 32), "13b": (5120, 13824, 40, 40, 40), "70b": (8192, 28672, 64, 8, 80),
}


@pytest.mark.parametrize("size", ["7b", "13b", "70b"])
def test_written_configs_match_the_published_llama2_files(size):
    hidden, inter, heads, kv, layers = _PUBLISHED_HF[size]
    dims = Llama2Dims(num_layers=layers, num_heads=heads, num_kv_heads=kv, embed_dim=hidden,
                      vocab_size=32000, intermediate_dim=inter)
    assert make_meta_params(dims, norm_eps=1e-5, rope_theta=10000.0) == _PUBLISHED_PARAMS[size]
    assert meta_params_dims(_PUBLISHED_PARAMS[size]) == Llama2Dims(**{**dims.__dict__, "vocab_size": None})
    config = hf_config(dims, norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096, dtype=torch.float16)
    assert {k: config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                   "num_key_value_heads", "num_hidden_layers", "max_position_embeddings",
                                   "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id", "torch_dtype")} == {
        "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv,
        "num_hidden_layers": layers, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32000,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}  # fmt: skip


def test_unusual_ffn_widths_still_round_trip_through_params_json():
    for inter in (64, 50, 100, 1000):
        dims = Llama2Dims(num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32, vocab_size=64,
                          intermediate_dim=inter)
        params = make_meta_params(dims, norm_eps=1e-6, rope_theta=5e5)
        assert meta_params_dims(params).intermediate_dim == inter
        assert params["rope_theta"] == 5e5 and params["norm_eps"] == 1e-6


def test_tiny_model_shapes_are_what_tunekit_builds():
    """The converted tiny HF config builds the same model in transformers as tunekit's builder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = Llama2Dims(num_layers=2, num_heads=HEADS, num_kv_heads=KV_HEADS, embed_dim=32, vocab_size=64,
                      intermediate_dim=64)
    config = hf_config(dims, norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=64, dtype=torch.float32)
    hf_params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**config)).parameters())
    assert hf_params == sum(p.numel() for p in tiny_tk_model().parameters())
