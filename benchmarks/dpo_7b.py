"""LoRA DPO throughput and memory on the Llama-2-7B shape (random weights, bf16).

tunekit's real preference-tuning path: the llama2 builder with a LoRASpec (rank 8, alpha 16 on
q_proj, v_proj, output_proj, w1, w2, w3) materialised in bf16 on the GPU, batches of padded
preference pairs (``tunekit.data.preference.preference_collate``: chosen rows then rejected
rows), the DPO objective (``tunekit.training.preference_losses.DPOLoss``, sigmoid, beta 0.1) and
``tunekit.training.train``. The reference log-probs come either from the same model with its
adapters disabled (one extra no-grad forward per step, no second copy of the weights:
``reference=adapters``) or from a pass before training (``reference=precomputed``). Each
configuration runs in a fresh process; the table is printed last.

    python benchmarks/dpo_7b.py                       # 7B, 2 pairs x 2048 tokens, AC off and on
    python benchmarks/dpo_7b.py --pairs 4 --ac on     # larger batch with activation checkpointing
    python benchmarks/dpo_7b.py --tiny --device cpu   # smoke run on the CPU (tiny shapes)

tokens/s counts every input token of the timed steps (2 x pairs x seq per step: both sides);
peak GiB is ``torch.cuda.max_memory_allocated()`` over the run (weights included). MFU counts
4 N FLOPs per token for the LoRA policy's forward + input-gradient and 2 N for the reference
forward (``reference=adapters`` only), N = 6.74e9; peak dense bf16 = --peak-tflops (989: H100 SXM
datasheet; pass the H200's figure, also 989, or your own).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    SHAPE_7B,
    SHAPE_TINY,
    base_param_count,
    build_tunekit,
    env_line,
    peak_gib,
    run_isolated,
    sync,
    worker_entry,
)


class SyntheticPairs:
    """Preference pairs of random tokens: a prompt of ``seq // 4`` tokens, replies to ``seq``."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(3, vocab, (n, 2, seq), generator=g)
        self.prompt = seq // 4

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, toks in zip(("chosen", "rejected"), self.tokens[i]):
            labels = toks.tolist()[1:] + [-100]
            labels[: self.prompt] = [-100] * self.prompt
            out[f"{side}_tokens"], out[f"{side}_labels"] = toks.tolist(), labels
        return out


def train_dpo(cfg: dict) -> dict:
    """One configuration through the real loop with the DPO objective."""
    from functools import partial

    from tunekit.data.preference import preference_collate
    from tunekit.run.settings import train_settings
    from tunekit.training import build_dataloader, prepare_model, train
    from tunekit.training.lr_schedulers import cosine_with_warmup
    from tunekit.training.preference_losses import DPOLoss, precompute_reference_logps

    device = cfg["device"]
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    model, _ = build_tunekit(shape, cfg["seq"], device, torch.bfloat16, lora=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-6, weight_decay=0.01, fused=device.startswith("cuda"))
    total = cfg["warmup"] + cfg["steps"]
    sched = cosine_with_warmup(opt, num_warmup_steps=1, num_training_steps=total)
    ds = SyntheticPairs(total * cfg["pairs"], cfg["seq"], shape["vocab_size"])
    collate = partial(preference_collate, pad_id=0)
    settings = train_settings(epochs=1, max_steps_per_epoch=total, device=device, dtype="bf16",
                              compile=cfg["compile"], activation_checkpointing=cfg["ac"],
                              log_every_n_steps=total, clip_grad_norm=1.0, handle_signals=False)
    prepare_model(model, settings)
    t_pre = 0.0
    if cfg["reference"] == "precomputed":
        sync(device)
        t = time.perf_counter()
        batches = (collate([ds[j] for j in range(i, i + cfg["pairs"])]) for i in range(0, len(ds), cfg["pairs"]))
        logps = precompute_reference_logps(model, batches, device=device, adapters_disabled=True)
        ds = _WithReference(ds, logps)
        sync(device)
        t_pre = time.perf_counter() - t
    loader = build_dataloader(ds, cfg["pairs"], collate, shuffle=False, pin_memory=device.startswith("cuda"))
    marks: dict[str, float] = {}

    def on_step_end(step: int) -> None:
        if step in (cfg["warmup"], total):
            sync(device)
            marks["t0" if step == cfg["warmup"] else "t1"] = time.perf_counter()

    res = train(model, optimizer=opt, lr_scheduler=sched, loss_fn=DPOLoss(beta=0.1), train_loader=loader,
                settings=settings, progress=False, on_step_end=on_step_end)
    dt = (marks["t1"] - marks["t0"]) / cfg["steps"]
    return {"step_s": dt, "tokens_per_s": 2 * cfg["pairs"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
            "loss": res.final_train_loss, "n_params": base_param_count(shape), "precompute_s": t_pre}


class _WithReference:
    def __init__(self, ds: SyntheticPairs, logps: torch.Tensor) -> None:
        self.ds, self.logps = ds, logps

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.ds[i], "reference_logps": self.logps[i].tolist()}


def main() -> None:
    if worker_entry({"tunekit": train_dpo}):
        return
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model shapes (CPU smoke run)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--pairs", type=int, default=2, help="preference pairs per step (2 sequences each)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 2048; tiny 64)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument("--ac", default="off,on", help="activation checkpointing settings to run: off,on")
    p.add_argument("--reference", default="adapters,precomputed", help="adapters,precomputed")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="per-layer torch.compile (default: on for CUDA, off for CPU)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU")
    p.add_argument("--timeout", type=float, default=540.0, help="seconds per configuration process")
    a = p.parse_args()
    a.seq = a.seq or (64 if a.tiny else 2048)
    a.steps = a.steps or (2 if a.tiny else 10)
    a.compile = a.device.startswith("cuda") if a.compile is None else a.compile
    rows = []
    for ac in [s.strip() == "on" for s in a.ac.split(",")]:
        for reference in [s.strip() for s in a.reference.split(",")]:
            cfg = dict(system="tunekit", tiny=a.tiny, device=a.device, pairs=a.pairs, seq=a.seq, steps=a.steps,
                       warmup=a.warmup, ac=ac, compile=a.compile, reference=reference)
            print(f"--- running LoRA DPO reference={reference} AC={'on' if ac else 'off'}", flush=True)
            r = run_isolated(os.path.abspath(__file__), cfg, a.timeout)
            print(f"--- done: { {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} }", flush=True)
            rows.append((cfg, r))
    print()
    print(f"{'tiny' if a.tiny else 'Llama-2-7B'} shape, LoRA DPO (sigmoid, beta 0.1), bf16, {a.pairs} pairs x 2 x "
          f"{a.seq} tokens per step, {a.steps} timed steps after {a.warmup} warm-up, fused AdamW, grad clip 1.0; "
          f"LoRA r=8 alpha=16 on q,v,o,gate,down,up; compile={a.compile}")
    print(env_line(a.device))
    print("| reference | AC | tokens/s | step ms | peak GiB | MFU | precompute s | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for cfg, r in rows:
        ac = "on" if cfg["ac"] else "off"
        if not r.get("ok"):
            print(f"| {cfg['reference']} | {ac} | failed: {r.get('error')} | | | | | |")
            continue
        flops = (6 if cfg["reference"] == "adapters" else 4) * r["n_params"]
        mfu = r["tokens_per_s"] * flops / (a.peak_tflops * 1e12)
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        print(f"| {cfg['reference']} | {ac} | {r['tokens_per_s']:,.0f} | {1000 * r['step_s']:.0f} | {peak} | "
              f"{100 * mfu:.1f}% | {r['precompute_s']:.1f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
