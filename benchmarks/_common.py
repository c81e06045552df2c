"""Shared pieces of the 7B benchmarks: shapes, model builders, the isolated-subprocess runner,
the training measurement (tunekit through ``tunekit.training.train``; HF/PEFT through a plain
loop), the profile summary and the table.

Conventions (printed with every table):

- tokens/s counts every input token (batch x seq) of the timed optimizer steps; warm-up steps
  (which include torch.compile) are excluded; timing uses a device sync before and after.
- peak GiB is ``torch.cuda.max_memory_allocated()`` from the start of training (weights
  included) to the end of the run, in a fresh process per configuration.
- MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s, with FLOPs per token = 6 N for a
  full fine-tune and 4 N for LoRA (forward 2 N + input-gradient 2 N, no weight gradients; the
  adapters' own FLOPs and attention's s^2 term are not counted, nor the recompute of
  activation checkpointing). N = parameters of the base model (6.74e9 for the 7B shape).
  ``--peak-tflops`` defaults to 989, the H100 SXM datasheet dense bf16 rate.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

SHAPE_7B = dict(
    vocab_size=32_000, num_layers=32, num_heads=32, num_kv_heads=32, embed_dim=4096, intermediate_dim=11_008
)
SHAPE_TINY = dict(vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128, intermediate_dim=352)
LORA_TARGETS = ["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"]
PEFT_NAMES = {
    "q_proj": "q_proj", "v_proj": "v_proj", "output_proj": "o_proj",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj",
}  # fmt: skip
RESULT_PREFIX = "@@RESULT "


# ---------------------------------------------------------------------------- models


def base_param_count(shape: dict) -> int:
    """Parameters of the plain (non-LoRA) Llama model of ``shape`` (untied embeddings)."""
    d, f, v, L = shape["embed_dim"], shape["intermediate_dim"], shape["vocab_size"], shape["num_layers"]
    hd = d // shape["num_heads"]
    kv = shape["num_kv_heads"] * hd
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d
    return L * per_layer + 2 * v * d + d


def build_tunekit(shape: dict, seq: int, device: str, dtype: torch.dtype, lora: bool, rank: int = 8,
                  alpha: float = 16.0, max_seq_len: int | None = None):
    from tunekit.models.llama2 import init_on_device, llama2
    from tunekit.modules.peft import LoRASpec, set_trainable_params

    spec = LoRASpec(rank=rank, alpha=alpha, targets=LORA_TARGETS) if lora else None
    with torch.device("meta"):
        model = llama2(**shape, max_seq_len=max_seq_len or max(seq, 4096), lora=spec)
    init_on_device(model, device, dtype=dtype)
    if lora:
        set_trainable_params(model)
    else:
        model.requires_grad_(True)
    return model, spec


def build_named(name: str, seq: int, device: str, dtype: torch.dtype, lora: bool, rank: int = 8,
                alpha: float = 16.0):
    """A published configuration by its conf/model name (``llama3_1_8b``, ``qwen2_5_7b``, ...),
    random weights, through the family's own builder. Returns (model, spec, base parameter count)."""
    import importlib

    from tunekit.models.llama2 import init_on_device
    from tunekit.modules.peft import LoRASpec, set_trainable_params

    family = {"llama2": "llama2", "llama3": "llama3", "mistral": "mistral", "qwen2": "qwen2",
              "qwen3": "qwen3"}[name.split("_")[0]]
    builder = getattr(importlib.import_module(f"tunekit.models.{family}"), name)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in builder(max_seq_len=max(seq, 4096)).parameters())
        spec = LoRASpec(rank=rank, alpha=alpha, targets=LORA_TARGETS) if lora else None
        model = builder(lora=spec, max_seq_len=max(seq, 4096))
    init_on_device(model, device, dtype=dtype)
    if lora:
        set_trainable_params(model)
    else:
        model.requires_grad_(True)
    return model, spec, n_params


def hf_config(shape: dict, max_pos: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["embed_dim"], intermediate_size=shape["intermediate_dim"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"], max_position_embeddings=max_pos, rms_norm_eps=1e-5,
        attn_implementation="sdpa", use_cache=False, tie_word_embeddings=False,
    )  # fmt: skip


def build_hf(shape: dict, seq: int, device: str, dtype: torch.dtype, lora: bool, peft_bf16: bool = False):
    """HF ``LlamaForCausalLM`` (SDPA attention) in ``dtype``, + PEFT LoRA on the same targets.

    ``peft_bf16=False`` keeps PEFT's default (``autocast_adapter_dtype=True``: adapters in
    fp32 on a bf16 model), which is what ``get_peft_model`` gives a user.
    """
    from transformers import LlamaForCausalLM

    cfg = hf_config(shape, max(seq, 4096))
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    if lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[PEFT_NAMES[t] for t in LORA_TARGETS])
        model = get_peft_model(model, lcfg, autocast_adapter_dtype=not peft_bf16)
    else:
        model.requires_grad_(True)
    return model


