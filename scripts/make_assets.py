"""Regenerate the bundled tiny Llama 2 checkpoint (HF and Meta formats).

The tiny model (``tunekit.models.llama2.llama2_tiny``) is briefly pre-trained on the bundled
English text (``src/tunekit/assets/text``) with the bundled tokenizer, so that fine-tuning
starts from something that already writes word-like text, then written as

    src/tunekit/assets/tiny_llama2/hf/    config.json, model.safetensors, tokenizer.model, ...
    src/tunekit/assets/tiny_llama2/meta/  consolidated.00.pth, params.json, tokenizer.model

Both directories hold the same weights. Run from the repository root::

    python scripts/make_assets.py            # ~2-3 minutes on 2 CPU cores
    python scripts/make_assets.py --steps 50 # quick smoke run

The tokenizer and the text come first: ``python scripts/make_tokenizer.py all``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tunekit.data import bundled_text_files
from tunekit.models import MODEL_TYPES
from tunekit.models import ModelDims as Llama2Dims
from tunekit.models.llama2 import llama2_tiny
from tunekit.tokenizers import TINY_TOKENIZER_PATH, SentencePieceTokenizer

ASSETS = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "assets" / "tiny_llama2"
# Shapes of llama2_tiny; written into config.json / params.json.
DIMS = dict(vocab_size=512, num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128,
            intermediate_dim=352, max_seq_len=512, norm_eps=1e-5, rope_base=10000.0)  # fmt: skip


def token_stream(tok: SentencePieceTokenizer) -> torch.Tensor:
    """All bundled paragraphs, each as ``<s> ... </s>``, concatenated."""
    ids: list[int] = []
    for path in bundled_text_files():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.extend(tok.encode(line.strip(), add_bos=True, add_eos=True))
    return torch.tensor(ids, dtype=torch.long)


def pretrain(steps: int, batch_size: int, seq_len: int, lr: float, seed: int) -> dict:
    """Next-token pre-training on random windows of the bundled text; returns the state dict."""
    torch.manual_seed(seed)
    tok = SentencePieceTokenizer(str(TINY_TOKENIZER_PATH))
    stream = token_stream(tok)
    model = llama2_tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    gen = torch.Generator().manual_seed(seed)
    print(f"{stream.numel():,} tokens of bundled text; {steps} steps of {batch_size}x{seq_len}")
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=gen)
        window = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f}s")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_hf(sd: dict, out: Path) -> None:
    """config.json + model.safetensors + tokenizer files, loadable by transformers."""
    out.mkdir(parents=True, exist_ok=True)
    mt = MODEL_TYPES["LLAMA2"]
    hf = mt.tunekit_to_hf(sd, DIMS["num_heads"], DIMS["num_kv_heads"], DIMS["embed_dim"])
    save_file({k: v.contiguous() for k, v in hf.items()}, out / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    dims = Llama2Dims(num_layers=DIMS["num_layers"], num_heads=DIMS["num_heads"],
                      num_kv_heads=DIMS["num_kv_heads"], embed_dim=DIMS["embed_dim"],
                      vocab_size=DIMS["vocab_size"], intermediate_dim=DIMS["intermediate_dim"])
    config = mt.hf_config(dims, norm_eps=DIMS["norm_eps"], rope_theta=DIMS["rope_base"],
                          max_position_embeddings=DIMS["max_seq_len"], dtype=torch.float32)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_length": 512}, indent=2) + "\n"
    )
    shutil.copy(TINY_TOKENIZER_PATH, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(mt.hf_tokenizer_config(DIMS["max_seq_len"]), indent=2) + "\n"
    )


def write_meta(sd: dict, out: Path) -> None:
    """consolidated.00.pth + params.json, as Meta ships Llama 2."""
    out.mkdir(parents=True, exist_ok=True)
    meta = MODEL_TYPES["LLAMA2"].tunekit_to_meta(sd)
    torch.save({k: v.contiguous() for k, v in meta.items()}, out / "consolidated.00.pth")
    params = {
        "dim": DIMS["embed_dim"],
        "n_layers": DIMS["num_layers"],
        "n_heads": DIMS["num_heads"],
        "n_kv_heads": DIMS["num_kv_heads"],
        "vocab_size": DIMS["vocab_size"],
        # 2*4*128/3 = 341 -> next multiple of 32 = 352 == intermediate_dim
        "multiple_of": 32,
        "ffn_dim_multiplier": None,
        "norm_eps": DIMS["norm_eps"],
        "rope_theta": DIMS["rope_base"],
    }
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    shutil.copy(TINY_TOKENIZER_PATH, out / "tokenizer.model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ASSETS)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sd = pretrain(args.steps, args.batch_size, args.seq_len, args.lr, args.seed)
    write_hf(sd, args.out / "hf")
    write_meta(sd, args.out / "meta")
    print(f"wrote {args.out / 'hf'} and {args.out / 'meta'}")


if __name__ == "__main__":
    main()
