"""Test-only: the checks every Llama-layout family passes (called from tests/models/test_<family>.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from _family_ref import FAMILIES, Family, builder, hf_config, make_pair, save_hf_dir, tk_model
from safetensors.torch import load_file

from tunekit.checkpointing import FullModelHFCheckpointer, check_model_matches
from tunekit.models import get_model_type


def _tokens(fam: Family, n: int = 40, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, fam.hf["vocab_size"], (batch, n), generator=g)


def check_logits_match_transformers(name: str) -> None:
    fam = FAMILIES[name]
    tk, hf = make_pair(fam)
    tokens = _tokens(fam)  # 40 positions: past the tiny llama3 scaling's original context of 32
    with torch.no_grad():
        ours, ref = tk(tokens), hf(tokens).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def check_hf_round_trip_is_bit_exact(name: str, tmp_path: Path) -> None:
    """HF dir -> checkpointer -> tunekit model -> checkpointer -> HF dir: the same tensors, and the
    output loads in transformers with the same logits."""
    from transformers import AutoModelForCausalLM

    fam = FAMILIES[name]
    src = save_hf_dir(fam, tmp_path / "in")
    ckpt = FullModelHFCheckpointer(src, tmp_path / "out", model_type=fam.model_type)
    with torch.device("meta"):
        model = tk_model(fam)
    check_model_matches(model, ckpt.model_settings, str(src))  # the config.json agrees with the builder
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True, assign=True)
    model.init_buffers()
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    before, after = _weights(src), _weights(out / "model")
    assert sorted(before) == sorted(after)
    assert ("lm_head.weight" in after) == (not fam.hf.get("tie_word_embeddings"))
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokens = _tokens(fam, n=12, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), reloaded(tokens).logits, atol=1e-5, rtol=0)


def check_kv_cache_decode_equals_recompute(name: str) -> None:
    fam = FAMILIES[name]
    tk, _ = make_pair(fam)
    tokens = _tokens(fam, n=40, batch=2)
    with torch.no_grad():
        full = tk(tokens)
        tk.setup_caches(batch_size=2, dtype=torch.float32, max_seq_len=64)
        prompt = 30
        pos = torch.arange(prompt).expand(2, prompt)
        steps = [tk(tokens[:, :prompt], input_pos=pos)[:, -1]]
        for t in range(prompt, tokens.shape[1] - 1):
            steps.append(tk(tokens[:, t:t + 1], input_pos=torch.full((2, 1), t))[:, -1])
        tk.remove_caches()
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt - 1:-1], atol=1e-5, rtol=0)


def check_published_parameter_counts(name: str, size: str) -> None:
    """The builder of a published size has exactly as many parameters as transformers' model of
    the published config (both on the meta device)."""
    import transformers

    fam = FAMILIES[name]
    cfg = getattr(transformers, fam.hf_config_class)(**fam.published[size])
    with torch.device("meta"):
        hf = getattr(transformers, fam.hf_class)(cfg)
        ours = builder(fam, size)()
    n_hf = sum(p.numel() for p in hf.parameters())
    n_tk = sum(p.numel() for p in ours.parameters())
    assert n_tk == n_hf, (size, n_tk, n_hf)
    assert ours.tie_word_embeddings == bool(cfg.tie_word_embeddings)
    # the checkpointer's settings check accepts the published config.json with this builder
    from tunekit.checkpointing._formats import hf_model_settings
    from tunekit.checkpointing._settings import check_supported_hf_config

    config = {"model_type": cfg.model_type, **cfg.to_dict()}
    mt = get_model_type(fam.model_type)
    check_supported_hf_config(config, "config.json", mt)
    check_model_matches(ours, hf_model_settings(config, mt, "config.json"), "config.json")


def tiny_hf_config(name: str, **over):
    return hf_config(FAMILIES[name], **over)