# ---------------------------------------------------------------------------- data


class SyntheticLM(torch.utils.data.Dataset):
    """``n`` random sequences; labels are the next token (last position ignored)."""

    def __init__(self, n: int, seq: int, vocab: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq), generator=g)
        self.labels = torch.cat([self.tokens[:, 1:], torch.full((n, 1), -100)], dim=1)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[i], "labels": self.labels[i]}


def stack_collate(batch: list[dict]) -> dict:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def synthetic_documents(n_tokens: int, vocab: int, min_len: int, max_len: int, seed: int = 0) -> list[dict]:
    """Random documents of uniform lengths in [min_len, max_len] (Alpaca-like when 64..512),
    ``n_tokens`` in all; labels are the next token, the first quarter of each ignored (prompt)."""
    g = torch.Generator().manual_seed(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        toks = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = toks[1:] + [-100]
        labels[: n // 4] = [-100] * (n // 4)
        docs.append({"tokens": toks, "labels": labels})
        total += n
    return docs


def packed_loader_parts(cfg: dict, shape: dict, n_rows: int):
    """(dataset, collate) as the recipe builds them with packed=true: PackedDataset + packed_collate."""
    from functools import partial

    from tunekit.data import PackedDataset, packed_collate

    factor = 1.2
    while True:  # greedy packing pads each row: make documents until there are enough rows
        docs = synthetic_documents(int(n_rows * cfg["seq"] * factor), shape["vocab_size"], cfg.get("doc_min", 64),
                                   cfg.get("doc_max", 512))
        ds = PackedDataset(docs, max_seq_len=cfg["seq"], pad_id=0)
        if len(ds) >= n_rows or factor > 8:
            break
        factor *= 1.5
    return ds, partial(packed_collate, dense_mask=cfg.get("attention") == "dense")


# ---------------------------------------------------------------------------- profile


def _category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention (SDPA)"
    if any(k in n for k in ("adam", "multi_tensor", "foreach", "lpnorm", "norm_kernel")) and "rms" not in n:
        return "optimizer + grad clip"
    if any(k in n for k in ("softmax", "nll", "cross_entropy")):
        return "loss (softmax / nll)"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "nvjet", "sm90_", "cublas", "gemv", "splitk", "matmul")):
        return "matmul (cuBLAS)"
    if "memcpy" in n or "memset" in n:
        return "memcpy / memset"
    if n.startswith("triton_"):
        return "fused elementwise / norms (Triton)"
    return "other elementwise (eager)"


