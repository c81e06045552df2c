"""Forward+backward step time of the Llama-2-7B shape: tunekit vs HF ``LlamaForCausalLM``.

Both models get random weights, the same shapes, dtype, batch and loss, and are measured in
the same process one after the other (the first is freed before the second is built).
Attention is restricted to SDPA's flash / memory-efficient kernels on CUDA, so a silent
fallback to the math kernel is an error rather than a slow number.

    python benchmarks/model_step.py                        # 7B, bf16, batch 1 x 2048, full grads
    python benchmarks/model_step.py --mode lora --batch 2  # LoRA r=8 on q,v,o,w1,w2,w3 (+ PEFT)
    python benchmarks/model_step.py --tiny                 # CPU smoke check (tiny shapes)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHAPE_7B, SHAPE_TINY, build_hf, build_tunekit  # noqa: E402

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class Result:
    system: str
    backend: str
    step_s: float
    tokens_per_s: float
    peak_gib: float | None
    loss: float


def make_step(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, hf: bool) -> Callable[[], torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        logits = model(input_ids=tokens).logits if hf else model(tokens)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        for p in params:
            p.grad = None
        return loss.detach()

    return step


def pick_backend(step: Callable[[], torch.Tensor], device: str, allow_math: bool) -> str:
    """The fastest SDPA backend that accepts this model's attention calls."""
    for name in ("flash", "efficient", "math"):
        if name == "math" and device == "cuda" and not allow_math:
            break
        try:
            with sdpa_kernel([BACKENDS[name]]):
                step()
            return name
        except RuntimeError as e:
            if "No available kernel" not in str(e) and "No viable backend" not in str(e):
                raise
    raise RuntimeError("SDPA would fall back to the math kernel (pass --allow-math to measure it anyway)")


def measure(system: str, build: Callable[[], nn.Module], args, device: str, hf: bool) -> Result:
    model = build()
    if args.compile:
        layers = model.get_decoder().layers if hf else model.layers
        for layer in layers:
            layer.compile()
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = SHAPE_TINY["vocab_size"] if args.tiny else SHAPE_7B["vocab_size"]
    tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
    labels = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
    step = make_step(model, tokens, labels, hf)
    backend = pick_backend(step, device, args.allow_math)
    allowed = [BACKENDS[backend]] if device == "cpu" else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if backend == "math":
        allowed = [SDPBackend.MATH]
    with sdpa_kernel(allowed):
        for _ in range(args.warmup):
            step()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()  # no host sync inside the timed loop
        sync(device)
        dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    result = Result(system, backend, dt, args.batch * args.seq / dt, peak, loss.item())
    del model, step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke check)")
    p.add_argument("--mode", choices=["full", "lora"], default="full", help="train all weights or LoRA only")
    p.add_argument("--batch", type=int, default=None, help="default 1 (tiny: 2)")
    p.add_argument("--seq", type=int, default=None, help="default 2048 (tiny: 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny: 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (both systems)")
    p.add_argument("--no-hf", action="store_true", help="skip the HF reference")
    p.add_argument("--allow-math", action="store_true", help="on CUDA, measure even if only the math kernel fits")
    args = p.parse_args()
    args.batch = args.batch or (2 if args.tiny else 1)
    args.seq = args.seq or (128 if args.tiny else 2048)
    args.steps = args.steps or (3 if args.tiny else 10)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    shape = SHAPE_TINY if args.tiny else SHAPE_7B
    lora = args.mode == "lora"
    device = args.device

    runs = [("tunekit", lambda: build_tunekit(shape, args.seq, device, dtype, lora)[0], False)]
    if not args.no_hf:
        hf_name = "HF" + (" + PEFT" if lora else "")
        runs.append((hf_name, lambda: build_hf(shape, args.seq, device, dtype, lora, peft_bf16=True), True))
    results = [measure(name, build, args, device, hf) for name, build, hf in runs]

    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"\n{'tiny' if args.tiny else '7B'} shape, {args.mode}, {args.dtype}, batch {args.batch} x seq {args.seq}, "
        f"{args.steps} steps after {args.warmup} warm-up, compile={args.compile}, device: {gpu}, "
        f"torch {torch.__version__}"
    )
    print("| system | SDPA backend | step ms | tokens/s | peak GiB | loss |\n|---|---|---|---|---|---|")
    for r in results:
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "n/a"
        print(f"| {r.system} | {r.backend} | {r.step_s * 1e3:.1f} | {r.tokens_per_s:,.0f} | {peak} | {r.loss:.3f} |")
    if len(results) == 2:
        print(f"tunekit / {results[1].system} tokens/s: {results[0].tokens_per_s / results[1].tokens_per_s:.2f}x")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
