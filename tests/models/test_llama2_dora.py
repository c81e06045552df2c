"""DoRA (``LoRASpec(use_dora=True)``) on the Llama 2 builders: parity with PEFT's
``LoraConfig(use_dora=True)`` (forward, gradients, dropout), merging, disabling, trainable params,
PEFT export conversion, config and a few recipe steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _llama_hf_ref import (
    ALL_TARGETS,
    TINY,
    hf_to_tk_state_dict,
    logits_match_then_backward,
    peft_model,
    tk_model,
)

from tunekit.models import get_model_type, permute_to_hf
from tunekit.modules.peft import (
    LoRALinear,
    LoRASpec,
    disable_adapters,
    get_adapter_state_dict,
    get_merged_state_dict,
    merge_lora_weights_,
    set_trainable_params,
)

HEADS, KV_HEADS = 4, 2
REPO = Path(__file__).resolve().parents[2]
LLAMA2 = get_model_type("LLAMA2")


def _interleave_rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """HF rotate-half row order -> interleaved, for a 1-D magnitude vector."""
    hd = v.shape[0] // n
    return v.reshape(n, 2, hd // 2).transpose(1, 2).reshape(-1)


def _peft_to_tk(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT (DoRA) model state dict / grads -> tunekit names, independent of tunekit's converter."""
    mags = {k: v for k, v in sd.items() if ".lora_magnitude_vector." in k}
    out = hf_to_tk_state_dict({k: v for k, v in sd.items() if k not in mags}, HEADS, KV_HEADS)
    for k, v in mags.items():
        tk = hf_to_tk_state_dict({k.replace(".lora_magnitude_vector.default.weight", ".weight"): v.view(-1, 1)},
                                 1, 1)  # fmt: skip
        (name,) = tk
        if ".q_proj." in name or ".k_proj." in name:
            v = _interleave_rows(v, HEADS if ".q_proj." in name else KV_HEADS)
        out[name.removesuffix(".weight") + ".lora_magnitude"] = v.clone()
    return out


def _peft_pair(spec: LoRASpec, dropout: float = 0.0):
    """PEFT DoRA model with non-zero B and a perturbed magnitude, and the tunekit model with the same weights."""
    pm = peft_model(spec, num_heads=HEADS, num_kv_heads=KV_HEADS, dropout=dropout, use_dora=True)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(torch.empty_like(p).uniform_(0.8, 1.2))  # m != ||W + sBA||: the rescale matters
    tk = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS, lora=LoRASpec(**{**spec.__dict__, "dropout": dropout}))
    tk.load_state_dict(_peft_to_tk(pm.state_dict()), strict=True)
    return tk.eval(), pm.eval()


def _check_grads(tk, pm):
    ref = _peft_to_tk({k: p.grad for k, p in pm.named_parameters() if p.requires_grad})
    got = {k: p.grad for k, p in tk.named_parameters() if p.requires_grad}
    assert set(got) == set(ref) and any(k.endswith(".lora_magnitude") for k in got)
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("targets", [ALL_TARGETS, ["q_proj", "k_proj"]], ids=["all-targets", "q-k"])
def test_dora_forward_and_grads_match_peft(targets):
    torch.manual_seed(3)
    spec = LoRASpec(rank=4, alpha=8.0, targets=targets, use_dora=True)
    tk, pm = _peft_pair(spec)
    set_trainable_params(tk)
    logits_match_then_backward(tk, pm, seq_len=19)
    _check_grads(tk, pm)


def test_dora_dropout_training_path_matches_peft():
    torch.manual_seed(4)
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "k_proj", "v_proj", "w2"], use_dora=True)
    tk, pm = _peft_pair(spec, dropout=0.3)
    set_trainable_params(tk)
    tk.train(), pm.train()
    logits_match_then_backward(tk, pm, seq_len=13, dropout_seed=11)  # the same dropout masks
    _check_grads(tk, pm)


def test_fresh_dora_is_a_noop_with_peft_init():
    torch.manual_seed(0)
    tk = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS, lora=LoRASpec(targets=ALL_TARGETS, use_dora=True))
    lin = tk.layers[0].attn.q_proj
    torch.testing.assert_close(lin.lora_magnitude, torch.linalg.norm(lin.weight, dim=1), rtol=0, atol=0)
    plain = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS)
    plain.load_state_dict({k: v for k, v in tk.state_dict().items() if ".lora_" not in k})
    tokens = torch.randint(0, TINY["vocab_size"], (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(tk(tokens), plain(tokens), rtol=1e-6, atol=1e-6)


def test_dora_state_dict_layout():
    spec = LoRASpec(rank=3, targets=["q_proj", "w1", "output"], use_dora=True)
    tk = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS, lora=spec)
    plain = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS)
    adapter = get_adapter_state_dict(tk)
    assert set(tk.state_dict()) - set(adapter) == set(plain.state_dict())
    assert adapter["layers.0.attn.q_proj.lora_magnitude"].shape == (TINY["embed_dim"],)
    assert adapter["output.lora_magnitude"].shape == (TINY["vocab_size"],)
    assert len(adapter) == 3 * (2 * TINY["num_layers"] + 1)
    # without DoRA nothing changes: no magnitude key
    assert not any("magnitude" in k for k in tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS,
                                                      lora=LoRASpec(targets=["q_proj"])).state_dict())  # fmt: skip