def profile_summary(prof: Any, wall_s: float) -> str:
    """Device time by category for one profiled step, plus the top kernels."""
    from torch.autograd import DeviceType

    cats: dict[str, float] = {}
    kernels = []
    for evt in prof.key_averages():
        if evt.device_type != DeviceType.CUDA:
            continue
        t = evt.self_device_time_total / 1e3  # ms
        if t <= 0:
            continue
        cats[_category(evt.key)] = cats.get(_category(evt.key), 0.0) + t
        kernels.append((t, evt.count, evt.key))
    total = sum(cats.values())
    lines = [f"profiled step: wall {wall_s * 1e3:.1f} ms, GPU kernel time {total:.1f} ms "
             f"(busy {100 * total / max(wall_s * 1e3, 1e-9):.0f}%)",
             "| category | ms | % of kernel time |", "|---|---|---|"]
    for c, t in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {c} | {t:.1f} | {100 * t / max(total, 1e-9):.1f} |")
    lines += ["top kernels:", "| ms | calls | kernel |", "|---|---|---|"]
    for t, cnt, key in sorted(kernels, reverse=True)[:12]:
        lines.append(f"| {t:.1f} | {cnt} | {key[:110]} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- measurement


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _benchmark_loss(name: str):
    from tunekit.training.losses import ChunkedCrossEntropyLoss, FusedLinearCrossEntropyLoss

    if name == "fused":  # conf/loss/fused_linear_cross_entropy
        return FusedLinearCrossEntropyLoss(num_chunks=8)
    return ChunkedCrossEntropyLoss(num_chunks=8)  # conf/loss/chunked_cross_entropy


def train_tunekit(cfg: dict) -> dict:
    """One tunekit configuration through the real loop (``tunekit.training.train``)."""
    from tunekit.run.settings import train_settings
    from tunekit.training import build_dataloader, prepare_loss, prepare_model, train
    from tunekit.training.lr_schedulers import cosine_with_warmup

    device, lora = cfg["device"], cfg["mode"] == "lora"
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    dtype = torch.bfloat16
    torch.manual_seed(0)  # the same random weights in every configuration's process
    if cfg.get("model"):
        model, spec, n_params = build_named(cfg["model"], cfg["seq"], device, dtype, lora)
        shape = dict(shape, vocab_size=model.tok_embeddings.num_embeddings)
    else:
        model, spec = build_tunekit(shape, cfg["seq"], device, dtype, lora)
        n_params = base_param_count(shape)
    params = [p for p in model.parameters() if p.requires_grad]
    # The recipe's optimizer (conf/optimizer/adamw.yaml), fused on CUDA; states in the
    # parameters' dtype (bf16).
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                            fused=device.startswith("cuda"))
    total = cfg["warmup"] + cfg["steps"] + (1 if cfg.get("profile") else 0)
    sched = cosine_with_warmup(opt, num_warmup_steps=1, num_training_steps=total)
    loss_fn = _benchmark_loss(cfg.get("loss", "chunked"))
    if cfg.get("packed"):  # the recipe's packed path: PackedDataset + packed_collate (doc_ids)
        ds, collate = packed_loader_parts(cfg, shape, total * cfg["batch"])
        if len(ds) < total * cfg["batch"]:
            raise RuntimeError(f"only {len(ds)} packed rows for {total * cfg['batch']}")
    else:
        ds, collate = SyntheticLM(total * cfg["batch"], cfg["seq"], shape["vocab_size"]), stack_collate
    loader = build_dataloader(ds, cfg["batch"], collate, shuffle=False, pin_memory=device.startswith("cuda"))
    attention = cfg.get("attention") or "auto"
    settings = train_settings(
        epochs=1, max_steps_per_epoch=total, device=device, dtype="bf16", compile=cfg["compile"],
        activation_checkpointing=cfg["ac"], ac_every_k_layers=cfg.get("ac_every_k", 1),
        log_every_n_steps=total, clip_grad_norm=1.0, handle_signals=False,
        attention="sdpa" if attention == "dense" else attention, fp8_base=bool(cfg.get("fp8_base")),
    )
    marks: dict[str, Any] = {}

    def on_step_end(step: int) -> None:
        if step == cfg["warmup"]:
            sync(device)
            marks["t0"] = time.perf_counter()
        if step == cfg["warmup"] + cfg["steps"]:
            sync(device)
            marks["t1"] = time.perf_counter()
            if cfg.get("profile"):
                from torch.profiler import ProfilerActivity, profile

                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
                marks["prof"] = profile(activities=acts)
                marks["prof"].__enter__()
                marks["tp"] = time.perf_counter()
        if cfg.get("profile") and step == total:
            sync(device)
            wall = time.perf_counter() - marks["tp"]
            marks["prof"].__exit__(None, None, None)
            marks["profile"] = profile_summary(marks["prof"], wall)

    prepare_model(model, settings)
    res = train(model, optimizer=opt, lr_scheduler=sched, loss_fn=prepare_loss(loss_fn, settings),
                train_loader=loader, settings=settings, progress=False, on_step_end=on_step_end)
    dt = (marks["t1"] - marks["t0"]) / cfg["steps"]
    out = {"variant": cfg.get("variant", ""),
           "step_s": dt, "tokens_per_s": cfg["batch"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
           "loss": res.final_train_loss, "n_params": n_params}
    if "profile" in marks:
        out["profile"] = marks["profile"]
    return out


def train_hf(cfg: dict) -> dict:
    """HF transformers (+ PEFT) with the same shapes, batch, optimizer and grad clipping."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device, lora = cfg["device"], cfg["mode"] == "lora"
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    model = build_hf(shape, cfg["seq"], device, torch.bfloat16, lora, peft_bf16=cfg.get("peft_bf16", False))
    if cfg["ac"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                            fused=device.startswith("cuda"))
    total = cfg["warmup"] + cfg["steps"]
    ds = SyntheticLM(total * cfg["batch"], cfg["seq"], shape["vocab_size"])
    batches = [stack_collate([ds[i * cfg["batch"] + j] for j in range(cfg["batch"])]) for i in range(total)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] if device.startswith("cuda") else \
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    losses = []
    with sdpa_kernel(kernels):
        for i, b in enumerate(batches):
            if i == cfg["warmup"]:
                sync(device)
                t0 = time.perf_counter()
            # HF shifts labels itself: passing the tokens gives the same targets as tunekit's
            # pre-shifted labels (every position but the last).
            tokens = b["tokens"].to(device, non_blocking=True)
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        sync(device)
        t1 = time.perf_counter()
    dt = (t1 - t0) / cfg["steps"]
    return {"step_s": dt, "tokens_per_s": cfg["batch"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
            "loss": float(losses[-1]), "n_params": base_param_count(shape)}


WORKERS = {"tunekit": train_tunekit, "hf": train_hf}


# ---------------------------------------------------------------------------- subprocesses


def worker_entry(workers: dict) -> bool:
    """If this process was started as a worker, run it and return True."""
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        return False
    cfg = json.loads(sys.argv[2])
    try:
        result = workers[cfg["system"]](cfg)
        result["ok"] = True
    except Exception as e:  # reported in the table; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    with open(sys.argv[3], "w") as f:
        json.dump(result, f)
    return True


def run_isolated(script: str, cfg: dict, timeout_s: float) -> dict:
    """Runs one configuration in a fresh Python process (memory peaks never mix)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, script, "--worker", json.dumps(cfg), path],
                              timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with open(path) as f:
            text = f.read()
        result = json.loads(text) if text else {"ok": False, "error": f"worker exited {proc.returncode}"}
    except subprocess.TimeoutExpired:
        result = {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    finally:
        os.unlink(path)
    result["process_s"] = time.perf_counter() - t0
    return result


def env_line(device: str) -> str:
    parts = [f"torch {torch.__version__}"]
    for mod in ("transformers", "peft"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            parts.append(f"{mod} missing")
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    return f"device: {gpu}; " + ", ".join(parts)


def train_args(description: str, mode: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--tiny", action="store_true", help="tiny model shapes (CPU smoke run)")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 2")
    p.add_argument("--seq", type=int, default=None, help="default 2048 (tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    p.add_argument("--ac", default="off,on" if mode == "lora" else "on",
                   help="activation checkpointing settings to run, comma-separated (off,on)")
    p.add_argument("--ac-every-k", type=int, default=1, help="tunekit: checkpoint every k-th layer")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="tunekit per-layer + loss torch.compile (default: on for CUDA, off for CPU)")
    p.add_argument("--systems", default="tunekit,hf", help="comma-separated: tunekit,hf")
    p.add_argument("--peft-bf16", action="store_true",
                   help="PEFT adapters in bf16 (default: PEFT's default, fp32 adapters on the bf16 model)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler on one extra tunekit step (first AC setting) and print where the time goes")
    p.add_argument("--variants", default="base",
                   help="tunekit rows to run, comma-separated: base (chunked CE), fused (fused linear+CE "
                        "loss), fp8 (LoRA: fp8_base=true, Hopper), fused+fp8")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak dense bf16 TFLOP/s for MFU (default 989 = H100 SXM datasheet)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration process")
    p.add_argument("--models", default="",
                   help="tunekit only: comma-separated conf/model names (llama2_7b,llama3_1_8b,qwen2_5_7b) "
                        "instead of the Llama-2-7B shape; MFU uses each model's own parameter count")
    a = p.parse_args()
    a.batch = a.batch or 2
    a.seq = a.seq or (64 if a.tiny else 2048)
    a.steps = a.steps or (2 if a.tiny else 10)
    if a.compile is None:
        a.compile = a.device.startswith("cuda")
    a.mode = mode
    return a


def run_train_benchmark(script: str, description: str, mode: str) -> None:
    if worker_entry(WORKERS):
        return
    a = train_args(description, mode)
    acs = [s.strip() == "on" for s in a.ac.split(",")]
    systems = [s.strip() for s in a.systems.split(",")]
    base = dict(mode=mode, tiny=a.tiny, device=a.device, batch=a.batch, seq=a.seq, steps=a.steps,
                warmup=a.warmup)
    rows = []
    models = [m.strip() for m in a.models.split(",") if m.strip()] or [None]
    for ac, model, system in [(ac, m, s) for ac in acs for m in models for s in systems]:
        if model is not None and system != "tunekit":
            continue  # named models: tunekit rows only (the HF peer builds the Llama-2-7B shape)
        cfg = dict(base, system=system, ac=ac, model=model)
        variants = [v.strip() for v in a.variants.split(",")] if system == "tunekit" else [""]
        for variant in variants:
            vcfg = dict(cfg)
            if system == "tunekit":
                vcfg.update(compile=a.compile, ac_every_k=a.ac_every_k, variant=variant,
                            profile=a.profile and ac == acs[0] and variant == variants[0],
                            loss="fused" if "fused" in variant else "chunked", fp8_base="fp8" in variant)
            else:
                vcfg.update(peft_bf16=a.peft_bf16)
            label = (f"{system}{' ' + model if model else ''}{' ' + variant if variant else ''} {mode} "
                     f"AC={'on' if ac else 'off'}")
            print(f"--- running {label}", flush=True)
            r = run_isolated(script, vcfg, a.timeout)
            rows.append((vcfg, r))
            brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "profile"}
            print(f"--- done {label}: {brief}", flush=True)
            if r.get("profile"):
                print(r["profile"], flush=True)
    print_train_table(a, rows)


