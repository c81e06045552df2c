"""LoRA fine-tuning throughput on the Llama-2-7B shape: tunekit vs HF transformers + PEFT.

tunekit runs through the real training path: the llama2 builder with a LoRASpec (rank 8,
alpha 16 on q_proj, v_proj, output_proj, w1, w2, w3), random weights built on the meta device
and materialised in bf16 on the GPU, ``ChunkedCrossEntropyLoss`` (conf/loss/chunked_cross_entropy),
fused AdamW, and ``tunekit.training.train`` with its compile and activation-checkpointing
switches. The peer is HF ``LlamaForCausalLM`` (SDPA, bf16) + PEFT LoRA on the same modules
(q_proj, v_proj, o_proj, gate_proj, down_proj, up_proj), the same AdamW and grad clipping, and
``gradient_checkpointing_enable(use_reentrant=False)`` for AC on. Each configuration runs in
a fresh process; the table (tokens/s, peak GiB, MFU, tunekit/PEFT ratio) is printed last.

    python benchmarks/lora_7b.py                      # 7B, batch 2 x 2048, AC off and on (~4-5 min on an H100)
    python benchmarks/lora_7b.py --profile            # + a torch.profiler summary of one tunekit step
    python benchmarks/lora_7b.py --peft-bf16          # PEFT adapters in bf16 instead of PEFT's fp32 default
    python benchmarks/lora_7b.py --tiny --device cpu  # smoke run on the CPU (tiny shapes)
    python benchmarks/lora_7b.py --systems tunekit --variants base,fused,fp8,fused+fp8
                                                      # speed levers, one row each: the fused linear +
                                                      # cross-entropy loss, FP8 base weights (Hopper)

Packed rows (the recipe's packed=true path) are measured by ``benchmarks/packed_7b.py``; the
FP8 option's effect on the loss by ``benchmarks/fp8_loss_curve.py``.

MFU counts 4 N FLOPs per token for LoRA (forward 2N + input gradients 2N; no weight
gradients), N = 6.74e9; peak dense bf16 = --peak-tflops (default 989, H100 SXM datasheet).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_train_benchmark  # noqa: E402

if __name__ == "__main__":
    run_train_benchmark(os.path.abspath(__file__), __doc__, "lora")
