#!/usr/bin/env bash
# The 7B GPU check of the recipes (issue 5): random Llama-2-7B weights in HF format, then a few
# bf16 steps of LoRA and of full fine-tuning through the real recipes, then generation from the
# same weights. Needs one 80 GB GPU and ~60 GB of disk under $WORK (default /tmp/tk7b).
#   bash scripts/gpu_smoke_7b.sh
set -euo pipefail
WORK=${WORK:-/tmp/tk7b}
STEPS=${STEPS:-5}
mkdir -p "$WORK"
PY=${PYTHON:-python3}
t0=$(date +%s)
$PY scripts/make_random_checkpoint.py --model llama2_7b --format hf --dtype bf16 --out "$WORK/base" --device cuda
echo "== random 7B checkpoint written in $(( $(date +%s) - t0 )) s"; du -sh "$WORK/base"

common=(model=llama2_7b "checkpointer.checkpoint_dir=$WORK/base" device=cuda dtype=bf16 epochs=1
        "max_steps_per_epoch=$STEPS" packed=true max_seq_len=2048 log_every_n_steps=1)
$PY -m recipes.lora_finetune "${common[@]}" batch_size=2 compile=true "hydra.run.dir=$WORK/lora"
echo "== LoRA metrics:"; cat "$WORK/lora/logs/metrics.jsonl" | tail -n "$STEPS"; ls "$WORK/lora/epoch_0" "$WORK/lora/epoch_0/adapter"
rm -rf "$WORK/lora"

$PY -m recipes.full_finetune "${common[@]}" batch_size=1 activation_checkpointing=true compile=true \
    optimizer.lr=1e-5 "hydra.run.dir=$WORK/full"
echo "== full metrics:"; cat "$WORK/full/logs/metrics.jsonl" | tail -n "$STEPS"; ls "$WORK/full/epoch_0"
rm -rf "$WORK/full"

$PY -m recipes.generate model=llama2_7b "checkpointer.checkpoint_dir=$WORK/base" device=cuda dtype=bf16 \
    compile=true max_new_tokens=128 prompt="The weather today"
echo "== total $(( $(date +%s) - t0 )) s"
