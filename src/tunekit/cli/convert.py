"""``tunekit convert SOURCE DEST --to hf|meta``: a checkpoint in the other format (or re-sharded).

Examples::

    tunekit convert ~/models/Llama-2-7b ~/models/Llama-2-7b-hf --to hf        # Meta -> HF
    tunekit convert ~/models/meta-llama/Llama-3.1-8B-Instruct /tmp/l31-meta --to meta   # HF -> Meta (use_scaled_rope)
    tunekit convert outputs/run1 /tmp/run1-meta --to meta                      # newest checkpoint of a run
    tunekit convert ~/models/Llama-2-13b-hf /tmp/13b-meta --to meta --model-parallel-size 2
    tunekit convert ~/models/Llama-2-7b-hf /tmp/7b-bf16 --to hf --dtype bf16 --max-shard-size 2GB
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit convert",
        description="Write a checkpoint in HF format (config.json + sharded safetensors, loadable by "
                    "transformers) or Meta format (consolidated.*.pth + params.json).",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="an HF or Meta directory, or a run directory (its newest complete checkpoint)")
    p.add_argument("dest", help="the new directory (may exist only empty, or as an earlier convert output "
                                "with --force); never the source, inside it or around it")
    p.add_argument("--to", required=True, choices=["hf", "meta"], help="output format")
    p.add_argument("--model-type", default="auto",
                   help="model family (LLAMA2, LLAMA3, MISTRAL, QWEN2, QWEN3); default auto: the one the "
                        "source's config.json / params.json declares")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="cast the weights (default: keep the checkpoint's dtype)")
    p.add_argument("--max-shard-size", default="5GB", help="largest HF shard, e.g. 5GB (HF output)")
    p.add_argument("--model-parallel-size", type=int, default=None,
                   help="consolidated.NN.pth files to write (Meta output; default: the Meta input's "
                        "count, 1 for HF input)")
    p.add_argument("--max-position-embeddings", type=int, default=None,
                   help="context length for config.json when converting Meta -> HF (default: params.json's "
                        "max_seq_len, else 131072 with use_scaled_rope (Llama 3.1), else 4096 (Llama 2))")
    p.add_argument("--force", action="store_true",
                   help="replace DEST when it is an earlier output of tunekit convert (marked by "
                        ".tunekit-convert.json); other directories are never replaced")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunekit convert``; returns the exit status."""
    args = _parser().parse_args(argv)
    from tunekit.checkpointing import CheckpointError, convert_checkpoint  # torch: after --help

    try:
        out = convert_checkpoint(
            args.source, args.dest, to=args.to, model_type=args.model_type, dtype=args.dtype,
            max_shard_size=args.max_shard_size, model_parallel_size=args.model_parallel_size,
            max_position_embeddings=args.max_position_embeddings, force=args.force,
        )
    except (CheckpointError, ValueError) as err:
        print(f"tunekit convert: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permission denied: nothing was replaced
        from tunekit.config.errors import path_error_message

        shape = path_error_message(err)  # a file in the way of DEST's directories
        if shape is not None:
            print(f"tunekit convert: error: {shape}", file=sys.stderr)
            return 1
        where = f" ({err.filename})" if err.filename else ""
        print(f"tunekit convert: error: could not write {args.dest}: {err.strerror or err}{where}. Nothing "
              f"was replaced; free disk space or choose a DEST you can write to.", file=sys.stderr)
        return 1
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"Wrote {args.to.upper() if args.to == 'hf' else 'Meta'} checkpoint to {out}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