def test_dora_merged_equals_unmerged_and_disabled_equals_base():
    tk, _ = _peft_pair(LoRASpec(rank=4, alpha=8.0, targets=ALL_TARGETS, use_dora=True))
    plain = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        unmerged = tk(tokens)
        plain.load_state_dict({k: v for k, v in tk.state_dict().items() if ".lora_" not in k})
        with disable_adapters(tk):
            torch.testing.assert_close(tk(tokens), plain(tokens), rtol=0, atol=0)
        assert (unmerged - plain(tokens)).abs().max() > 1e-3

        merged_sd = get_merged_state_dict(tk)
        assert set(merged_sd) == set(plain.state_dict())
        lin = tk.layers[1].attn.k_proj
        w = lin.weight + lin.scaling * lin.lora_b.weight @ lin.lora_a.weight
        want = (lin.lora_magnitude / torch.linalg.norm(w, dim=1)).unsqueeze(1) * w
        torch.testing.assert_close(merged_sd["layers.1.attn.k_proj.weight"], want, rtol=1e-6, atol=1e-7)
        plain.load_state_dict(merged_sd)
        torch.testing.assert_close(plain(tokens), unmerged, rtol=0, atol=1e-5)

        merge_lora_weights_(tk)
        assert not any(isinstance(m, LoRALinear) for m in tk.modules())
        torch.testing.assert_close(tk(tokens), unmerged, rtol=0, atol=1e-5)


def test_dora_linear_with_bias_merges_and_matches_formula():
    torch.manual_seed(0)
    lin = LoRALinear(16, 8, rank=4, alpha=4.0, bias=True, use_dora=True).eval()
    with torch.no_grad():
        lin.lora_b.weight.normal_()
        lin.lora_magnitude.mul_(1.5)
    x = torch.randn(3, 5, 16)
    w = lin.weight + lin.scaling * lin.lora_b.weight @ lin.lora_a.weight
    want = F.linear(x, (lin.lora_magnitude / torch.linalg.norm(w, dim=1)).unsqueeze(1) * w, lin.bias)
    torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)
    merged = merge_lora_weights_(lin)
    torch.testing.assert_close(merged(x), want, rtol=1e-5, atol=1e-5)


def test_adapter_to_peft_maps_magnitude_with_qk_permutation():
    spec = LoRASpec(rank=2, targets=["q_proj", "k_proj", "v_proj"], use_dora=True)
    tk = tk_model(num_heads=HEADS, num_kv_heads=KV_HEADS, lora=spec)
    with torch.no_grad():
        for name, p in tk.named_parameters():
            if "lora_" in name:
                p.normal_()
    adapter = get_adapter_state_dict(tk)
    out = LLAMA2.adapter_to_peft(adapter, HEADS, KV_HEADS, TINY["embed_dim"])
    for layer, proj, n in [(0, "q_proj", HEADS), (1, "k_proj", KV_HEADS), (0, "v_proj", None)]:
        mag = adapter[f"layers.{layer}.attn.{proj}.lora_magnitude"]
        got = out[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_magnitude_vector.weight"]
        want = mag if n is None else permute_to_hf(mag.view(-1, 1), n).view(-1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # the magnitude rows follow B's rows
        b = out[f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_B.weight"]
        tk_b = adapter[f"layers.{layer}.attn.{proj}.lora_b.weight"]
        row = (tk_b[:1] == b).all(1).nonzero().item()
        assert got[row] == mag[0]
    back = LLAMA2.peft_to_adapter(out, HEADS, KV_HEADS, TINY["embed_dim"])
    assert back.keys() == adapter.keys()
    for k in adapter:
        torch.testing.assert_close(back[k], adapter[k], rtol=0, atol=0)
    assert LLAMA2.peft_config({"targets": ["q_proj"], "use_dora": True})["use_dora"] is True
    assert LLAMA2.peft_config({"targets": ["q_proj"]})["use_dora"] is False


def test_config_accepts_use_dora():
    from tunekit.config.schemas import LoRAConfig

    assert LoRAConfig().use_dora is False
    assert LoRASpec().use_dora is False
    assert LoRASpec(use_dora=True).use_dora is True


def test_recipe_runs_a_few_dora_steps(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "recipes.lora_finetune", "lora.use_dora=true", "max_steps_per_epoch=3",
           "epochs=1", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_other_merge_paths_apply_dora():
    """The saver's gather path (``model_states``, as under FSDP) and generation's ``merge_adapter``
    merge DoRA exactly as ``get_merged_state_dict`` does."""
    from tunekit.generation._loading import merge_adapter
    from tunekit.run.saver import _merge_full

    tk, _ = _peft_pair(LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "k_proj", "w2", "output"], use_dora=True))
    want = get_merged_state_dict(tk)
    got = _merge_full(tk, {k: v.detach() for k, v in tk.state_dict().items()})
    assert got.keys() == want.keys()
    adapter = get_adapter_state_dict(tk)
    base = {k: v for k, v in tk.state_dict().items() if ".lora_" not in k}
    scalings = {n: m.scaling for n, m in tk.named_modules() if isinstance(m, LoRALinear)}
    merged = merge_adapter(base, adapter, scalings)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(merged[k], want[k], rtol=0, atol=0, msg=k)
