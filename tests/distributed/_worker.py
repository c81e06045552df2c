"""Training harness for the distributed tests: run under torchrun (2 ranks) or in-process (1).

``python -m torch.distributed.run --nproc-per-node 2 tests/distributed/_worker.py OUT_DIR``
runs the scenarios below with FSDP2 (fp32, gloo) and writes ``OUT_DIR/<name>.json`` (rank 0)
and ``OUT_DIR/<name>.rank<r>.json`` (every rank) with the per-step losses.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from tunekit import distributed as D
from tunekit.checkpointing import FullModelHFCheckpointer
from tunekit.config.resolvers import asset_path
from tunekit.models.llama2 import llama2_tiny
from tunekit.modules.peft import LoRASpec, set_trainable_params
from tunekit.run.resume import check_resume_fits, load_checkpoint_dir, restore
from tunekit.run.saver import CheckpointSaver
from tunekit.run.settings import train_settings
from tunekit.training import build_dataloader, prepare_model, shard_model, train
from tunekit.training.losses import CrossEntropyLoss
from tunekit.training.lr_schedulers import constant_with_warmup

HF_DIR = asset_path("tiny_llama2/hf")
N_SAMPLES = 48


def samples(n: int = N_SAMPLES, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(8, 33, (1,), generator=g))
        tokens = torch.randint(3, 512, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length // 2, (1,), generator=g))
        out.append({"tokens": tokens, "labels": [-100] * prompt + tokens[prompt + 1:] + [-100]})
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    n = max(len(s["tokens"]) for s in batch)
    tokens = torch.zeros(len(batch), n, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, s in enumerate(batch):
        tokens[i, : len(s["tokens"])] = torch.tensor(s["tokens"])
        labels[i, : len(s["labels"])] = torch.tensor(s["labels"])
    return {"tokens": tokens, "labels": labels}


def base_weights() -> dict[str, torch.Tensor]:
    """The same random tiny-model weights in every process (seeded)."""
    torch.manual_seed(1234)
    return llama2_tiny().state_dict()


def build(lora: bool, world_size: int) -> torch.nn.Module:
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "output"]) if lora else None
    sd = base_weights()
    if lora:  # fixed non-zero adapters so they matter from step 1
        torch.manual_seed(99)
        ref = llama2_tiny(lora=spec)
        sd = {**sd, **{k: torch.randn_like(v) * 0.05 for k, v in ref.state_dict().items() if "lora_" in k}}
    if world_size > 1:
        with torch.device("meta"):
            model = llama2_tiny(lora=spec)
        shard_model(model, dtype="fp32")
        D.load_full_state_dict(model, sd if D.is_rank_zero() else {}, strict=True)
    else:
        model = llama2_tiny(lora=spec)
        model.load_state_dict(sd)
    if lora:
        set_trainable_params(model)
    return model


QLORA = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "output"], quantize_base="nf4")


def build_qlora(world_size: int) -> torch.nn.Module:
    """QLoRA through the recipes' builder: the bundled tiny checkpoint as the base, fresh adapters
    (seeded). One process quantizes with the 2-rank NF4 format (scaler blocks that split in two),
    so the two runs hold the same 4-bit weights."""
    from functools import partial

    from tunekit.modules.peft import quantize_base_
    from tunekit.run.model import build_training_model

    torch.manual_seed(5)
    settings = train_settings(epochs=1, device="cpu", dtype="fp32")
    model = build_training_model(partial(llama2_tiny), lambda: FullModelHFCheckpointer(HF_DIR, "/tmp").load_checkpoint()["model"],
                                 settings=settings, lora=QLORA, world_size=world_size, rank=D.get_rank())
    if world_size == 1:
        quantize_base_(model, shards=2)
    return model


def run(name: str, out: Path, *, lora: bool = False, batch_size: int, ga: int = 1, steps: int = 4,
        save_every: int | None = None, resume_from: str | None = None, kill_at: int | None = None,
        ckpt_dir: Path | None = None, qlora: bool = False) -> dict[str, Any]:
    world_size = D.get_world_size()
    lora = lora or qlora
    model = build_qlora(world_size) if qlora else build(lora, world_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    scheduler = constant_with_warmup(optimizer, num_warmup_steps=2)
    loader = build_dataloader(samples(), batch_size, collate, seed=7)
    checkpointer = FullModelHFCheckpointer(HF_DIR, ckpt_dir or out / name)
    settings = train_settings(epochs=1, max_steps_per_epoch=steps, gradient_accumulation_steps=ga,
                              save_every_n_steps=save_every, seed=0, handle_signals=kill_at is not None,
                              device="cpu", clip_grad_norm=1.0, log_every_n_steps=1)
    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj", "output"]) if lora else None
    spec = QLORA if qlora else spec
    prepare_model(model, settings)
    start = None
    if resume_from:
        res = load_checkpoint_dir(Path(resume_from), lora=lora)
        check_resume_fits(model, res, lora=lora)
        start = restore(res, model=model, optimizer=optimizer, lr_scheduler=scheduler, train_loader=loader,
                        settings=settings, lora=lora)
    saver = CheckpointSaver(checkpointer, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                            train_loader=loader, settings=settings, adapter_config=spec)

    def on_step_end(step: int) -> None:
        if kill_at is not None and step == kill_at and D.get_rank() == world_size - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # one rank only: all must stop together

    result = train(model, optimizer=optimizer, lr_scheduler=scheduler, loss_fn=CrossEntropyLoss(),
                   train_loader=loader, saver=saver, settings=settings, start=start, progress=False,
                   on_step_end=on_step_end)
    record = {"losses": result.step_losses, "global_step": result.global_step,
              "interrupted": result.interrupted, "checkpoints": result.checkpoints,
              "world_size": world_size}
    (out / f"{name}.rank{D.get_rank()}.json").write_text(json.dumps(record))
    return record


def main(out: Path) -> None:
    D.init_distributed("cpu")
    run("full", out, batch_size=2, steps=4, save_every=2)
    run("lora", out, lora=True, batch_size=1, ga=2, steps=3)
    run("sigterm", out, batch_size=2, steps=4, kill_at=2)
    run("qlora", out, qlora=True, batch_size=1, ga=2, steps=3, save_every=2)
    run("qlora_resumed", out, qlora=True, batch_size=1, ga=2, steps=3, resume_from=str(out / "qlora/step_2"))
    D.destroy_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
