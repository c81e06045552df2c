"""scripts/make_random_checkpoint.py writes loadable HF and Meta checkpoints of a builder shape."""

from __future__ import annotations

import json
import subprocess
import sys

from _recipe_helpers import REPO


def test_make_random_checkpoint_hf_and_meta(tmp_path):
    from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer

    for fmt, cls in (("hf", FullModelHFCheckpointer), ("meta", FullModelMetaCheckpointer)):
        out = tmp_path / fmt
        subprocess.run([sys.executable, "scripts/make_random_checkpoint.py", "--model", "llama2_tiny",
                        "--format", fmt, "--dtype", "bf16", "--out", str(out)], cwd=REPO, check=True,
                       capture_output=True, timeout=120)
        assert (out / "tokenizer.model").is_file()
        sd = cls(checkpoint_dir=out, output_dir=tmp_path / f"{fmt}_out").load_checkpoint()["model"]
        assert sd["layers.3.mlp.w1.weight"].shape == (352, 128)
        assert sd["tok_embeddings.weight"].dtype.is_floating_point
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["intermediate_size"], config["torch_dtype"]) == (2, 352, "bfloat16")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["multiple_of"] == 32 and params["n_kv_heads"] == 2
