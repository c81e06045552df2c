"""Low-memory full fine-tuning on the Llama-2-7B shape: optimizer in backward + 8-bit AdamW +
activation checkpointing (+ activation offloading), next to the plain fused-AdamW baseline.

Every row runs tunekit's real training path (``tunekit.training.train``, bf16 weights,
``ChunkedCrossEntropyLoss``, compile per layer on CUDA) in a fresh process; the optimizer and
the loss come from ``tunekit.training.low_memory.low_memory_setup`` exactly as the recipe
builds them (``optimizer_in_backward=true``, ``optimizer=adamw8bit``, ``activation_offloading=true``):

    baseline    fused AdamW (bf16 states), AC on, clip 1.0            (docs/benchmarks.md: 50.4 GiB)
    lowmem      optimizer in backward + 8-bit AdamW, AC on            (no clipping: refused)
    lowmem+off  the same + activations offloaded to pinned CPU memory
    lowmem4     optimizer in backward + 4-bit AdamW, AC on            (states 1 byte/parameter)
    cpu-adamw   AdamW states and step in host memory, gradients moved there in backward, AC on

    python benchmarks/full_lowmem_7b.py                      # 7B, batch 2 x 2048 (torchtune's 7B_full_low_memory)
    python benchmarks/full_lowmem_7b.py --rows lowmem,lowmem+off
    python benchmarks/full_lowmem_7b.py --tiny --device cpu  # smoke run on the CPU (tiny shapes)

Peak GiB is ``torch.cuda.max_memory_allocated()`` from the start of training (weights
included). The printed memory budget splits it per phase (``tunekit.training.memory``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    SHAPE_7B,
    SHAPE_TINY,
    SyntheticLM,
    base_param_count,
    build_tunekit,
    env_line,
    peak_gib,
    run_isolated,
    stack_collate,
    sync,
    worker_entry,
)

ROWS = {
    "baseline": dict(optimizer="adamw", in_bwd=False, offload=False),
    "lowmem": dict(optimizer="adamw8bit", in_bwd=True, offload=False),
    "lowmem+off": dict(optimizer="adamw8bit", in_bwd=True, offload=True),
    "lowmem4": dict(optimizer="adamw4bit", in_bwd=True, offload=False),
    "cpu-adamw": dict(optimizer="adamw_cpu_offload", in_bwd=False, offload=False),
}


def train_row(cfg: dict) -> dict:
    from tunekit.run.settings import train_settings
    from tunekit.training import ChunkedCrossEntropyLoss, build_dataloader, prepare_loss, prepare_model, train
    from tunekit.training.low_memory import adamw4bit, adamw8bit, adamw_cpu_offload, low_memory_setup
    from tunekit.training.lr_schedulers import cosine_with_warmup
    from tunekit.training.memory import format_memory_budget, memory_budget

    device, row = cfg["device"], ROWS[cfg["row"]]
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    model, _ = build_tunekit(shape, cfg["seq"], device, torch.bfloat16, lora=False)
    total = cfg["warmup"] + cfg["steps"]
    settings = train_settings(
        epochs=1, max_steps_per_epoch=total, device=device, dtype="bf16", compile=cfg["compile"],
        activation_checkpointing=True, log_every_n_steps=total, handle_signals=False,
        clip_grad_norm=None if row["in_bwd"] or row["optimizer"] == "adamw_cpu_offload" else 1.0)
    prepare_model(model, settings)
    if row["optimizer"] in ("adamw8bit", "adamw4bit"):
        low_bit = adamw8bit if row["optimizer"] == "adamw8bit" else adamw4bit
        factory = functools.partial(low_bit, lr=1e-5, weight_decay=0.01)
    elif row["optimizer"] == "adamw_cpu_offload":
        factory = functools.partial(adamw_cpu_offload, lr=1e-5, weight_decay=0.01)
    else:
        factory = functools.partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.01, fused=device.startswith("cuda"))
    loss_fn = prepare_loss(ChunkedCrossEntropyLoss(num_chunks=8), settings)
    opt, loss_fn = low_memory_setup(model, factory, loss_fn, gradient_accumulation_steps=1,
                                    clip_grad_norm=settings.clip_grad_norm, optimizer_in_backward=row["in_bwd"],
                                    activation_offloading=row["offload"])
    sched = cosine_with_warmup(opt, num_warmup_steps=1, num_training_steps=total)
    ds = SyntheticLM(total * cfg["batch"], cfg["seq"], shape["vocab_size"])
    loader = build_dataloader(ds, cfg["batch"], stack_collate, shuffle=False, pin_memory=device.startswith("cuda"))
    marks: dict[str, Any] = {}

    def on_step_end(step: int) -> None:
        if step in (cfg["warmup"], total):
            sync(device)
            marks[step] = time.perf_counter()

    res = train(model, optimizer=opt, lr_scheduler=sched, loss_fn=loss_fn, train_loader=loader, settings=settings,
                progress=False, on_step_end=on_step_end)
    dt = (marks[total] - marks[cfg["warmup"]]) / cfg["steps"]
    budget = format_memory_budget(memory_budget(
        model, opt, device=torch.device(device),
        gradients_freed_in_backward=row["in_bwd"] or row["optimizer"] == "adamw_cpu_offload",
        logits_bytes=cfg["batch"] * cfg["seq"] * shape["vocab_size"] * 4 // 8))
    return {"step_s": dt, "tokens_per_s": cfg["batch"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
            "loss": res.final_train_loss, "n_params": base_param_count(shape), "budget": budget}


def main() -> None:
    if worker_entry({"tunekit": train_row}):
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--tiny", action="store_true", help="tiny model shapes (CPU smoke run)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=None, help="default 2048 (tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated among {', '.join(ROWS)}")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="per-layer torch.compile (default: on for CUDA, off for CPU)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration process")
    a = p.parse_args()
    a.seq = a.seq or (64 if a.tiny else 2048)
    a.steps = a.steps or (2 if a.tiny else 10)
    a.compile = a.device.startswith("cuda") if a.compile is None else a.compile
    results = []
    for name in [r.strip() for r in a.rows.split(",")]:
        cfg = dict(system="tunekit", row=name, tiny=a.tiny, device=a.device, batch=a.batch, seq=a.seq,
                   steps=a.steps, warmup=a.warmup, compile=a.compile)
        print(f"--- running {name}", flush=True)
        r = run_isolated(os.path.abspath(__file__), cfg, a.timeout)
        results.append((name, r))
        if r.get("budget"):
            print(f"{name}: {r['budget']}", flush=True)
    shape = "tiny" if a.tiny else "Llama-2-7B"
    print(f"\n{shape} shape, full fine-tune, bf16, batch {a.batch} x {a.seq}, {a.steps} timed steps after "
          f"{a.warmup} warm-up, AC on, chunked CE (8 chunks), compile={a.compile}")
    print(env_line(a.device))
    print("| row | optimizer | in backward | offload | tokens/s | step ms | peak GiB | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results:
        row = ROWS[name]
        head = f"| {name} | {row['optimizer']} | {row['in_bwd']} | {row['offload']} |"
        if not r.get("ok"):
            print(f"{head} FAILED: {r.get('error')} | | | |")
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        print(f"{head} {r['tokens_per_s']:,.0f} | {r['step_s'] * 1e3:.1f} | {peak} | {r['loss']:.3f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
