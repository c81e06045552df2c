"""The ``tunekit`` command: ls, cp, validate, run (and plug-in subcommands: download, convert, export,
import-torchtune).

Nothing here imports torch at module level; ``validate`` imports the modules that config
nodes name (which may import torch) but builds nothing.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

__all__ = ["EXTERNAL_COMMANDS", "config_groups", "list_recipes", "main"]

# Subcommands implemented in other modules: name -> (module with `main(argv) -> int`, help).
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("tunekit.cli.download", "download a model from the Hugging Face Hub"),
    "convert": ("tunekit.cli.convert", "write a checkpoint in HF or Meta format"),
    "export": ("tunekit.cli.export", "write a model, checkpoint or run as one GGUF file for llama.cpp"),
    "import-torchtune": ("tunekit.cli.import_torchtune", "translate a torchtune recipe config into a tunekit one"),
    "data": ("tunekit.cli.data", "preview what a recipe trains on: samples with trained tokens marked, counts"),
    "plot": ("tunekit.cli.plot", "draw loss, learning rate, grad norm and tokens/s of runs as PNGs"),
}

_EPILOG = """\
customising a shipped config:
  tunekit cp lora_finetune my_configs/my_lora.yaml      # a primary config
  tunekit cp model/llama2_7b my_configs/                # a group option -> my_configs/model/
  tunekit run lora_finetune --config-dir my_configs --config-name my_lora
  python -m recipes.lora_finetune --config-dir my_configs --config-name my_lora
  --config-dir adds a directory searched before the shipped configs, so a copied group option
  (my_configs/model/my_model.yaml) is selected with model=my_model. A copied recipe
  (tunekit cp lora_finetune.py my_recipe.py) runs with `python my_recipe.py [overrides]`.
"""


def _dirs() -> tuple[Path, Path]:
    from tunekit.config.entrypoint import config_dir, recipes_dir

    return config_dir(), recipes_dir()


def list_recipes(conf: Path | None = None) -> list[str]:
    """Names of the shipped recipes (one primary YAML per recipe in the config root)."""
    conf = conf or _dirs()[0]
    return sorted(p.stem for p in conf.glob("*.yaml"))


def config_groups(recipe: str, conf: Path | None = None) -> dict[str, tuple[str, list[str]]]:
    """``{group: (default option, all options)}`` for the groups a recipe's defaults pick."""
    conf = conf or _dirs()[0]
    primary = yaml.safe_load((conf / f"{recipe}.yaml").read_text()) or {}
    groups = {}
    for entry in primary.get("defaults", []):
        if isinstance(entry, dict):
            for group, default in entry.items():
                group = str(group).removeprefix("override ").strip("/")
                options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
                groups[group] = (str(default), options)
    return groups


def _cmd_ls(args: argparse.Namespace) -> int:
    conf, recipes = _dirs()
    for recipe in list_recipes(conf):
        script = recipes / f"{recipe}.py"
        print(f"{recipe}  (config {conf / (recipe + '.yaml')}; recipe {script})")
        for group, (default, options) in config_groups(recipe, conf).items():
            shown = ", ".join(f"{o}*" if o == default else o for o in options)
            print(f"  {group:<14} {shown}")
    print("(* = default; choose with group=option, e.g. model=llama2_7b)")
    return 0


def _shipped_files() -> dict[str, Path]:
    conf, recipes = _dirs()
    files = {p.relative_to(conf).with_suffix("").as_posix(): p for p in conf.rglob("*.yaml")}
    files.update({p.name: p for p in recipes.glob("*.py") if not p.name.startswith("_")})
    return files


