"""LoRA on the Llama 2 builders: parity with PEFT, merging, disabling, trainable params."""

from __future__ import annotations

import pytest
import torch
from _llama_hf_ref import (
    ALL_TARGETS,
    TINY,
    TK_TO_PEFT_TARGET,
    hf_to_tk_state_dict,
    logits_match_then_backward,
    peft_model,
    tk_model,
)

from tunekit.modules.peft import (
    LoRALinear,
    LoRASpec,
    disable_adapters,
    get_adapter_state_dict,
    get_merged_state_dict,
    merge_lora_weights_,
    set_trainable_params,
)


def _peft_pair(spec: LoRASpec, num_heads=4, num_kv_heads=2):
    """PEFT-wrapped HF model with random non-zero B, and the tunekit LoRA model with the same weights."""
    pm = peft_model(spec, num_heads=num_heads, num_kv_heads=num_kv_heads,
                    rank_pattern={_hf_pattern(k): v for k, v in spec.rank_pattern.items()},
                    alpha_pattern={_hf_pattern(k): v for k, v in spec.alpha_pattern.items()})
    tk = tk_model(num_heads=num_heads, num_kv_heads=num_kv_heads, lora=spec)
    tk.load_state_dict(hf_to_tk_state_dict(pm.state_dict(), num_heads, num_kv_heads), strict=True)
    return tk.eval(), pm.eval()


def _hf_pattern(tk_pattern: str) -> str:
    out = tk_pattern.replace("attn.", "self_attn.")
    for tk, hf in TK_TO_PEFT_TARGET.items():
        if out.endswith(tk):
            out = out[: -len(tk)] + hf
    return out


@pytest.mark.parametrize(
    "spec",
    [
        LoRASpec(rank=4, alpha=8.0, targets=ALL_TARGETS),
        LoRASpec(
            rank=8, alpha=16.0, targets=["q_proj", "v_proj", "w2"],
            rank_pattern={"q_proj": 2}, alpha_pattern={"layers.1.mlp.w2": 4.0},
        ),
    ],
    ids=["all-targets", "patterns"],
)  # fmt: skip
def test_lora_forward_and_grads_match_peft(spec):
    tk, pm = _peft_pair(spec)
    set_trainable_params(tk)
    logits_match_then_backward(tk, pm, seq_len=19)

    ref_grads = {k: p.grad for k, p in pm.named_parameters() if p.requires_grad}
    ref_grads = hf_to_tk_state_dict(ref_grads, 4, 2)  # same key mapping and q/k row permutation
    tk_grads = {k: p.grad for k, p in tk.named_parameters() if p.requires_grad}
    assert set(tk_grads) == set(ref_grads) and tk_grads
    for k in tk_grads:
        torch.testing.assert_close(tk_grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)
    if spec.rank_pattern:
        assert tk.layers[0].attn.q_proj.rank == 2 and tk.layers[0].attn.v_proj.rank == 8
        assert tk.layers[1].mlp.w2.scaling == 4.0 / 8 and tk.layers[0].mlp.w2.scaling == 2.0


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_only_adapter_params_receive_grads(use_dora):
    tk = tk_model(num_heads=4, num_kv_heads=2, lora=LoRASpec(targets=ALL_TARGETS, use_dora=use_dora))
    set_trainable_params(tk)
    tk(torch.randint(0, TINY["vocab_size"], (1, 9))).sum().backward()
    for name, p in tk.named_parameters():
        is_adapter = ".lora_a." in name or ".lora_b." in name or name.endswith(".lora_magnitude")
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name


def test_set_trainable_params_without_lora_raises():
    with pytest.raises(ValueError, match="no LoRALinear"):
        set_trainable_params(tk_model(num_heads=4, num_kv_heads=2))


