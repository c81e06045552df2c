"""The loop on the real tiny Llama (with LoRA, packing inputs and the chunked loss)."""

import pytest
import torch
from _training_helpers import FakeCheckpointer, collate, make_samples, run_train

from tunekit.run.settings import train_settings
from tunekit.training import ChunkedCrossEntropyLoss, build_dataloader
from tunekit.training.lr_schedulers import cosine_with_warmup

llama2_mod = pytest.importorskip("tunekit.models.llama2")
peft = pytest.importorskip("tunekit.modules.peft")


def _parts(lora: bool):
    torch.manual_seed(0)
    spec = peft.LoRASpec(rank=4, alpha=8.0, dropout=0.1, targets=["q_proj", "v_proj", "output"]) if lora else None
    model = llama2_mod.llama2(vocab_size=37, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                              intermediate_dim=64, max_seq_len=32, lora=spec)
    if lora:
        peft.set_trainable_params(model)
    settings = train_settings(epochs=2, gradient_accumulation_steps=2, save_every_n_steps=2, seed=0, device="cpu",
                              clip_grad_norm=1.0, log_every_n_steps=1)
    loader = build_dataloader(make_samples(16, seed=1), 2, collate, shuffle=True, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    sched = cosine_with_warmup(opt, 1, 8)
    return dict(model=model, optimizer=opt, lr_scheduler=sched, loss_fn=ChunkedCrossEntropyLoss(num_chunks=3),
                train_loader=loader, val_loader=build_dataloader(make_samples(4, seed=2), 2, collate, shuffle=False),
                settings=settings), spec


@pytest.mark.parametrize("lora", [True, False])
def test_llama_resume_exact(lora):
    ckpt = FakeCheckpointer()
    parts, spec = _parts(lora)
    full = run_train(parts, checkpointer=ckpt, adapter_config=spec)
    assert full.global_step == 8 and full.final_val_loss is not None
    state = ckpt.load_checkpoint("step_2")
    if lora:
        merged = state["model"]
        assert not any("lora" in k for k in merged) and set(state["adapter"]) and "q_proj" in str(list(state["adapter"]))
    parts, spec = _parts(lora)
    resumed = run_train(parts, resume_state=state, adapter_config=spec)
    assert resumed.step_losses == full.step_losses[2:]
    assert resumed.final_val_loss == full.final_val_loss