def _cmd_cp(args: argparse.Namespace) -> int:
    from tunekit.config.errors import close_matches

    files = _shipped_files()
    name = args.name[:-5] if args.name.endswith(".yaml") else args.name
    if name not in files:
        hits = close_matches(name, files)
        hint = f" Did you mean: {', '.join(hits)}?" if hits else ""
        print(
            f"tunekit cp: no shipped config or recipe named `{args.name}`.{hint}"
            f" Valid names: {', '.join(sorted(files))}.",
            file=sys.stderr,
        )
        return 1
    src = files[name]
    dest = Path(args.dest)
    if dest.is_dir() or args.dest.endswith(("/", "\\")):
        dest = dest / src.relative_to(src.parents[len(Path(name).parts) - 1])
    if dest.exists() and not args.force:
        print(f"tunekit cp: `{dest}` exists; pass --force to overwrite it.", file=sys.stderr)
        return 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    print(f"Copied {src} to {dest}")
    if src.suffix == ".yaml" and "/" not in name:
        print(
            f"Run it with: tunekit run {name} --config-dir {dest.parent}"
            f" --config-name {dest.stem}"
        )
    elif src.suffix == ".yaml":
        print(
            f"Select it with {Path(name).parts[0]}={dest.stem} and --config-dir"
            f" {dest.parent.parent} (the directory holding `{Path(name).parts[0]}/`)."
        )
    else:
        print(f"Run it with: python {dest} [overrides]")
    return 0


def _split_hydra_flags(items: Sequence[str]) -> tuple[list[str], str | None, str | None]:
    overrides, config_dir, config_name = [], None, None
    it = iter(items)
    for item in it:
        for flag in ("--config-dir", "--config-name", "-cd", "-cn"):
            if item == flag or item.startswith(flag + "="):
                value = item.split("=", 1)[1] if "=" in item else next(it, None)
                if flag in ("--config-dir", "-cd"):
                    config_dir = value
                else:
                    config_name = value
                break
        else:
            overrides.append(item)
    return overrides, config_dir, config_name


def _cmd_validate(args: argparse.Namespace) -> int:
    from tunekit.config import ConfigError, config_problems
    from tunekit.config.entrypoint import compose_with_hydra
    from tunekit.config.validate import format_problems

    if "--no-build" in args.overrides:  # also accepted after the recipe name
        args.overrides = [o for o in args.overrides if o != "--no-build"]
        args.no_build = True
    recipe, items = _recipe_and_overrides(args)
    if recipe is None:
        return 1
    args.recipe = recipe
    if "-m" in items or "--multirun" in items:
        print("tunekit validate: checks one config, not a sweep: drop `-m` and give each key one"
              " value (validate every sweep point you plan, e.g. `optimizer.lr=1e-4`, then"
              " `optimizer.lr=3e-4`).", file=sys.stderr)
        return 1
    overrides, config_dir, config_name = _split_hydra_flags(items)
    problems: list[str] = []
    try:
        cfg, hydra_node = compose_with_hydra(
            args.recipe, overrides, user_config_dir=config_dir, config_name=config_name,
            collect=problems,
        )
    except ConfigError as exc:
        print(f"tunekit validate: {exc}", file=sys.stderr)
        return 1
    problems += config_problems(cfg, args.recipe, hydra_node)
    notes: list[str] = []
    built: list[str] = []
    if not args.no_build:
        from tunekit.config.build_check import build_problems

        found, notes, built = build_problems(cfg, args.recipe, problems)
        problems += found
    for note in notes:
        print(f"tunekit validate: note: {note}", file=sys.stderr)
    if problems:
        print(format_problems(problems, f"Invalid `{args.recipe}` config"), file=sys.stderr)
        return 1
    what = "composes and every component matches its signature"
    if built:
        what += f"; built for real: {', '.join(built)}"
    print(f"OK: `{args.recipe}` {what}.")
    return 0


