"""Is ``fp8_base=true`` safe? LoRA loss curves with the frozen base in bf16 vs FP8, same run otherwise.

A ~150M-parameter Llama-layout model (12 layers, width 1024, vocabulary of the bundled
512-piece SentencePiece tokenizer) is first pre-trained from scratch in bf16 on the bundled
texts (``src/tunekit/assets/text``, all but the fine-tuning file) so the base is a real language
model rather than noise; then two LoRA fine-tunes on the held-out file (``stories.txt`` by
default; rank 16 on q, k, v, o and the MLP) start from that same base, with the same seed, data
order and settings, one with the base GEMMs in bf16 and one with ``fp8_base=true`` (FP8 e4m3,
row-wise scales; ``tunekit.training.fp8``). Printed: both training-loss curves (every
--print-every steps), the largest and final gaps, and each run's validation loss on held-out
rows of the fine-tuning text.

    python benchmarks/fp8_loss_curve.py                          # H100/H200: ~1-3 min
    python benchmarks/fp8_loss_curve.py --steps 500 --pretrain-steps 600
    python benchmarks/fp8_loss_curve.py --tiny --device cpu --emulate   # CPU smoke run (FP8 arithmetic emulated)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ASSETS = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "assets"
SHAPE_150M = dict(vocab_size=512, num_layers=12, num_heads=16, num_kv_heads=16, embed_dim=1024,
                  intermediate_dim=2816)
SHAPE_TINY = dict(vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=4, embed_dim=64, intermediate_dim=128)


def rows_of(files: list[Path], seq: int) -> list[dict]:
    """The files' text tokenized and cut into ``seq``-token rows (labels = next token)."""
    from tunekit.tokenizers import llama2_tokenizer

    tok = llama2_tokenizer(str(ASSETS / "tokenizer" / "tokenizer.model"))
    ids: list[int] = []
    for f in files:
        for para in f.read_text(encoding="utf-8").split("\n\n"):
            if para.strip():
                ids += tok.encode(para.strip(), add_bos=True, add_eos=True)
    out = []
    for i in range(0, len(ids) - seq - 1, seq):
        t = torch.tensor(ids[i:i + seq + 1])
        out.append({"tokens": t[:-1], "labels": t[1:]})
    return out


