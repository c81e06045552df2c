"""``tunekit export SRC DEST.gguf [--dtype f32|f16|bf16|q8_0]``: one GGUF file for llama.cpp.

Examples::

    tunekit export outputs/my_run my_run.gguf                       # newest checkpoint of a run, f16
    tunekit export outputs/my_run/epoch_2 my_run-q8.gguf --dtype q8_0
    tunekit export ~/models/Llama-2-7b-hf llama2.gguf --adapter outputs/lora_run   # base + adapter, merged
    llama-cli -m my_run.gguf -p "Tell me about llamas." -n 64       # run it with llama.cpp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

_DTYPES = ("f32", "f16", "bf16", "q8_0")  # tunekit.export.GGUF_DTYPES (kept torch-free here)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit export",
        description="Write a model as one GGUF file (weights, architecture, RoPE settings, tokenizer, chat "
                    "template) that llama.cpp runs as it is. A LoRA checkpoint's weights are already merged.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SRC", help="a run directory (its newest complete checkpoint), a checkpoint "
                                                 "directory (RUN/epoch_N) or an HF/Meta model directory")
    p.add_argument("dest", metavar="DEST.gguf", help="the GGUF file to write (an existing file needs --force)")
    p.add_argument("--dtype", default="f16", help="type of the weight matrices: f32, f16 (default), bf16 or "
                                                  "q8_0; norms and biases stay f32")
    p.add_argument("--adapter", default=None, help="a LoRA adapter to merge into SRC (a LoRA run or checkpoint "
                                                   "directory, or a PEFT adapter directory)")
    p.add_argument("--model-type", default=None, help="model family (default: read from config.json)")
    p.add_argument("--name", default=None, help="general.name in the file (default: the run or model name)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    return p


def _precheck(args: argparse.Namespace) -> str | None:
    """The mistakes found without reading the model (and without importing torch): one paragraph or None.
    ``export_gguf`` checks the same again for callers of the library."""
    if args.dtype not in _DTYPES:
        return (f"--dtype {args.dtype!r} is not a GGUF type export writes; choose one of {', '.join(_DTYPES)} "
                f"(f16 is llama.cpp's usual choice; q8_0 halves it again with little loss).")
    src, dest = Path(args.source).expanduser(), Path(args.dest).expanduser()
    if not src.exists():
        return (f"SRC {str(src)!r} does not exist. Give a run directory (its newest complete checkpoint is "
                f"exported), a checkpoint directory (RUN/epoch_N) or an HF/Meta model directory.")
    if (src / "adapter_config.json").is_file() and not (src / "config.json").is_file():
        return (f"SRC {str(src)!r} is a LoRA adapter directory, not a model: an adapter is exported merged into "
                f"its base model. Give the base model as SRC and this directory as --adapter "
                f"(tunekit export BASE_MODEL_DIR {args.dest} --adapter {src}), or give the checkpoint directory "
                f"that holds it ({src.parent}), whose model/ already holds the merged weights.")
    if dest.suffix.lower() != ".gguf":
        return (f"DEST {str(dest)!r} does not end in .gguf; name the file to write, e.g. "
                f"{dest.with_suffix('.gguf') if dest.suffix else dest / 'model.gguf'}.")
    if dest.is_dir():
        return (f"DEST {str(dest)!r} is a directory; give the path of the .gguf file to write, e.g. "
                f"{dest / 'model.gguf'}.")
    if (dest.exists() or dest.is_symlink()) and not args.force:
        return (f"DEST {str(dest)!r} already exists; export never overwrites a file silently. Pass --force to "
                f"replace it, or choose a new file name.")
    return None


def _kinds(dtype: str) -> str:
    return dtype if dtype == "f32" else f"{dtype} (norms and biases in f32)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunekit export``; returns the exit status."""
    args = _parser().parse_args(argv)
    problem = _precheck(args)
    if problem is not None:
        print(f"tunekit export: error: {problem}", file=sys.stderr)
        return 1
    from tunekit.checkpointing import CheckpointError  # torch: after --help and argument checks
    from tunekit.export import GGUFExportError, export_gguf

    try:
        done = export_gguf(args.source, args.dest, dtype=args.dtype, adapter=args.adapter,
                           model_type=args.model_type, name=args.name, force=args.force)
    except (GGUFExportError, CheckpointError) as err:
        print(f"tunekit export: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        from tunekit.config.errors import disk_error_message

        text = disk_error_message(err) or f"could not write {args.dest}: {err.strerror or err}"
        print(f"tunekit export: error: {text}. Nothing was replaced.", file=sys.stderr)
        return 1
    for note in done.notes:
        print(f"tunekit export: note: {note}")
    size = done.path.stat().st_size / 2**20
    print(f"Wrote {done.path} ({size:.1f} MiB): {done.architecture} ({done.model_type}) from {done.weights_dir}, "
          f"{done.tensors} tensors in {_kinds(done.dtype)}, vocabulary {done.vocab_size}, "
          f"context {done.context_length}.")
    print(f"Run it with llama.cpp: llama-cli -m {done.path} -p \"Hello\" -n 64")
    return 0


if __name__ == "__main__":
    sys.exit(main())
