"""Activation checkpointing (full and selective) on a LoRA Llama: same loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from tunekit.models.llama2 import llama2
from tunekit.modules.peft import LoRASpec, set_trainable_params
from tunekit.training.activation_checkpointing import apply_activation_checkpointing


def _lora_llama(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = LoRASpec(rank=4, alpha=8.0, dropout=dropout,
                    targets=["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"])
    model = llama2(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                   intermediate_dim=48, max_seq_len=32, lora=spec)
    for m in model.modules():  # non-zero B so the adapters contribute to loss and gradients
        if hasattr(m, "lora_b"):
            torch.nn.init.normal_(m.lora_b.weight, std=0.1)
    set_trainable_params(model)
    return model


def _loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # same dropout masks in every run (checkpointing preserves RNG)
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("save_matmuls", [False, True], ids=["full", "selective"])
def test_checkpointed_lora_matches_plain(dropout: float, save_matmuls: bool) -> None:
    model = _lora_llama(dropout)
    model.train()
    checkpointed = copy.deepcopy(model)
    apply_activation_checkpointing(checkpointed, save_matmuls=save_matmuls)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = _loss_and_grads(model, tokens, seed=3)
    loss, grads = _loss_and_grads(checkpointed, tokens, seed=3)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 6 * 2  # A and B, 6 targets, 2 layers
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)
