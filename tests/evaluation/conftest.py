"""Shared fixtures of the evaluation tests: the bundled tiny HF checkpoint as a tunekit model
(helpers live in _eval_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_hf_dir() -> Path:
    from tunekit.config.resolvers import asset_path

    return Path(asset_path("tiny_llama2/hf"))


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_hf_dir):
    """The bundled tiny Llama (fp32, eval mode) and its tokenizer, loaded through the checkpointer."""
    import torch

    from tunekit.checkpointing import FullModelHFCheckpointer
    from tunekit.models.llama2 import llama2_tiny
    from tunekit.run.model import load_model_weights
    from tunekit.tokenizers import tokenizer_from_dir

    ckpt = FullModelHFCheckpointer(checkpoint_dir=tiny_hf_dir, output_dir=tiny_hf_dir.parent / "unused",
                                   model_type="LLAMA2")
    with torch.device("meta"):
        model = llama2_tiny()
    load_model_weights(model, ckpt.load_checkpoint()["model"], lora=False, source=str(tiny_hf_dir))
    return model.eval(), tokenizer_from_dir(str(tiny_hf_dir))
