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

from tunekit.config.errors import ConfigError, explain
from tunekit.config.validate import check_config

__all__ = [
    "compose",
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
        ConfigError: one paragraph explaining the composition error.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    shipped = config_dir()
    overrides = list(overrides)
    primary = shipped
    if user_config_dir is not None:
        primary = Path(user_config_dir).resolve()
        overrides.append(f"hydra.searchpath=[file://{shipped}]")
    try:
        with initialize_config_dir(str(primary), version_base="1.3", job_name=recipe):
            cfg = hydra_compose(config_name or recipe, overrides, return_hydra_config=True)
    except Exception as exc:
        text = explain(exc)
        if text is None:
            raise
        raise ConfigError(text) from exc
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


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


def recipe_main(recipe: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator turning ``fn(cfg)`` into a recipe entrypoint.

    The returned ``main()`` is ``hydra.main`` over tunekit's shipped config dir with the
    recipe's primary config, so every Hydra flag works (``--cfg job``, ``-m``,
    ``--config-dir``, ``--config-name``, ...). Before ``fn`` runs, the composed config is
    validated (schema rules and component signatures). Config mistakes print one paragraph
    on stderr and exit with status 1; set ``HYDRA_FULL_ERROR=1`` for the traceback.

    Args:
        recipe: the recipe name (primary config ``conf/<recipe>.yaml``, schema
            ``<recipe>_schema``).
    """

    def decorator(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        import hydra

        failures: list[ConfigError] = []

        @functools.wraps(fn)
        def validated(cfg: DictConfig) -> Any:
            # A ConfigError is kept rather than raised so Hydra does not print its own
            # "Error executing job" banner; main() reports it. Other errors keep tracebacks.
            try:
                check_config(cfg, recipe)
                return fn(cfg)
            except ConfigError as exc:
                if os.environ.get("TUNEKIT_USER_FULL_ERROR") == "1":
                    raise
                failures.append(exc)
                return None

        hydra_main = hydra.main(
            version_base="1.3", config_path=str(config_dir()), config_name=recipe
        )(validated)

        @functools.wraps(fn)
        def main() -> Any:
            failures.clear()
            with _hydra_raises() as user_wants_traceback:
                try:
                    result = hydra_main()
                except Exception as exc:
                    text = None if user_wants_traceback else explain(exc)
                    if text is None:
                        raise
                    _fail(recipe, [text])
            if failures:
                _fail(recipe, list(dict.fromkeys(str(f) for f in failures)))
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
    return list(HydraConfig.get().overrides.task)


def is_multirun() -> bool:
    """Whether the running Hydra job is one job of a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolved_yaml(cfg: DictConfig) -> str:
    """The config with every interpolation resolved, as YAML (what a run used)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