def test_state_dict_layout_and_adapter_state_dict():
    spec = LoRASpec(rank=3, targets=["q_proj", "w1", "output"])
    tk = tk_model(num_heads=4, num_kv_heads=2, lora=spec)
    plain = tk_model(num_heads=4, num_kv_heads=2)
    adapter = get_adapter_state_dict(tk)
    assert set(tk.state_dict()) - set(adapter) == set(plain.state_dict())
    assert adapter["layers.0.attn.q_proj.lora_a.weight"].shape == (3, TINY["embed_dim"])
    assert adapter["layers.0.attn.q_proj.lora_b.weight"].shape == (TINY["embed_dim"], 3)
    assert adapter["output.lora_b.weight"].shape == (TINY["vocab_size"], 3)
    assert len(adapter) == 2 * (2 * TINY["num_layers"] + 1)
    # a plain checkpoint loads; only the adapter keys are missing
    missing, unexpected = tk.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == set(adapter) and not unexpected


def test_fresh_adapter_is_a_noop_and_init_follows_peft():
    torch.manual_seed(0)
    tk = tk_model(num_heads=4, num_kv_heads=2, lora=LoRASpec(rank=8, targets=ALL_TARGETS))
    plain = tk_model(num_heads=4, num_kv_heads=2)
    plain.load_state_dict(get_merged_state_dict(tk))
    lin = tk.layers[0].attn.q_proj
    assert torch.count_nonzero(lin.lora_b.weight) == 0
    bound = 1 / TINY["embed_dim"] ** 0.5  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(in), 1/sqrt(in))
    assert lin.lora_a.weight.abs().max() <= bound and lin.lora_a.weight.std() > bound / 3
    tokens = torch.randint(0, TINY["vocab_size"], (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(tk(tokens), plain(tokens), rtol=0, atol=0)


def test_merged_equals_unmerged_and_disabled_equals_base():
    spec = LoRASpec(rank=4, alpha=8.0, targets=ALL_TARGETS)
    tk, _ = _peft_pair(spec)
    plain = tk_model(num_heads=4, num_kv_heads=2).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        unmerged = tk(tokens)
        # disabled adapters == the base weights alone
        plain.load_state_dict({k: v for k, v in tk.state_dict().items() if ".lora_" not in k})
        with disable_adapters(tk):
            torch.testing.assert_close(tk(tokens), plain(tokens), rtol=0, atol=0)
        torch.testing.assert_close(tk(tokens), unmerged, rtol=0, atol=0)  # restored
        assert (unmerged - plain(tokens)).abs().max() > 1e-3  # the adapters do something

        merged_sd = get_merged_state_dict(tk)
        assert set(merged_sd) == set(plain.state_dict())
        plain.load_state_dict(merged_sd)
        torch.testing.assert_close(plain(tokens), unmerged, rtol=0, atol=1e-5)

        merge_lora_weights_(tk)
        assert not any(isinstance(m, LoRALinear) for m in tk.modules())
        assert set(tk.state_dict()) == set(plain.state_dict())
        torch.testing.assert_close(tk(tokens), unmerged, rtol=0, atol=1e-5)


def test_dropout_only_on_adapter_path():
    torch.manual_seed(0)
    lin = LoRALinear(16, 8, rank=4, alpha=4.0, dropout=0.5).train()
    x = torch.randn(3, 16)
    base = x @ lin.weight.T
    torch.testing.assert_close(lin(x), base, rtol=0, atol=0)  # B == 0: dropout cannot touch the base path
    with torch.no_grad():
        lin.lora_b.weight.normal_()
    torch.manual_seed(1)
    out = lin(x)
    torch.manual_seed(1)
    expected = base + 1.0 * (torch.nn.functional.dropout(x, 0.5) @ lin.lora_a.weight.T) @ lin.lora_b.weight.T
    torch.testing.assert_close(out, expected)
    lin.eval()
    torch.testing.assert_close(lin(x), base + (x @ lin.lora_a.weight.T) @ lin.lora_b.weight.T)


def test_lora_spec_reports_every_problem():
    with pytest.raises(ValueError) as e:
        LoRASpec(rank=0, dropout=1.5, targets=["q_proj", "o_proj"], rank_pattern={"(": 4})
    msg = str(e.value)
    for part in ["lora.rank", "lora.dropout", "'o_proj'", "valid regex", "output_proj"]:
        assert part in msg, part
