"""Required values (``???``) a user wrote in a YAML file, which OmegaConf would silently fill.

OmegaConf's merge keeps the value underneath when the value on top is ``???``, so
``epochs: ???`` in a copied config quietly becomes the schema's ``epochs: 1`` (and
``optimizer: {lr: ???}`` the option's learning rate). A ``???`` is a promise that the user
gives the value later: this module finds every ``???`` in the config files the composition
read, in their merge order, and reports those that no later layer (a later file or the
command line) filled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

__all__ = ["required_value_problems"]

_MISSING = "???"


def _leaves(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], obj


def _package(text: str, default: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# @package"):
            pkg = line[len("# @package"):].strip()
            if pkg == "_global_":
                return ""
            return pkg.replace("_group_", default)
        if line and not line.startswith("#"):
            break
    return default


def _layer(path: Path, package: str) -> dict[str, Any]:
    """``{absolute key: value}`` of every leaf of one config file (its ``defaults`` left out)."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(data, dict):
        return {}
    data = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
    prefix = package.replace("/", ".")
    return {(f"{prefix}.{k}" if prefix else k): v for k, v in _leaves(data, "")}


def _sets(key: str, leaves: dict[str, Any]) -> bool:
    for k, v in leaves.items():
        if v == _MISSING:
            continue
        if k == key or k.startswith(key + ".") or key.startswith(k + "."):
            return True
    return False


def _missing_or_absent(cfg: DictConfig, key: str) -> bool:
    parent_key, _, last = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
    except Exception:
        return True
    if not isinstance(parent, DictConfig) or last not in parent:
        return True
    return parent._get_node(last)._is_missing()


def required_value_problems(cfg: DictConfig, hydra_cfg: DictConfig) -> list[str]:
    """Every ``???`` of the user's config files that ends up silently filled by a default.

    Args:
        cfg: the composed config.
        hydra_cfg: Hydra's node of that composition (``HydraConfig.get()``).

    Returns:
        One message per key, naming the key, the file and the fix.
    """
    try:
        sources = [
            Path(str(s.path)) for s in hydra_cfg.runtime.config_sources
            if str(s.schema) == "file" and s.path
        ]
        choices = dict(hydra_cfg.runtime.choices)
        config_name = str(hydra_cfg.job.config_name)
        overrides = [str(o) for o in hydra_cfg.overrides.task]
    except Exception:  # not a composition we can trace (e.g. a hand-made HydraConfig)
        return []

    def find(rel: str) -> Path | None:
        return next((d / rel for d in sources if (d / rel).is_file()), None)

    primary = find(f"{config_name}.yaml")
    if primary is None:
        return []
    try:
        defaults = (yaml.safe_load(primary.read_text()) or {}).get("defaults") or []
    except (yaml.YAMLError, AttributeError):
        return []
    layers: list[tuple[Path, dict[str, Any]]] = []
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if entry == "_self_":
            layers.append((primary, _layer(primary, _package(primary.read_text(), ""))))
        elif isinstance(entry, dict) and len(entry) == 1:
            group = str(next(iter(entry))).removeprefix("override ").strip("/")
            option = choices.get(group)
            path = find(f"{group}/{option}.yaml") if option else None
            if path is not None:
                layers.append((path, _layer(path, _package(path.read_text(), group.replace("/", ".")))))
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o or o.startswith("~")]
    given = [k for k in given if k not in choices]
    problems = []
    for i, (path, leaves) in enumerate(layers):
        for key, value in leaves.items():
            if value != _MISSING:
                continue
            if any(_sets(key, later) for _, later in layers[i + 1:]):
                continue
            if any(key == g or key.startswith(g + ".") for g in given):
                continue
            if _missing_or_absent(cfg, key):
                continue  # reported as "has no value (???)" by the resolution pass
            problems.append(
                f"`{key}` is required (`???` in {path}) but was not given: pass it on the"
                f" command line (`{key}=...`) or write its value into that file"
            )
    return problems
