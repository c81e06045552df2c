"""The bundled tiny checkpoint: both formats hold the same weights, and HF logits match transformers."""

from __future__ import annotations

from pathlib import Path

import torch

from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer
from tunekit.models.llama2 import llama2_tiny
from tunekit.tokenizers import SentencePieceTokenizer

ASSETS = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "assets" / "tiny_llama2"


def _load(cls, fmt: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    ckpt = cls(checkpoint_dir=str(ASSETS / fmt), output_dir=str(tmp_path / fmt))
    return ckpt.load_checkpoint()["model"]


def test_hf_and_meta_assets_hold_identical_weights(tmp_path: Path) -> None:
    hf = _load(FullModelHFCheckpointer, "hf", tmp_path)
    meta = _load(FullModelMetaCheckpointer, "meta", tmp_path)
    assert hf.keys() == meta.keys()
    for k in hf:
        assert torch.equal(hf[k], meta[k]), k
    # The state dict fits the builder exactly.
    model = llama2_tiny()
    model.load_state_dict(hf, strict=True)


def test_tiny_asset_logits_match_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = llama2_tiny()
    model.load_state_dict(_load(FullModelHFCheckpointer, "hf", tmp_path))
    model.eval()
    ref = AutoModelForCausalLM.from_pretrained(str(ASSETS / "hf")).eval()
    tok = SentencePieceTokenizer(str(ASSETS / "hf" / "tokenizer.model"))
    assert tok.vocab_size == 512
    ids = torch.tensor([tok.encode("The weather today is warm and the sky is clear.")])
    with torch.no_grad():
        diff = (model(ids) - ref(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff


def test_tiny_asset_is_pretrained() -> None:
    """The bundled weights were pre-trained: bundled text is far below uniform (ln 512 = 6.24)."""
    from tunekit.data import bundled_text_files

    ckpt = FullModelHFCheckpointer(checkpoint_dir=str(ASSETS / "hf"), output_dir="/tmp/unused-tk")
    model = llama2_tiny()
    model.load_state_dict(ckpt.load_checkpoint()["model"])
    tok = SentencePieceTokenizer(str(ASSETS / "hf" / "tokenizer.model"))
    line = Path(bundled_text_files()[0]).read_text().splitlines()[0]
    ids = torch.tensor([tok.encode(line)[:128]])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:]).item()
    assert loss < 3.0, loss
