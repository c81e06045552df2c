"""Packed rows at unpacked speed: the recipe's packed path vs the unpacked benchmark path, 7B LoRA.

Every row trains the Llama-2-7B shape (bf16, LoRA r8/alpha16 on q, v, o and the MLP, fused
AdamW, chunked CE unless --loss fused) through ``tunekit.training.train`` in a fresh process:

- ``unpacked``: random 2 x 2048 rows, no documents (what ``benchmarks/lora_7b.py`` times);
- ``auto``: the recipe's ``packed=true`` path: synthetic documents (lengths uniform in
  --doc-min..--doc-max, Alpaca-like) packed by ``PackedDataset`` and collated by
  ``packed_collate`` into ``doc_ids`` + ``cu_seqlens``; ``attention=auto`` (flash varlen on CUDA
  bf16: no mask at all);
- ``dense``: the same rows with the dense ``[b, s, s]`` mask built in collate (the path before
  this change: SDPA with a mask, no flash kernel, memory quadratic in the row);
- ``flex``: ``attention=flex`` (flex-attention block mask, compiled);
- ``long``: one packed row of --long-seq tokens (default 32768; documents of --long-doc-min ..
  --long-doc-max tokens, default 4096..32768: long-context data) with activation checkpointing,
  ``attention=auto``; ``long-dense`` the same with the dense mask (expect the memory to show
  why it does not scale; off by default).

    python benchmarks/packed_7b.py                                  # 7B on CUDA: unpacked,auto,dense,flex,long
    python benchmarks/packed_7b.py --rows auto,long --ac on         # a subset, AC on for every row
    python benchmarks/packed_7b.py --tiny --device cpu              # smoke run on the CPU (tiny shapes)

tokens/s counts every position of the timed rows (padding included, as in lora_7b.py); the
packed rows also report the share of padding. MFU as in lora_7b.py (4N per token, 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import WORKERS, env_line, run_isolated, worker_entry  # noqa: E402

ROWS = ("unpacked", "auto", "dense", "flex", "long", "long-dense")


def row_config(name: str, a: argparse.Namespace) -> dict:
    long = name.startswith("long")
    cfg = dict(system="tunekit", mode=a.mode, tiny=a.tiny, device=a.device, steps=a.steps, warmup=a.warmup,
               compile=a.compile, ac=a.ac == "on" or long, ac_every_k=1, loss=a.loss, fp8_base=a.fp8,
               batch=1 if long else a.batch, seq=a.long_seq if long else a.seq, variant=name,
               doc_min=a.long_doc_min if long else a.doc_min, doc_max=a.long_doc_max if long else a.doc_max)
    if name != "unpacked":
        cfg.update(packed=True, attention="dense" if name.endswith("dense") else
                   ("flex" if name == "flex" else "auto"))
    return cfg


def main() -> None:
    if worker_entry(WORKERS):
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", default="lora", choices=("lora", "full"))
    p.add_argument("--rows", default="unpacked,auto,dense,flex,long", help=f"comma-separated of {', '.join(ROWS)}")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=None, help="row length (default 2048; tiny 64)")
    p.add_argument("--long-seq", type=int, default=None, help="the long row (default 32768; tiny 256)")
    p.add_argument("--doc-min", type=int, default=None, help="shortest document (default 64; tiny 4)")
    p.add_argument("--doc-max", type=int, default=None, help="longest document (default 512; tiny 24)")
    p.add_argument("--long-doc-min", type=int, default=None, help="long row's shortest document (default long-seq/8)")
    p.add_argument("--long-doc-max", type=int, default=None, help="long row's longest document (default long-seq)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ac", default="off", choices=("off", "on"), help="AC for the 2048 rows (long rows: always on)")
    p.add_argument("--loss", default="chunked", choices=("chunked", "fused"))
    p.add_argument("--fp8", action="store_true", help="fp8_base=true (Hopper, LoRA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="per-layer compile (default: on for CUDA)")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--timeout", type=float, default=420.0, help="seconds per row's process")
    a = p.parse_args()
    a.seq = a.seq or (64 if a.tiny else 2048)
    a.long_seq = a.long_seq or (256 if a.tiny else 32768)
    a.doc_min = a.doc_min or (4 if a.tiny else 64)
    a.doc_max = a.doc_max or (24 if a.tiny else 512)
    a.long_doc_min = a.long_doc_min or a.long_seq // 8
    a.long_doc_max = a.long_doc_max or a.long_seq
    a.steps = a.steps or (2 if a.tiny else 10)
    a.compile = a.device.startswith("cuda") if a.compile is None else a.compile
    rows = []
    for name in [r.strip() for r in a.rows.split(",") if r.strip()]:
        if name not in ROWS:
            rows.append((name, {}, {"ok": False, "error": f"unknown row (one of {', '.join(ROWS)})"}))
            continue
        cfg = row_config(name, a)
        print(f"--- running {name}: {cfg}", flush=True)
        try:
            r = run_isolated(os.path.abspath(__file__), cfg, a.timeout)
        except Exception as e:  # the table still prints
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"--- done {name}: { {k: v for k, v in r.items() if k != 'profile'} }", flush=True)
        rows.append((name, cfg, r))
    print_table(a, rows)


def print_table(a: argparse.Namespace, rows: list) -> None:
    k = 4 if a.mode == "lora" else 6
    print(f"\n{'tiny' if a.tiny else 'Llama-2-7B'} shape, {a.mode}, bf16, loss={a.loss}, fp8_base={a.fp8}, "
          f"compile={a.compile}, documents {a.doc_min}-{a.doc_max} tokens, {a.steps} timed steps after {a.warmup}")
    print(env_line(a.device))
    print(f"command: python {' '.join(sys.argv)}")
    print(f"MFU = tokens/s x {k} N / {a.peak_tflops:g} TFLOP/s")
    print("| row | batch x seq | AC | attention | tokens/s | peak GiB | MFU | vs unpacked | loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref = next((r["tokens_per_s"] for n, _, r in rows if n == "unpacked" and r.get("ok")), None)
    for name, cfg, r in rows:
        shape = f"{cfg.get('batch', '?')} x {cfg.get('seq', '?')}"
        attn = "none (causal)" if name == "unpacked" else cfg.get("attention", "?")
        ac = "on" if cfg.get("ac") else "off"
        if not r.get("ok"):
            print(f"| {name} | {shape} | {ac} | {attn} | FAILED: {r.get('error')} | | | | |")
            continue
        mfu = r["tokens_per_s"] * k * r["n_params"] / (a.peak_tflops * 1e12)
        peak = "n/a" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        rel = "" if ref is None or cfg.get("seq") != a.seq else f"{r['tokens_per_s'] / ref:.3f}x"
        loss = "n/a" if r.get("loss") is None else f"{r['loss']:.3f}"
        print(f"| {name} | {shape} | {ac} | {attn} | {r['tokens_per_s']:,.0f} | {peak} | {100 * mfu:.1f}% | "
              f"{rel} | {loss} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
