"""QLoRA fine-tuning throughput and peak memory on the Llama-2-7B shape: tunekit vs PEFT + bitsandbytes.

tunekit runs the real training path: the llama2 builder with a LoRASpec (rank 8, alpha 16 on
q_proj, v_proj, output_proj, w1, w2, w3; ``quantize_base="nf4"``), random bf16 weights on the
GPU, every frozen linear of the decoder layers quantized to NF4 by ``prepare_model`` (one
linear at a time), ``ChunkedCrossEntropyLoss``, fused AdamW on the adapters and
``tunekit.training.train`` with compile and activation checkpointing. The peer is HF
``LlamaForCausalLM`` with bitsandbytes ``Linear4bit`` (nf4, double quantization, bf16 compute)
+ PEFT LoRA on the same modules, when bitsandbytes is importable (else its rows are skipped).
torchtune's QLoRA is measured by the lead with ``../shared/peers/torchtune_step.py --mode qlora
--ac on --compile`` on the same machine. Each configuration runs in a fresh process.

    python benchmarks/qlora_7b.py                      # 7B, batch 2 x 2048, AC on and off
    python benchmarks/qlora_7b.py --ac on              # the 6 GiB target configuration only
    python benchmarks/qlora_7b.py --tiny --device cpu  # smoke run on the CPU (tiny shapes)

Peak GiB is ``torch.cuda.max_memory_allocated()`` from the start of training (NF4 weights,
adapters, optimizer, activations). MFU counts 4 N FLOPs per token as for LoRA (the
dequantization is not counted).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    LORA_TARGETS,
    PEFT_NAMES,
    SHAPE_7B,
    SHAPE_TINY,
    SyntheticLM,
    base_param_count,
    hf_config,
    peak_gib,
    print_train_table,
    run_isolated,
    stack_collate,
    sync,
    train_args,
    worker_entry,
)


def train_tunekit_qlora(cfg: dict) -> dict:
    from tunekit.models.llama2 import init_on_device, llama2
    from tunekit.modules.peft import QUANTIZE_ATTR, LoRASpec, set_trainable_params
    from tunekit.run.settings import train_settings
    from tunekit.training import ChunkedCrossEntropyLoss, build_dataloader, prepare_loss, prepare_model, train
    from tunekit.training.lr_schedulers import cosine_with_warmup

    device = cfg["device"]
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    spec = LoRASpec(rank=8, alpha=16.0, targets=LORA_TARGETS, quantize_base="nf4")
    with torch.device("meta"):
        model = llama2(**shape, max_seq_len=max(cfg["seq"], 4096), lora=spec)
    init_on_device(model, device, dtype=torch.bfloat16)
    set_trainable_params(model)
    setattr(model, QUANTIZE_ATTR, "nf4")  # as tunekit.run.model does for lora.quantize_base=nf4
    total = cfg["warmup"] + cfg["steps"]
    settings = train_settings(
        epochs=1, max_steps_per_epoch=total, device=device, dtype="bf16", compile=cfg["compile"],
        activation_checkpointing=cfg["ac"], log_every_n_steps=total, clip_grad_norm=1.0, handle_signals=False)
    prepare_model(model, settings)  # quantizes the base to NF4, then AC and compile
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=device.startswith("cuda"))
    sched = cosine_with_warmup(opt, num_warmup_steps=1, num_training_steps=total)
    ds = SyntheticLM(total * cfg["batch"], cfg["seq"], shape["vocab_size"])
    loader = build_dataloader(ds, cfg["batch"], stack_collate, shuffle=False, pin_memory=device.startswith("cuda"))
    marks: dict[str, Any] = {}

    def on_step_end(step: int) -> None:
        if step in (cfg["warmup"], total):
            sync(device)
            marks[step] = time.perf_counter()

    res = train(model, optimizer=opt, lr_scheduler=sched, loss_fn=prepare_loss(ChunkedCrossEntropyLoss(8), settings),
                train_loader=loader, settings=settings, progress=False, on_step_end=on_step_end)
    dt = (marks[total] - marks[cfg["warmup"]]) / cfg["steps"]
    return {"step_s": dt, "tokens_per_s": cfg["batch"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
            "loss": res.final_train_loss, "n_params": base_param_count(shape)}


def _bnb_4bit_(model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Swap every linear of the decoder layers for bitsandbytes' NF4 ``Linear4bit`` (double quant)."""
    import bitsandbytes as bnb

    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}.":
            q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(mod.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q.cuda())


def train_peft_bnb(cfg: dict) -> dict:
    import bitsandbytes  # noqa: F401 - skipped by the caller when missing
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaForCausalLM

    device = cfg["device"]
    shape = SHAPE_TINY if cfg["tiny"] else SHAPE_7B
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cpu"):
            model = LlamaForCausalLM(hf_config(shape, max(cfg["seq"], 4096)))
    finally:
        torch.set_default_dtype(prev)
    _bnb_4bit_(model, torch.bfloat16)
    model.to(device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg["ac"],
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=[PEFT_NAMES[t] for t in LORA_TARGETS]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=True)
    total = cfg["warmup"] + cfg["steps"]
    ds = SyntheticLM(total * cfg["batch"], cfg["seq"], shape["vocab_size"])
    torch.cuda.reset_peak_memory_stats()
    for i in range(total):
        if i == cfg["warmup"]:
            sync(device)
            t0 = time.perf_counter()
        tokens = stack_collate([ds[i * cfg["batch"] + j] for j in range(cfg["batch"])])["tokens"].to(device)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    dt = (time.perf_counter() - t0) / cfg["steps"]
    return {"step_s": dt, "tokens_per_s": cfg["batch"] * cfg["seq"] / dt, "peak_gib": peak_gib(device),
            "loss": float(loss), "n_params": base_param_count(shape)}


WORKERS = {"tunekit": train_tunekit_qlora, "hf": train_peft_bnb}


def main() -> None:
    if worker_entry(WORKERS):
        return
    a = train_args(__doc__, "lora")
    acs = [s.strip() == "on" for s in a.ac.split(",")]
    systems = [s.strip() for s in a.systems.split(",")]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        if "hf" in systems:
            print("--- bitsandbytes is not installed: the PEFT + bitsandbytes rows are skipped", flush=True)
        systems = [s for s in systems if s != "hf"]
    if not a.device.startswith("cuda"):
        systems = [s for s in systems if s != "hf"]  # bitsandbytes 4-bit needs CUDA
    base = dict(mode="lora", tiny=a.tiny, device=a.device, batch=a.batch, seq=a.seq, steps=a.steps, warmup=a.warmup)
    rows = []
    for ac in acs:
        for system in systems:
            cfg = dict(base, system=system, ac=ac, compile=a.compile if system == "tunekit" else False)
            print(f"--- running {system} QLoRA AC={'on' if ac else 'off'}", flush=True)
            r = run_isolated(os.path.abspath(__file__), cfg, a.timeout)
            rows.append((cfg, r))
            print(f"--- done {system}: { {k: v for k, v in r.items() if k != 'profile'} }", flush=True)
    print("QLoRA: NF4 base (block 64, double-quantized scales), bf16 compute; peer = PEFT + bitsandbytes")
    print_train_table(a, rows)


if __name__ == "__main__":
    main()
