"""Full fine-tuning throughput on the Llama-2-7B shape: tunekit vs HF transformers.

Every weight trains, in bf16, with fused AdamW whose states are bf16 too (torch's AdamW keeps
its states in the parameters' dtype): weights 13.5 GB + gradients 13.5 GB + two states 27 GB
= 54 GB before activations, which fits one 80 GB H100. fp32 states would need 54 GB for the
states alone (81 GB in all): an H200 (141 GB) or a sharded / 8-bit optimizer. Activation
checkpointing is on by default (every decoder layer; HF: ``gradient_checkpointing_enable``
with ``use_reentrant=False``). tunekit runs through ``tunekit.training.train`` with the chunked
loss and per-layer compile; each configuration runs in a fresh process.

    python benchmarks/full_finetune_7b.py                      # 7B, batch 2 x 2048, AC on (~3 min on an H100)
    python benchmarks/full_finetune_7b.py --ac off,on          # also without checkpointing (needs an H200)
    python benchmarks/full_finetune_7b.py --tiny --device cpu  # smoke run on the CPU
    python benchmarks/full_finetune_7b.py --systems tunekit --variants base,fused   # + the fused loss row

(``fp8`` rows apply to LoRA only: ``fp8_base`` puts *frozen* base weights in FP8; a full fine-tune
updates every weight, which would need per-step requantisation, not implemented.)

MFU counts 6 N FLOPs per token (N = 6.74e9), not the recompute of checkpointing; peak dense
bf16 = --peak-tflops (default 989, H100 SXM datasheet).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_train_benchmark  # noqa: E402

if __name__ == "__main__":
    run_train_benchmark(os.path.abspath(__file__), __doc__, "full")
