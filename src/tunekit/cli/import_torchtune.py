"""``tunekit import-torchtune CONFIG.yaml [-o my.yaml]``: a torchtune recipe config as a tunekit one.

Examples::

    tune cp llama2/7B_lora_single_device 7B_lora.yaml        # (torchtune) a config to start from
    tunekit import-torchtune 7B_lora.yaml -o my_lora.yaml     # -> a lora_finetune config
    tunekit validate my_lora.yaml dataset.source=data.json    # check it, then run it:
    tunekit run my_lora.yaml dataset.source=data.json

Every setting that could not be carried over is listed (on stderr, and in the file's header) with
the reason; see docs/migrating-from-torchtune.md for the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit import-torchtune",
        description="Translate a torchtune recipe config (LoRA/QLoRA or full fine-tuning) into a tunekit "
                    "primary config, listing every setting it could not carry over and why.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="a torchtune recipe config (e.g. from `tune cp`)")
    p.add_argument("-o", "--output", default=None, help="the tunekit YAML to write (default: print it)")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    return p


def _read(path: Path) -> tuple[object, str | None]:
    from tunekit.config.errors import yaml_error_text

    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        return None, (f"CONFIG {str(path)!r} {what}; give the torchtune recipe YAML to translate (`tune cp "
                      f"llama2/7B_lora_single_device my.yaml` writes one).")
    try:
        with path.open(encoding="utf-8") as f:  # a stream with a name: the error names the file
            return yaml.safe_load(f), None
    except UnicodeDecodeError:
        return None, f"CONFIG {str(path)!r} is not UTF-8 text, so not a YAML config; give the torchtune recipe YAML."
    except yaml.YAMLError as err:
        return None, yaml_error_text(err)


def _shipped_hydra(conf: Path, data: object) -> dict | None:
    """The ``hydra:`` node of the shipped primary config of the recipe the translation will use."""
    model = data.get("model") if isinstance(data, dict) else None
    component = str(model.get("_component_", "")) if isinstance(model, dict) else ""
    recipe = "lora_finetune" if component.rsplit(".", 1)[-1].startswith(("lora_", "qlora_")) else "full_finetune"
    try:
        shipped = yaml.safe_load((conf / f"{recipe}.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return shipped.get("hydra") if isinstance(shipped.get("hydra"), dict) else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunekit import-torchtune``; returns the exit status."""
    args = _parser().parse_args(argv)
    from tunekit.config.entrypoint import config_dir
    from tunekit.config.torchtune import TorchtuneConfigError, translate

    src = Path(args.config).expanduser()
    out = Path(args.output).expanduser() if args.output else None
    if out is not None and out.suffix not in (".yaml", ".yml"):
        print(f"tunekit import-torchtune: error: -o {str(out)!r} must end in .yaml (tunekit finds a config by "
              f"its name: `tunekit run {out.with_suffix('.yaml')}`).", file=sys.stderr)
        return 1
    if out is not None and out.exists() and not args.force:
        print(f"tunekit import-torchtune: error: -o {str(out)!r} already exists; pass --force to replace it, or "
              f"choose a new file name.", file=sys.stderr)
        return 1
    data, problem = _read(src)
    if problem is not None:
        print(f"tunekit import-torchtune: error: {problem}", file=sys.stderr)
        return 1
    models = {p.stem for p in (config_dir() / "model").glob("*.yaml")}
    try:
        done = translate(data, source=src.name, models=models, hydra=_shipped_hydra(config_dir(), data))
    except TorchtuneConfigError as err:
        print(f"tunekit import-torchtune: error: {src}: {err}", file=sys.stderr)
        return 1
    if out is not None:
        done.target = str(out)
    if out is None:
        sys.stdout.write(done.text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(done.text, encoding="utf-8")
    for key, why in done.not_carried:
        print(f"not carried over: {key}: {why}", file=sys.stderr)
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    if out is not None:
        need = " dataset.source=/path/to/data.json" if "source" not in done.config.get("dataset", {}) else ""
        print(f"Wrote {out} ({done.recipe}). Check it with `tunekit validate {out}{need}`, run it with "
              f"`tunekit run {out}{need}`.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
