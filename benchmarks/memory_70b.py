"""Per-GPU memory of a 70B QLoRA fine-tune on 1, 2, 4 and 8 GPUs, from the real parameter shapes.

The model is built on the meta device (``tunekit.models.llama2.llama2_70b`` with the LoRA spec
of torchtune's ``70B_qlora``: rank 16, alpha 32, every projection), so every count below comes
from the actual parameters, not a formula of the architecture:

- NF4 base: each frozen linear of the decoder layers as torchao stores it (4-bit codes, one int8
  scale per 64 values, one bf16 factor per 256 scales, the mean and the 16-entry table);
- bf16: embeddings, output head, norms, LoRA adapters; their gradients; AdamW's two states in the
  parameters' dtype (bf16, as the recipe's fused AdamW keeps them);
- activations with activation checkpointing: each layer's saved input (batch x seq x dim, bf16),
  one layer's recompute working set (q, k, v, attention output, the MLP's gate/up/activation),
  and the chunked loss's fp32 logits for one chunk and its gradient.

Sharded over N GPUs (FSDP2, per-layer units): parameters, gradients and optimizer states are
divided by N; each GPU also holds the all-gathered NF4 layer being computed and the prefetched
next one. Activations are per GPU (batch per GPU). The 2-8 GPU columns are the estimate for
sharded QLoRA (FSDP2 shards the NF4 data), not yet measured on several GPUs.

    python benchmarks/memory_70b.py                     # the table (batch 2 x 2048 per GPU)
    python benchmarks/memory_70b.py --batch 1 --seq 4096
    python benchmarks/memory_70b.py --check             # + the weight bytes of a real quantized model
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

GIB = 1024**3
TARGETS = ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"]


def nf4_bytes(numel: int, elem: int = 2, block: int = 64, scaler_block: int = 256) -> int:
    """Bytes of one NF4 weight as torchao stores it (codes, int8 scales, factors, mean, table)."""
    n_blocks = numel // block
    while n_blocks % scaler_block:
        scaler_block -= 1  # tunekit.modules.peft._nf4: the largest divisor below 256
    return numel // 2 + n_blocks + (n_blocks // scaler_block) * elem + elem + 16 * elem


def count(model: torch.nn.Module) -> dict[str, int]:
    """Bytes per category from the parameters of a (meta) LoRA model, before sharding."""
    from tunekit.modules.peft import LoRALinear

    quantized = set()
    layers = model.layers
    for name, m in layers.named_modules():
        if isinstance(m, LoRALinear) or (type(m) is torch.nn.Linear and ".lora_" not in f".{name}"):
            quantized.add(f"layers.{name}.weight")
    out = dict(nf4=0, bf16_frozen=0, adapters=0, largest_layer_nf4=0)
    per_layer: dict[str, int] = {}
    for name, p in model.named_parameters():
        if name in quantized:
            b = nf4_bytes(p.numel())
            out["nf4"] += b
            layer = ".".join(name.split(".")[:2])
            per_layer[layer] = per_layer.get(layer, 0) + b
        elif "lora_" in name:
            out["adapters"] += p.numel() * 2
        else:
            out["bf16_frozen"] += p.numel() * 2
    out["largest_layer_nf4"] = max(per_layer.values())
    return out


def activations(shape: dict, batch: int, seq: int, num_chunks: int = 8) -> int:
    d, f, v, L = shape["embed_dim"], shape["intermediate_dim"], shape["vocab_size"], shape["num_layers"]
    kv = shape["num_kv_heads"] * d // shape["num_heads"]
    tokens = batch * seq
    saved = L * tokens * d * 2  # each checkpointed layer's input
    layer = tokens * (3 * d + 2 * kv + 3 * f) * 2  # q, attn out, residual + k, v + gate, up, act
    logits = 2 * tokens * v * 4 // num_chunks  # one fp32 chunk and its gradient
    return saved + layer + logits


def estimate(counts: dict[str, int], act: int, gpus: int) -> dict[str, float]:
    params = counts["nf4"] + counts["bf16_frozen"] + counts["adapters"]
    sharded = params / gpus
    gathered = 0 if gpus == 1 else 2 * counts["largest_layer_nf4"]  # current + prefetched unit
    grads = counts["adapters"] / gpus
    optim = 2 * counts["adapters"] / gpus
    total = sharded + gathered + grads + optim + act
    return {"weights": sharded / GIB, "gathered": gathered / GIB, "grads": grads / GIB, "optimizer": optim / GIB,
            "activations": act / GIB, "total": total / GIB}


def check() -> None:
    """The NF4/bf16 byte counts against a real quantized model (llama2 tiny shapes, CPU)."""
    from tunekit.models.llama2 import llama2
    from tunekit.modules.peft import LoRASpec, quantize_base_, set_trainable_params
    from tunekit.training.memory import tensor_bytes

    shape = dict(vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=256, intermediate_dim=704)
    spec = LoRASpec(rank=16, alpha=32, targets=TARGETS, quantize_base="nf4")
    with torch.device("meta"):
        meta = llama2(**shape, max_seq_len=128, lora=spec)
    want = count(meta)
    real = llama2(**shape, max_seq_len=128, lora=spec).to(torch.bfloat16)
    set_trainable_params(real)
    quantize_base_(real)
    got = sum(tensor_bytes(p) for p in real.parameters())
    total = want["nf4"] + want["bf16_frozen"] + want["adapters"]
    print(f"check (llama2 {shape['num_layers']} layers, dim {shape['embed_dim']}): estimated weight bytes "
          f"{total:,}, measured on the quantized model {got:,}: {'equal' if got == total else 'DIFFERENT'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="per GPU")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--check", action="store_true")
    a = p.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from tunekit.models.llama2 import llama2_70b
    from tunekit.modules.peft import LoRASpec

    spec = LoRASpec(rank=a.rank, alpha=2.0 * a.rank, targets=TARGETS, quantize_base="nf4")
    with torch.device("meta"):
        model = llama2_70b(lora=spec)
    shape = dict(vocab_size=model.tok_embeddings.num_embeddings, num_layers=len(model.layers),
                 embed_dim=model.tok_embeddings.embedding_dim, num_heads=model.layers[0].attn.num_heads,
                 num_kv_heads=model.layers[0].attn.num_kv_heads,
                 intermediate_dim=model.layers[0].mlp.w1.out_dim if hasattr(model.layers[0].mlp.w1, "out_dim")
                 else model.layers[0].mlp.w1.out_features)
    counts = count(model)
    act = activations(shape, a.batch, a.seq)
    n = sum(q.numel() for q in model.parameters())
    print(f"Llama-2-70B QLoRA (NF4 base, LoRA r={a.rank} on every projection, bf16 adapters + AdamW states), "
          f"AC on, batch {a.batch} x {a.seq} per GPU, chunked CE (8 chunks); {n / 1e9:.2f}B parameters; "
          f"NF4 base {counts['nf4'] / GIB:.2f} GiB, other bf16 {counts['bf16_frozen'] / GIB:.2f} GiB, "
          f"adapters {counts['adapters'] / GIB:.3f} GiB")
    print("| GPUs | weights (shard) | gathered layers | grads | optimizer | activations | total per GPU |")
    print("|---|---|---|---|---|---|---|")
    for g in (1, 2, 4, 8):
        e = estimate(counts, act, g)
        print(f"| {g} | {e['weights']:.2f} | {e['gathered']:.2f} | {e['grads']:.3f} | {e['optimizer']:.3f} | "
              f"{e['activations']:.2f} | {e['total']:.2f} GiB |")
    if a.check:
        check()


if __name__ == "__main__":
    main()
