"""FSDP2 scaling: full and LoRA fine-tuning on 1 and N GPUs, tokens/s per GPU and peak memory.

One command (it starts torchrun itself, once per mode and GPU count)::

    python benchmarks/distributed_scaling.py --gpus 1,2 --steps 10            # llama2_7b shape
    python benchmarks/distributed_scaling.py --tiny --device cpu --gpus 1,2   # CPU smoke test

Every run trains through ``tunekit.training.train`` with random weights: the model is built on
the meta device (bf16 storage), sharded per decoder layer with ``shard_model`` (FSDP2,
``MixedPrecisionPolicy(bf16, reduce fp32)``, activation checkpointing on), then each rank
materialises only its shards. The 1-GPU run uses the same FSDP2 code with a world size of 1
(no communication), so the efficiency isolates the cost of sharding across GPUs:
``efficiency = (tokens/s per GPU with N GPUs) / (tokens/s with 1 GPU)``.

NVLink multicast stays off in every process this script starts (and in itself):
``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``
(the lent H200 hosts must not use NVLS; see KINDS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NO_MULTICAST)
REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", default="1,2", help="comma-separated GPU (process) counts")
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--model", default="llama2_7b", help="tunekit.models.llama2 builder")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=2, help="per GPU")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--no-ac", action="store_true", help="activation checkpointing off")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="llama2_tiny, seq 64, batch 2 (smoke test)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tiny:
        a.model, a.seq_len, a.batch_size = "llama2_tiny", 64, 2
    return a


# ----------------------------------------------------------------------------- worker (one rank)


def worker(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.utils.data import Dataset

    from tunekit import distributed as D
    from tunekit.models import llama2
    from tunekit.modules.peft import LoRASpec, set_trainable_params
    from tunekit.run.settings import train_settings
    from tunekit.training import build_dataloader, prepare_model, shard_model, train
    from tunekit.training.losses import CrossEntropyLoss
    from tunekit.training.lr_schedulers import constant_with_warmup
    from tunekit.training.prepare import materialize_random

    cuda = a.device == "cuda"
    D.init_distributed(a.device)
    if not dist.is_initialized():  # world size 1: same FSDP code path, no communication
        if cuda:
            torch.cuda.set_device(D.get_local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = "bf16" if cuda else "fp32"
    lora = a.mode == "lora"
    spec = LoRASpec(rank=a.lora_rank, alpha=2.0 * a.lora_rank, targets=["q_proj", "v_proj"]) if lora else None
    builder = getattr(llama2, a.model)
    with torch.device("meta"):
        model = builder(lora=spec) if a.tiny else builder(lora=spec, max_seq_len=a.seq_len)
        if cuda:
            model.to(dtype=torch.bfloat16)  # bf16 storage: weights, grads and AdamW state
    shard_model(model, dtype=dtype, activation_checkpointing=not a.no_ac)
    materialize_random(model)
    if spec is not None:
        set_trainable_params(model)
    params = [p for p in model.parameters() if p.requires_grad]
    vocab = model.tok_embeddings.num_embeddings

    class Random(Dataset):
        def __len__(self) -> int:
            return (a.steps + a.warmup) * a.batch_size * world

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            t = torch.randint(0, vocab, (a.seq_len + 1,), generator=g)
            return {"tokens": t[:-1], "labels": t[1:]}

    def collate(b: list[dict]) -> dict:
        return {k: torch.stack([s[k] for s in b]) for k in ("tokens", "labels")}

    loader = build_dataloader(Random(), a.batch_size, collate, shuffle=False)
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    sched = constant_with_warmup(optimizer, num_warmup_steps=0)
    times: list[float] = []

    def on_step_end(step: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        if step == a.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()

    settings = train_settings(epochs=1, log_every_n_steps=10**9, clip_grad_norm=1.0, device=a.device, dtype=dtype,
                              handle_signals=False, activation_checkpointing=not a.no_ac)
    prepare_model(model, settings)
    result = train(model, optimizer=optimizer, lr_scheduler=sched, loss_fn=CrossEntropyLoss(),
                   train_loader=loader, settings=settings, progress=False, on_step_end=on_step_end)
    timed = times[a.warmup:]
    seconds = timed[-1] - times[a.warmup - 1] if a.warmup > 0 else timed[-1] - times[0]
    n_steps = len(timed) if a.warmup > 0 else len(timed) - 1
    tokens_per_rank = n_steps * a.batch_size * a.seq_len
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    peak_t = torch.tensor([peak if peak == peak else 0.0], dtype=torch.float64)
    dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        Path(a.result_file).write_text(json.dumps({
            "mode": a.mode, "gpus": world, "model": a.model, "params_b": n_params / 1e9,
            "trainable_b": sum(p.numel() for p in params) / 1e9,
            "seq_len": a.seq_len, "batch_per_gpu": a.batch_size, "steps": n_steps,
            "tokens_per_s_per_gpu": tokens_per_rank / seconds, "step_s": seconds / n_steps,
            "peak_mem_gib": float(peak_t) if cuda else None,
            "final_loss": result.final_train_loss,
        }))
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(a: argparse.Namespace, mode: str, gpus: int, out: Path) -> dict:
    result = out / f"{mode}_{gpus}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__, "--worker",
           "--mode", mode, "--result-file", str(result), "--model", a.model, "--seq-len", str(a.seq_len),
           "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--lora-rank", str(a.lora_rank), "--device", a.device]
    cmd += ["--tiny"] * a.tiny + ["--no-ac"] * a.no_ac
    env = {**os.environ, **NO_MULTICAST,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or not result.is_file():
        return {"mode": mode, "gpus": gpus, "error": f"exit status {proc.returncode}"}
    return json.loads(result.read_text())


def table(rows: list[dict]) -> str:
    base = {r["mode"]: r["tokens_per_s_per_gpu"] for r in rows if r.get("gpus") == 1 and "error" not in r}
    lines = ["| mode | GPUs | tokens/s per GPU | total tokens/s | step (s) | peak mem (GiB) | scaling efficiency |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['gpus']} | failed: {r['error']} | | | | |")
            continue
        eff = r["tokens_per_s_per_gpu"] / base[r["mode"]] if r["mode"] in base else float("nan")
        peak = "n/a" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        lines.append(f"| {r['mode']} | {r['gpus']} | {r['tokens_per_s_per_gpu']:,.0f} | "
                     f"{r['tokens_per_s_per_gpu'] * r['gpus']:,.0f} | {r['step_s']:.3f} | {peak} | {eff:.1%} |")
    return "\n".join(lines)


def main() -> None:
    a = _args()
    if a.worker:
        worker(a)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes.split(","):
            for gpus in (int(g) for g in a.gpus.split(",")):
                rows.append(run_one(a, mode, gpus, Path(tmp)))
    print(f"\n{a.model}, seq {a.seq_len}, batch {a.batch_size}/GPU, {a.steps} timed steps after "
          f"{a.warmup} warm-up, AC {'off' if a.no_ac else 'on'}, device {a.device}; "
          f"NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1\n")
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
