"""Write a random-weight checkpoint of any Llama 2 builder shape, in HF or Meta format.

For exercising the real recipes on real shapes without downloading weights (e.g. on a GPU
machine without internet)::

    python scripts/make_random_checkpoint.py --model llama2_7b --format hf --dtype bf16 \\
        --out /data/rand7b --device cuda
    python -m recipes.lora_finetune model=llama2_7b checkpointer.checkpoint_dir=/data/rand7b \\
        device=cuda dtype=bf16 max_steps_per_epoch=5 epochs=1

Output:

- ``--format hf``: ``config.json`` (dims of the builder), ``generation_config.json``,
  ``model-0000i-of-0000n.safetensors`` shards + ``model.safetensors.index.json``;
- ``--format meta``: ``consolidated.00.pth`` + ``params.json``;
- both: ``tokenizer.model``, a copy of the bundled 512-piece tokenizer. Its vocabulary is smaller
  than a 32000-row embedding; the recipes accept that (they only refuse a tokenizer *larger*
  than the model), which is fine for random weights.

Weights are drawn with each module's own initialisation (``init_on_device``), seeded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from tunekit.checkpointing import write_hf_weights, write_meta_weights
from tunekit.models import ModelDims as Llama2Dims
from tunekit.models import get_model_type
from tunekit.models import llama2 as llama2_builders
from tunekit.models.llama2 import init_on_device
from tunekit.tokenizers import TINY_TOKENIZER_PATH

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
BUILDERS = ("llama2_tiny", "llama2_7b", "llama2_13b", "llama2_70b")


def model_dims(model: torch.nn.Module) -> dict:
    """The shape of a built ``TransformerDecoder``."""
    attn = model.layers[0].attn
    return {
        "vocab_size": model.tok_embeddings.num_embeddings,
        "num_layers": len(model.layers),
        "num_heads": attn.num_heads,
        "num_kv_heads": attn.num_kv_heads,
        "embed_dim": attn.embed_dim,
        "intermediate_dim": model.layers[0].mlp.w1.out_features,
        "max_seq_len": model.max_seq_len,
        "norm_eps": model.norm.eps,
        "rope_base": float(attn.pos_embeddings.base),
    }


def _dims(d: dict) -> Llama2Dims:
    return Llama2Dims(num_layers=d["num_layers"], num_heads=d["num_heads"], num_kv_heads=d["num_kv_heads"],
                      embed_dim=d["embed_dim"], vocab_size=d["vocab_size"],
                      intermediate_dim=d["intermediate_dim"])


def write_hf(sd: dict, d: dict, out: Path, max_shard_bytes: int) -> None:
    mt = get_model_type("LLAMA2")
    heads = (d["num_heads"], d["num_kv_heads"], d["embed_dim"])
    write_hf_weights(sd, out, mt, heads, fmt="safetensors", max_shard_bytes=max_shard_bytes, name=str(out))
    config = mt.hf_config(_dims(d), norm_eps=d["norm_eps"], rope_theta=d["rope_base"],
                          max_position_embeddings=d["max_seq_len"], dtype=next(iter(sd.values())).dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n")


def write_meta(sd: dict, d: dict, out: Path) -> None:
    mt = get_model_type("LLAMA2")
    write_meta_weights(mt.tunekit_to_meta(sd), 1, mt, out, str(out))
    params = mt.meta_params(_dims(d), norm_eps=d["norm_eps"], rope_theta=d["rope_base"])
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama2_7b", choices=BUILDERS, help="builder in tunekit.models.llama2")
    p.add_argument("--format", choices=("hf", "meta"), default="hf")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu", help="where to draw the weights (cuda is much faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="HF shard size")
    args = p.parse_args()

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device("meta"):
        model = getattr(llama2_builders, args.model)()
    init_on_device(model, args.device, DTYPES[args.dtype])
    d = model_dims(model)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # written from host memory
    del model
    args.out.mkdir(parents=True, exist_ok=True)
    if args.format == "hf":
        write_hf(sd, d, args.out, int(args.max_shard_gb * 1024**3))
    else:
        write_meta(sd, d, args.out)
    shutil.copy(TINY_TOKENIZER_PATH, args.out / "tokenizer.model")
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {args.model} ({n / 1e6:,.1f}M parameters, {args.dtype}, {args.format}) to {args.out} "
          f"in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