def print_train_table(a: argparse.Namespace, rows: list[tuple[dict, dict]]) -> None:
    flops_per_token = (4 if a.mode == "lora" else 6)
    peer = "HF + PEFT" if a.mode == "lora" else "HF"
    peft_dtype = "bf16" if a.peft_bf16 else "fp32 (PEFT default)"
    print()
    for cfg, r in rows:
        if r.get("profile"):
            print(f"Profile, tunekit {a.mode} AC={'on' if cfg['ac'] else 'off'}:\n{r['profile']}\n")
    shape = "tiny" if a.tiny else "Llama-2-7B"
    print(f"{shape} shape, {a.mode}, bf16, batch {a.batch} x {a.seq} tokens, {a.steps} timed steps after "
          f"{a.warmup} warm-up, fused AdamW (bf16 states), grad clip 1.0; "
          + (f"LoRA r=8 alpha=16 on q,v,o,gate,down,up; PEFT adapters {peft_dtype}; " if a.mode == "lora" else "")
          + f"tunekit compile={a.compile}, chunked CE (8 chunks)")
    print(env_line(a.device))
    n_rule = "each model's own parameter count (embeddings included)" if a.models else \
        f"{next((r['n_params'] for _, r in rows if r.get('ok')), 0):.3g}"
    print(f"MFU = tokens/s x {flops_per_token} N / ({a.peak_tflops:g} TFLOP/s), N = {n_rule}")
    print("| system | AC | tokens/s | step ms | peak GiB | MFU | loss |\n|---|---|---|---|---|---|---|")
    by_key = {}
    for cfg, r in rows:
        name = "tunekit" + (" (compiled)" if cfg.get("compile") else "") if cfg["system"] == "tunekit" else peer
        if cfg["system"] == "tunekit" and cfg.get("ac") and cfg.get("ac_every_k", 1) > 1:
            name += f" (AC every {cfg['ac_every_k']})"
        if cfg.get("model"):
            name += f" {cfg['model']}"
        if cfg.get("variant") not in (None, "", "base"):
            name += f" [{cfg['variant']}]"
        ac = "on" if cfg["ac"] else "off"
        if not r.get("ok"):
            print(f"| {name} | {ac} | FAILED: {r.get('error')} | | | | |")
            continue
        base_row = cfg.get("variant") in (None, "", "base") or (cfg["system"], cfg["ac"]) not in by_key
        if not cfg.get("model") and base_row:
            by_key[(cfg["system"], cfg["ac"])] = r
        mfu = r["tokens_per_s"] * flops_per_token * r["n_params"] / (a.peak_tflops * 1e12)
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        loss = f"{r['loss']:.3f}" if r.get("loss") is not None else "n/a"
        print(f"| {name} | {ac} | {r['tokens_per_s']:,.0f} | {r['step_s'] * 1e3:.1f} | {peak} | "
              f"{100 * mfu:.1f}% | {loss} |")
    for ac in (False, True):
        t, h = by_key.get(("tunekit", ac)), by_key.get(("hf", ac))
        if t and h:
            ratio = t["tokens_per_s"] / h["tokens_per_s"]
            print(f"tunekit / {peer}, AC {'on' if ac else 'off'}: {ratio:.2f}x tokens/s")
    sys.stdout.flush()


def free(*objs: Any) -> None:
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