def _recipe_of_yaml(path: Path) -> str | None:
    """The recipe a YAML file configures (its defaults name ``<recipe>_schema`` or ``<recipe>``)."""
    from tunekit.config.errors import yaml_error_text

    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        print(f"tunekit: cannot read `{path}`: {exc.strerror}.", file=sys.stderr)
        return None
    except yaml.YAMLError as exc:
        print(f"tunekit: {yaml_error_text(exc)}", file=sys.stderr)
        return None
    recipes = list_recipes()
    defaults = data.get("defaults", []) if isinstance(data, dict) else []
    for entry in defaults if isinstance(defaults, list) else []:
        name = str(entry).removesuffix("_schema") if isinstance(entry, str) else None
        if name in recipes:
            return name
    print(
        f"tunekit: cannot tell which recipe `{path}` configures: its `defaults:` list names none"
        f" of {', '.join(r + '_schema' for r in recipes)}. Name the recipe first:"
        f" `tunekit validate <recipe> --config-dir {path.parent} --config-name {path.stem}`.",
        file=sys.stderr,
    )
    return None


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``tunekit validate|run RECIPE ...`` or ``tunekit validate|run my.yaml ...``."""
    if args.recipe.endswith((".yaml", ".yml")) or "/" in args.recipe:
        path = Path(args.recipe)
        if not path.is_file():
            print(f"tunekit: `{path}` is not a file; give a recipe name (see `tunekit ls`)"
                  " or the path of a YAML config.", file=sys.stderr)
            return None, []
        recipe = _recipe_of_yaml(path)
        flags = ["--config-dir", str(path.parent.resolve()), "--config-name", path.stem]
        return recipe, flags + list(args.overrides)
    if not _known_recipe(args.recipe):
        return None, []
    return args.recipe, list(args.overrides)


def _known_recipe(recipe: str) -> bool:
    from tunekit.config.errors import did_you_mean

    recipes = list_recipes()
    if recipe in recipes:
        return True
    print(
        f"tunekit: unknown recipe `{recipe}`.{did_you_mean(recipe, recipes)}"
        f" Valid recipes: {', '.join(recipes)}.",
        file=sys.stderr,
    )
    return False


def _cmd_run(args: argparse.Namespace) -> int:
    recipe, items = _recipe_and_overrides(args)
    if recipe is None:
        return 1
    script = _dirs()[1] / f"{recipe}.py"
    sys.argv = [str(script), *items]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunekit",
        description="Native-PyTorch LLM fine-tuning driven by Hydra configs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("ls", help="list recipes, their config groups and options")
    p.set_defaults(func=_cmd_ls)
    p = sub.add_parser(
        "cp",
        help="copy a shipped config, group option or recipe to customise it",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="lora_finetune | model/llama2_7b | lora_finetune.py ...")
    p.add_argument("dest", help="destination file or directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd_cp)
    for name, func, text in (
        ("validate", _cmd_validate, "compose a config, check it and build its cheap components"
                                    " (data set, optimizer, lr schedule, loss); nothing is written"),
        ("run", _cmd_run, "run a recipe (any Hydra flag works: --cfg job, -m, --config-dir)"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        if name == "validate":
            p.add_argument("--no-build", action="store_true",
                           help="only compose and check signatures (do not import torch)")
        p.add_argument("recipe", help="recipe name (see `tunekit ls`) or a YAML config file")
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value, group=option")
        p.set_defaults(func=func)
    for name, (_, text) in EXTERNAL_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tunekit`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while composing, tokenizing for validate, converting or downloading: no traceback.
        print(f"\ntunekit {argv[0] if argv else ''}: interrupted (Ctrl-C) and stopped; run the same command again"
              " to redo it.", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if argv and argv[0] in EXTERNAL_COMMANDS:
        module_name = EXTERNAL_COMMANDS[argv[0]][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            print(f"tunekit {argv[0]}: not available in this installation.", file=sys.stderr)
            return 1
        return int(module.main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `tunekit ls | head`: the reader went away; not an error worth a traceback.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A destination that is a file, read-only, full: one paragraph, not a traceback.
        from tunekit.config.errors import disk_error_message

        text = disk_error_message(exc)
        if text is None:
            raise
        print(f"tunekit {argv[0] if argv else ''}: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
