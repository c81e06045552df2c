"""OmegaConf resolvers used by the shipped configs (registered on import of tunekit.config).

- ``${tunekit.models_root:}``: ``$TUNEKIT_MODELS_ROOT`` if set, else
  ``$XDG_CACHE_HOME/tunekit/models`` (``~/.cache/tunekit/models``). The config key
  ``paths.models_root`` defaults to it, so either the environment or the config can move it.
- ``${tunekit.run_dir:}``: Hydra's ``runtime.output_dir`` during a run; where Hydra has not
  made one (``--cfg job --resolve``, ``tunekit validate``) the absolute ``hydra.run.dir``.
- ``${tunekit.asset:tiny_llama2/hf}``: absolute path of a file or directory under the installed
  package's ``tunekit/assets`` directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

__all__ = [
    "MODELS_ROOT_ENV",
    "asset_path",
    "default_models_root",
    "register_resolvers",
    "run_dir",
]

MODELS_ROOT_ENV = "TUNEKIT_MODELS_ROOT"
_ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def default_models_root() -> str:
    """Where downloaded weights live unless ``paths.models_root`` says otherwise."""
    env = os.environ.get(MODELS_ROOT_ENV)
    if env:
        return str(Path(env).expanduser().resolve())
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache).expanduser() / "tunekit" / "models")


def asset_path(relative: str) -> str:
    """Absolute path of ``relative`` inside the package's bundled assets directory."""
    return str(_ASSETS_DIR / relative)


def run_dir() -> str:
    """The run's output directory (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return str(Path("outputs").resolve())
    hydra_cfg = HydraConfig.get()
    out = OmegaConf.select(hydra_cfg, "runtime.output_dir", throw_on_missing=False)
    if out:
        return str(out)
    # The user config (hydra's parent) may no longer hold the `hydra` key: re-root a copy.
    detached = OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)})
    return str(Path(detached.hydra.run.dir).resolve())


def register_resolvers() -> None:
    """Register tunekit's resolvers with OmegaConf (idempotent)."""
    resolvers = (
        ("tunekit.models_root", default_models_root),
        ("tunekit.asset", asset_path),
        ("tunekit.run_dir", run_dir),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
