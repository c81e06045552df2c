"""Manual GPU check of the loop (not collected by pytest): ``PYTHONPATH=src python tests/training/gpu_smoke.py``.

Runs a small Llama with LoRA through ``train`` on CUDA in bf16 with the chunked loss, with and
without compile / activation checkpointing, counts host syncs in the steady state, and checks
resume on the GPU.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import FakeCheckpointer, run_train  # noqa: E402

from tunekit.models.llama2 import llama2  # noqa: E402
from tunekit.modules.peft import LoRASpec, set_trainable_params  # noqa: E402
from tunekit.run.settings import train_settings  # noqa: E402
from tunekit.training import (  # noqa: E402
    ChunkedCrossEntropyLoss,
    CrossEntropyLoss,
    build_dataloader,
    num_training_steps,
)
from tunekit.training.lr_schedulers import cosine_with_warmup  # noqa: E402

SEQ, VOCAB = 1024, 32000


def samples(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, VOCAB, (SEQ,), generator=g).tolist()
        labels = [-100] * (SEQ // 2) + tokens[SEQ // 2 + 1 :] + [-100]
        out.append({"tokens": tokens, "labels": labels})
    return out


def collate(batch: list[dict]) -> dict:
    return {"tokens": torch.tensor([b["tokens"] for b in batch]),
            "labels": torch.tensor([b["labels"] for b in batch])}


def parts(*, compile_: bool, ac: bool, chunked: bool, steps: int, log_every: int, lora: bool = True):
    torch.manual_seed(0)
    spec = LoRASpec(rank=8, alpha=16.0, targets=["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"]) if lora else None
    with torch.device("cuda"):
        model = llama2(vocab_size=VOCAB, num_layers=8, num_heads=16, num_kv_heads=16, embed_dim=1024,
                       intermediate_dim=2816, max_seq_len=SEQ, lora=spec)
    if lora:
        set_trainable_params(model)
    settings = train_settings(epochs=1, max_steps_per_epoch=steps, device="cuda", dtype="bf16",
                             compile=compile_, activation_checkpointing=ac, log_every_n_steps=log_every,
                             save_every_n_steps=None, seed=0, clip_grad_norm=1.0)
    loader = build_dataloader(samples(4 * steps), 4, collate, seed=0, pin_memory=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    sched = cosine_with_warmup(opt, 2, num_training_steps(len(loader), settings))
    loss = ChunkedCrossEntropyLoss() if chunked else CrossEntropyLoss()
    return dict(model=model, optimizer=opt, lr_scheduler=sched, loss_fn=loss, train_loader=loader,
                settings=settings), spec


def timed(name: str, **kw) -> None:
    p, spec = parts(**kw)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    r = run_train(p, adapter_config=spec)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    toks = kw["steps"] * 4 * SEQ
    print(f"{name:40s} {toks / dt:10,.0f} tok/s (incl. warmup/compile)  peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB  losses {r.step_losses[0]:.3f}->{r.step_losses[-1]:.3f}")


def count_syncs(chunked: bool) -> None:
    p, spec = parts(compile_=False, ac=False, chunked=chunked, steps=12, log_every=1000)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_train(p, adapter_config=spec)
    torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    print(f"host syncs over 12 steps (chunked={chunked}): {len(syncs)}; kinds: {sorted(set(syncs))[:4]}")


def resume_check() -> None:
    ckpt = FakeCheckpointer()
    p, spec = parts(compile_=False, ac=False, chunked=True, steps=6, log_every=1)
    p["settings"].save_every_n_steps = 3
    full = run_train(p, checkpointer=ckpt, adapter_config=spec)
    q, spec = parts(compile_=False, ac=False, chunked=True, steps=6, log_every=1)
    resumed = run_train(q, resume_state=ckpt.load_checkpoint("step_3"), adapter_config=spec)
    diff = max(abs(a - b) for a, b in zip(full.step_losses[3:], resumed.step_losses))
    print(f"GPU resume: max |loss diff| after step 3 = {diff:.3g}")


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name())
    count_syncs(chunked=False)
    count_syncs(chunked=True)
    resume_check()
    timed("eager, CE", compile_=False, ac=False, chunked=False, steps=20, log_every=10)
    timed("eager, chunked CE", compile_=False, ac=False, chunked=True, steps=20, log_every=10)
    timed("eager, chunked CE, AC", compile_=False, ac=True, chunked=True, steps=20, log_every=10)
    timed("compiled, chunked CE", compile_=True, ac=False, chunked=True, steps=30, log_every=10)
    timed("compiled, chunked CE, AC", compile_=True, ac=True, chunked=True, steps=30, log_every=10)
    timed("compiled, full FT, chunked", compile_=True, ac=False, chunked=True, steps=30, log_every=10, lora=False)