def collate(batch: list[dict]) -> dict:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def run_train(model, rows, a, *, steps: int, lr: float, fp8: bool, val_rows=None) -> tuple[list[float], float | None]:
    from tunekit.run.settings import train_settings
    from tunekit.training import build_dataloader, evaluate, prepare_loss, prepare_model, train
    from tunekit.training.losses import ChunkedCrossEntropyLoss
    from tunekit.training.lr_schedulers import cosine_with_warmup

    if fp8 and a.emulate:
        from tunekit.training.fp8 import apply_fp8_base_

        apply_fp8_base_(model, emulate=True)
    settings = train_settings(epochs=1, max_steps_per_epoch=steps, device=a.device, dtype="bf16",
                              compile=a.compile, log_every_n_steps=10**9, clip_grad_norm=1.0,
                              handle_signals=False, fp8_base=fp8 and not a.emulate, seed=0)
    prepare_model(model, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=a.device.startswith("cuda"))
    sched = cosine_with_warmup(opt, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)
    # exactly `steps` batches, the rows repeated (reshuffled) as often as needed: one epoch
    data = [rows[i % len(rows)] for i in range(steps * a.batch)]
    loader = build_dataloader(data, a.batch, collate, shuffle=True, seed=0, drop_last=True)
    loss_fn = prepare_loss(ChunkedCrossEntropyLoss(num_chunks=4), settings)
    res = train(model, optimizer=opt, lr_scheduler=sched, loss_fn=loss_fn, train_loader=loader,
                settings=settings, progress=False)
    losses = res.step_losses
    val = None
    if val_rows:
        val_loader = build_dataloader(val_rows, a.batch, collate, shuffle=False)
        val = evaluate(model, loss_fn, val_loader, device=a.device)
    return losses[:steps], val


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq", type=int, default=None, help="row length (default 512; tiny 32)")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default 16; tiny 4)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="bf16 pre-training steps (default 400; tiny 4)")
    p.add_argument("--steps", type=int, default=None, help="LoRA steps per curve (default 300; tiny 4)")
    p.add_argument("--finetune-file", default="stories.txt", help="file of assets/text held out for the LoRA runs")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--print-every", type=int, default=None, help="curve points (default 20; tiny 1)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--emulate", action="store_true",
                   help="FP8 arithmetic emulated with fp32 matmuls (any device; for smoke runs, not speed)")
    a = p.parse_args()
    a.seq = a.seq or (32 if a.tiny else 512)
    a.batch = a.batch or (4 if a.tiny else 16)
    a.pretrain_steps = a.pretrain_steps if a.pretrain_steps is not None else (4 if a.tiny else 400)
    a.steps = a.steps or (4 if a.tiny else 300)
    a.print_every = a.print_every or (1 if a.tiny else 20)
    a.compile = a.device.startswith("cuda") if a.compile is None else a.compile
    shape = SHAPE_TINY if a.tiny else SHAPE_150M
    t_start = time.perf_counter()

    from tunekit.models.llama2 import init_on_device, llama2
    from tunekit.modules.peft import LoRASpec, get_adapter_state_dict, set_trainable_params

    texts = sorted((ASSETS / "text").glob("*.txt"))
    ft_file = ASSETS / "text" / a.finetune_file
    pre_rows = rows_of([f for f in texts if f != ft_file], a.seq)
    ft_rows = rows_of([ft_file], a.seq)
    n_val = max(1, len(ft_rows) // 10)
    ft_rows, val_rows = ft_rows[n_val:], ft_rows[:n_val]
    print(f"pre-training rows {len(pre_rows)}, fine-tuning rows {len(ft_rows)}, validation rows {len(val_rows)} "
          f"({a.seq} tokens each)", flush=True)

    torch.manual_seed(0)
    with torch.device("meta"):
        base = llama2(**shape, max_seq_len=a.seq)
    init_on_device(base, a.device, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in base.parameters())
    pre_losses, _ = run_train(base, pre_rows, a, steps=a.pretrain_steps, lr=1e-3, fp8=False)
    print(f"pre-trained {n_params / 1e6:.0f}M params for {a.pretrain_steps} steps: loss "
          f"{pre_losses[0]:.3f} -> {pre_losses[-1]:.3f}", flush=True)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    del base

    spec = LoRASpec(rank=a.lora_rank, alpha=2.0 * a.lora_rank,
                    targets=["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3"])
    curves: dict[str, list[float]] = {}
    vals: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    adapter0 = None
    for name, fp8 in (("bf16 base", False), ("fp8 base", True)):
        try:
            torch.manual_seed(0)
            with torch.device("meta"):
                model = llama2(**shape, max_seq_len=a.seq, lora=spec)
            init_on_device(model, a.device, dtype=torch.bfloat16)
            model.load_state_dict(base_sd, strict=False)
            if adapter0 is None:  # both runs start from the same adapter
                adapter0 = copy.deepcopy(get_adapter_state_dict(model))
            model.load_state_dict(adapter0, strict=False)
            set_trainable_params(model)
            curves[name], vals[name] = run_train(model, ft_rows, a, steps=a.steps, lr=3e-4, fp8=fp8,
                                                 val_rows=val_rows)
            del model
        except Exception as e:  # reported in the table
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print_report(a, n_params, curves, vals, errors, time.perf_counter() - t_start)


def print_report(a, n_params, curves, vals, errors, wall) -> None:
    print(f"\nLoRA r={a.lora_rank} on q,k,v,o,MLP of a {n_params / 1e6:.0f}M-param model pre-trained for "
          f"{a.pretrain_steps} steps on the bundled texts{' (FP8 EMULATED)' if a.emulate else ''}; "
          f"fine-tuned on {a.finetune_file}, batch {a.batch} x {a.seq}, "
          f"bf16, AdamW lr 3e-4 cosine, same seed and data order; device {a.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if a.device.startswith('cuda') else ''}, torch "
          f"{torch.__version__}, compile={a.compile}; whole run {wall:.0f} s")
    print(f"command: python {' '.join(sys.argv)}")
    for name, err in errors.items():
        print(f"{name}: FAILED: {err}")
    b, f = curves.get("bf16 base"), curves.get("fp8 base")
    print("| step | bf16 base loss | fp8 base loss | fp8 - bf16 |\n|---|---|---|---|")
    n = max(len(b or []), len(f or []))
    for i in range(n):
        if (i + 1) % a.print_every and i != n - 1:
            continue
        lb = b[i] if b and i < len(b) else None
        lf = f[i] if f and i < len(f) else None
        gap = f"{lf - lb:+.4f}" if lb is not None and lf is not None else ""
        print(f"| {i + 1} | {'' if lb is None else f'{lb:.4f}'} | {'' if lf is None else f'{lf:.4f}'} | {gap} |")
    if b and f:
        gaps = [x - y for x, y in zip(f, b)]
        window = max(1, len(gaps) // 10)
        smooth = sum(gaps[-window:]) / window
        print(f"largest |gap| over {len(gaps)} steps: {max(abs(g) for g in gaps):.4f}; mean gap over the last "
              f"{window} steps: {smooth:+.4f}")
    for name in ("bf16 base", "fp8 base"):
        if vals.get(name) is not None:
            print(f"validation loss ({name}): {vals[name]:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
