"""tunekit's config layer: instantiate, typed schemas, resolvers and the recipe entrypoint.

Importing this package registers the recipe schemas in Hydra's ConfigStore and tunekit's
OmegaConf resolvers. It never imports torch.
"""

from tunekit.config._instantiate import ConfigPartial, instantiate
from tunekit.config.devices import check_device
from tunekit.config.entrypoint import (
    compose,
    compose_with_hydra,
    config_dir,
    find_shipped_dir,
    is_multirun,
    job_overrides,
    print_config,
    recipe_main,
    recipes_dir,
    resolved_yaml,
)
from tunekit.config.errors import ConfigError, explain
from tunekit.config.resolvers import default_models_root, register_resolvers
from tunekit.config.schemas import SCHEMAS, register_schemas
from tunekit.config.secrets import redact, secret_problems
from tunekit.config.validate import check_config, config_problems, locate

register_resolvers()
register_schemas()

__all__ = [
    "SCHEMAS",
    "ConfigError",
    "ConfigPartial",
    "check_config",
    "check_device",
    "compose",
    "compose_with_hydra",
    "config_dir",
    "config_problems",
    "default_models_root",
    "explain",
    "find_shipped_dir",
    "instantiate",
    "is_multirun",
    "job_overrides",
    "locate",
    "print_config",
    "recipe_main",
    "recipes_dir",
    "redact",
    "resolved_yaml",
    "secret_problems",
]
