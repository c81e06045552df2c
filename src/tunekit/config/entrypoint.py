"""Finding the shipped configs and recipes, composing, and the recipe entrypoint helper.

Two layouts are supported:

- installed (``pip install .``): ``site-packages/tunekit/conf`` and ``tunekit/recipes``;
- checkout (editable install or ``python -m recipes.x``): ``<repo>/conf`` and ``<repo>/recipes``
  next to ``<repo>/src/tunekit``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tunekit.config.errors import (
    ConfigError,
    did_you_mean,
    explain,
    explain_with_override,
    paragraph,
)
from tunekit.config.schemas import SCHEMAS
from tunekit.config.secrets import redact, redact_override, secret_problems
from tunekit.config.torchtune import torchtune_key_hint
from tunekit.config.validate import check_config, format_problems

__all__ = [
    "compose",
    "compose_with_hydra",
    "config_dir",
    "find_shipped_dir",
    "is_multirun",
    "job_overrides",
    "recipe_main",
    "recipes_dir",
    "resolved_yaml",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../tunekit


def find_shipped_dir(name: str, package_dir: Path | None = None) -> Path:
    """Locate a directory shipped with tunekit (``conf`` or ``recipes``).

    Args:
        name: ``"conf"`` or ``"recipes"``.
        package_dir: the ``tunekit`` package directory (default: this installation's).

    Returns:
        ``<package_dir>/<name>`` when installed from a wheel, else ``<repo>/<name>`` for a
        checkout with the ``src/`` layout.

    Raises:
        ConfigError: neither location exists.
    """
    package_dir = Path(package_dir or _PACKAGE_DIR)
    candidates = [package_dir / name]
    if package_dir.parent.name == "src":
        candidates.append(package_dir.parent.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"Cannot find tunekit's `{name}` directory; looked in: {tried}.")


def config_dir() -> Path:
    """The Hydra config root shipped with tunekit."""
    return find_shipped_dir("conf")


def recipes_dir() -> Path:
    """The directory holding the recipe entrypoints shipped with tunekit."""
    return find_shipped_dir("recipes")


def unknown_yaml_keys(path: Path, schema: type | None) -> list[str]:
    """Every key of a recipe's YAML file that its schema does not have, with close matches."""
    import dataclasses
    import typing

    import yaml

    if schema is None:
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(data, dict):
        return []
    problems: list[str] = []

    def walk(node: dict, cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls)]
        for key, value in node.items():
            if prefix == "" and key in ("defaults", "hydra"):
                continue
            if key not in fields:
                scope = f"under `{prefix[:-1]}`" if prefix else "at the top level"
                given = None if isinstance(value, (dict, list)) else str(value).lower()
                torchtune = torchtune_key_hint(f"{prefix}{key}", given)  # resume_from_checkpoint -> resume=auto
                hint = f" {torchtune}" if torchtune else did_you_mean(str(key), fields)
                problems.append(
                    f"{path}: unknown key `{prefix}{key}` ({scope}).{hint}"
                    f" Valid keys {scope}: {', '.join(fields)}."
                )
            elif dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
                walk(value, hints[key], f"{prefix}{key}.")

    walk(data, schema, "")
    return problems


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def compose_with_hydra(
    recipe: str,
    overrides: Sequence[str] = (),
    *,
    user_config_dir: str | Path | None = None,
    config_name: str | None = None,
    collect: list[str] | None = None,
) -> tuple[DictConfig, DictConfig]:
    """:func:`compose`, also returning Hydra's own node (``hydra.runtime``, ``overrides``, ...).

    When composition fails, the failing command-line override is dropped and composition
    retried, so every bad override (unknown keys, wrong types, unknown group options) is
    reported in one error rather than one per attempt.

    Args:
        collect: when given, the problems of the dropped overrides are appended to it and the
            config composed without them is returned (so the caller can go on checking it);
            only a config that cannot be composed at all raises.

    Raises:
        ConfigError: every composition problem, one line each.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    shipped = config_dir()
    remaining = list(overrides)
    extra = []
    primary = shipped
    if user_config_dir is not None:
        primary = Path(user_config_dir).expanduser().resolve()
        if not primary.is_dir():
            raise ConfigError(
                f"--config-dir `{user_config_dir}` is not a directory; give the directory that"
                " holds your YAML (e.g. the one `tunekit cp lora_finetune DIR/my.yaml` wrote)."
            )
        extra.append(f"hydra.searchpath=[file://{shipped}]")
    problems: list[str] = []
    while True:
        culprit, failed = None, False
        try:
            with initialize_config_dir(str(primary), version_base="1.3", job_name=recipe):
                cfg = hydra_compose(config_name or recipe, remaining + extra, return_hydra_config=True)
        except Exception as exc:
            text, culprit = explain_with_override(exc)
            if text is None:
                raise
            problems.append(text)
            failed = True
        if not failed:
            break
        # Retry outside the except block, so the next error does not chain onto this one.
        keys = [_override_key(o) for o in remaining]
        if culprit is None or _override_key(culprit) not in keys:
            break
        del remaining[keys.index(_override_key(culprit))]
    if problems and not failed and collect is not None:
        collect.extend(problems)  # the config composed without the bad overrides
        problems = []
    if problems:
        if culprit is None and "unknown key" in problems[-1]:
            # A misspelt key in a YAML file: OmegaConf stops at the first, list them all.
            path = primary / f"{config_name or recipe}.yaml"
            in_file = unknown_yaml_keys(path, SCHEMAS.get(recipe)) if path.is_file() else []
            if in_file:
                problems[-1:] = in_file
        if len(problems) == 1:
            raise ConfigError(problems[0])
        from tunekit.config.validate import format_problems

        raise ConfigError(format_problems(problems, f"Invalid `{recipe}` config"))
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    hydra_node = HydraConfig.get()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_node


def compose(
    recipe: str,
    overrides: Sequence[str] = (),
    *,
    user_config_dir: str | Path | None = None,
    config_name: str | None = None,
) -> DictConfig:
    """Compose a recipe's config exactly as a run would, without running anything.

    Hydra's config is installed as the current ``HydraConfig`` so ``${hydra:...}`` and
    ``output_dir`` (the would-be run dir) resolve; the ``hydra`` node is removed from the
    result.

    Args:
        recipe: recipe name; also the default primary config name.
        overrides: command-line overrides (``key=value``, ``group=option``, ``+key=value``).
        user_config_dir: an extra config dir searched first, like Hydra's ``--config-dir``.
        config_name: primary config name, like Hydra's ``--config-name``.

    Raises:
        ConfigError: one paragraph explaining every composition error (see
            :func:`compose_with_hydra`).
    """
    return compose_with_hydra(
        recipe, overrides, user_config_dir=user_config_dir, config_name=config_name
    )[0]


# Hydra flags that take a value (the value is not an override).
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
                "--experimental-rerun")


def split_hydra_argv(argv: Sequence[str]) -> tuple[list[str], str | None, str | None, bool]:
    """``(overrides, --config-dir, --config-name, multirun)`` from a recipe's command line."""
    overrides: list[str] = []
    config_dir_, config_name, multirun = None, None, False
    it = iter(argv)
    for item in it:
        flag, eq, value = item.partition("=")
        if flag in ("--config-dir", "-cd", "--config-name", "-cn"):
            value = value if eq else next(it, None)
            if flag in ("--config-dir", "-cd"):
                config_dir_ = value
            else:
                config_name = value
        elif item in ("-m", "--multirun"):
            multirun = True
        elif flag in _VALUE_FLAGS:
            if not eq and item not in ("--info", "-i"):
                next(it, None)
        elif not item.startswith("-"):
            overrides.append(item)
    return overrides, config_dir_, config_name, multirun


def _diagnose_argv(recipe: str) -> str | None:
    """Every composition problem of this process's command line (None: cannot tell)."""
    overrides, cdir, cname, multirun = split_hydra_argv(sys.argv[1:])
    if multirun:
        return None
    try:
        compose(recipe, overrides, user_config_dir=cdir, config_name=cname)
    except ConfigError as exc:
        return str(exc)
    except Exception:
        return None
    return None


@contextlib.contextmanager
def _hydra_raises() -> Iterator[bool]:
    """Let Hydra raise instead of printing (we print); yields whether the user asked for it."""
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if user_wants_traceback:
        os.environ["TUNEKIT_USER_FULL_ERROR"] = "1"
    try:
        yield user_wants_traceback
    finally:
        if not user_wants_traceback:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        os.environ.pop("TUNEKIT_USER_FULL_ERROR", None)


def _fail(recipe: str, messages: list[str]) -> None:
    for text in messages:
        print(f"tunekit {recipe}: {text}", file=sys.stderr)
    sys.exit(1)


def _interrupted(recipe: str) -> None:
    """Ctrl-C outside the training loop's own handler (loading, tokenizing, a second Ctrl-C): one paragraph, 130."""
    print(
        f"\ntunekit {recipe}: interrupted (Ctrl-C) and stopped at once. Every checkpoint saved before is intact"
        " (checkpoints are written under a temporary name and renamed into place; a save cut short is never"
        " resumed). To continue, run the same command with resume=auto and the same hydra.run.dir; during"
        " training a single Ctrl-C finishes the step and saves first.",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(130)


def _hydra_node() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _record_job_failure(text: str) -> None:
    """In a ``-m`` sweep, leave the job's one-paragraph failure in its directory for the summary."""
    from tunekit.config.callbacks import write_job_failure

    hydra_node = _hydra_node()
    out = OmegaConf.select(hydra_node, "runtime.output_dir") if hydra_node is not None else None
    if out:
        write_job_failure(out, text)


def recipe_main(recipe: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator turning ``fn(cfg)`` into a recipe entrypoint.

    The returned ``main()`` is ``hydra.main`` over tunekit's shipped config dir with the
    recipe's primary config, so every Hydra flag works (``--cfg job``, ``-m``,
    ``--config-dir``, ``--config-name``, ...). Before ``fn`` runs, the composed config is
    validated (required values, schema rules, component signatures). Config mistakes print
    one paragraph on stderr and exit with status 1; set ``HYDRA_FULL_ERROR=1`` for the
    traceback.

    In a ``-m`` sweep a failing job does not stop the others: its paragraph goes to
    ``<job dir>/failure.json`` (the sweep's ``summary.md``/``summary.json`` list it as
    ``failed``), and the sweep ends with one paragraph naming the failed jobs and status 1.

    Args:
        recipe: the recipe name (primary config ``conf/<recipe>.yaml``, schema
            ``<recipe>_schema``).
    """

    def decorator(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        import hydra

        failures: list[str] = []

        @functools.wraps(fn)
        def validated(cfg: DictConfig) -> Any:
            # A ConfigError is kept rather than raised so Hydra does not print its own
            # "Error executing job" banner; main() reports it. Other errors keep tracebacks,
            # except in a sweep, where the job is recorded as failed and the sweep goes on.
            try:
                check_config(cfg, recipe, hydra_cfg=_hydra_node())
                return fn(cfg)
            except ConfigError as exc:
                if os.environ.get("TUNEKIT_USER_FULL_ERROR") == "1":
                    raise
                text = str(exc)
            except Exception as exc:
                if not is_multirun():
                    raise
                import traceback

                traceback.print_exc()
                text = paragraph(f"{type(exc).__name__}: {exc}").replace("\n", " ")
            failures.append(text)
            if is_multirun():
                _record_job_failure(text)
                job = _hydra_node()
                num = OmegaConf.select(job, "job.num") if job is not None else None
                print(f"tunekit {recipe}: sweep job {num} failed: {text}", file=sys.stderr, flush=True)
            return None

        hydra_main = hydra.main(
            version_base="1.3", config_path=str(config_dir()), config_name=recipe
        )(validated)

        @functools.wraps(fn)
        def main() -> Any:
            from tunekit.config import callbacks

            failures.clear()
            callbacks.LAST_SWEEP.clear()
            # A token on the command line is refused before Hydra prints, saves or sweeps it.
            secrets = secret_problems({}, split_hydra_argv(sys.argv[1:])[0])
            if secrets:
                _fail(recipe, [format_problems(secrets, f"Invalid `{recipe}` command line")])
            text = None
            with _hydra_raises() as user_wants_traceback:
                try:
                    result = hydra_main()
                except KeyboardInterrupt:
                    if user_wants_traceback:
                        raise
                    _interrupted(recipe)
                except Exception as exc:
                    text = None if user_wants_traceback else explain(exc)
                    if text is None:
                        raise
            if text is not None:  # outside the except block: a new error must not chain onto it
                if callbacks.LAST_SWEEP.get("dir") and "records" not in callbacks.LAST_SWEEP:
                    # A sweep point that does not compose stops Hydra's launcher: the points
                    # already run are still summarised, this one as failed.
                    callbacks.summarize_sweep(callbacks.LAST_SWEEP["dir"], not_started=text)
                    _fail(recipe, [callbacks.failed_jobs_paragraph(callbacks.LAST_SWEEP)])
                _fail(recipe, [_diagnose_argv(recipe) or text])
            if callbacks.LAST_SWEEP.get("records"):
                failed = [r for r in callbacks.LAST_SWEEP["records"] if r["status"] == "failed"]
                if failed:
                    _fail(recipe, [callbacks.failed_jobs_paragraph(callbacks.LAST_SWEEP)])
                return result
            if failures:
                _fail(recipe, list(dict.fromkeys(failures)))
            return result

        return main

    return decorator


def print_config(cfg: DictConfig) -> None:
    """Print the resolved config as YAML (what a recipe does until its body lands)."""
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")


def job_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job (empty outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [redact_override(o) for o in HydraConfig.get().overrides.task]


def is_multirun() -> bool:
    """Whether the running Hydra job is one job of a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolved_yaml(cfg: DictConfig) -> str:
    """The config with every interpolation resolved, as YAML (what a run used), secrets redacted."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True))))
