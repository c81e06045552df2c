"""``instantiate``: Hydra's instantiate with ``_component_`` as a synonym of ``_target_``.

The node is copied (keeping its parent, so Hydra's error messages carry the full key path),
``_component_`` is renamed to ``_target_`` at every depth, and the copy goes to
``hydra.utils.instantiate``: ``_partial_``, ``_recursive_``, ``_convert_``, ``_args_`` and
Hydra's target policy (the blocklist of dangerous targets) keep working unchanged. Errors are
rewritten into one paragraph by ``tunekit.config.validate.explain_instantiation_error``.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from tunekit.config.errors import ConfigError

__all__ = ["COMPONENT", "TARGET", "ConfigPartial", "instantiate", "target_key", "to_hydra_node"]

COMPONENT = "_component_"
TARGET = "_target_"


def target_key(node: DictConfig) -> str | None:
    """The key that names the callable of ``node`` (``_component_`` or ``_target_``), if any.

    Raises:
        ConfigError: both keys are present and disagree.
    """
    has_c, has_t = COMPONENT in node, TARGET in node
    if has_c and has_t:
        a, b = node._get_node(COMPONENT)._value(), node._get_node(TARGET)._value()
        if a != b:
            path = node._get_full_key(None) or "<root>"
            raise ConfigError(
                f"`{path}` has both `_component_`={a!r} and `_target_`={b!r}; they are"
                " synonyms, keep only one."
            )
    return COMPONENT if has_c else TARGET if has_t else None


def _rename_in_place(node: Any) -> None:
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing():
            return
        if target_key(node) == COMPONENT:
            value = node._get_node(COMPONENT)._value()
            if TARGET not in node:
                node[TARGET] = value
            del node[COMPONENT]
        if "_recursive_" in node and node._get_node("_recursive_")._value() is False:
            return  # Hydra hands the children over unbuilt: leave them as the user wrote them
        for key in list(node.keys()):
            _rename_in_place(node._get_node(key))
    elif isinstance(node, ListConfig):
        if node._is_none() or node._is_missing():
            return
        for i in range(len(node)):
            _rename_in_place(node._get_node(i))


def _mentions_component(obj: Any) -> bool:
    if isinstance(obj, (DictConfig, ListConfig)):
        return True
    if isinstance(obj, dict):
        return COMPONENT in obj or any(_mentions_component(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_mentions_component(v) for v in obj)
    return False


def to_hydra_node(config: Any) -> Any:
    """Copy ``config`` with ``_component_`` renamed to ``_target_`` at every depth.

    DictConfig/ListConfig copies keep their parent so key paths stay absolute; plain dicts and
    lists are converted to OmegaConf first. Other values are returned unchanged.
    """
    if isinstance(config, (dict, list)):
        config = OmegaConf.create(config, flags={"allow_objects": True})
    if not isinstance(config, (DictConfig, ListConfig)):
        return config
    node = copy.deepcopy(config)
    node._set_parent(config._get_parent())
    node._set_flag(["allow_objects", "struct", "readonly"], [True, False, False])
    _rename_in_place(node)
    return node


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Build the object a config node describes.

    ``_component_`` and ``_target_`` are synonyms at every depth; everything else is Hydra's
    ``hydra.utils.instantiate``: ``_partial_``, ``_recursive_``, ``_convert_``, ``_args_``,
    nested nodes and positional ``args`` behave exactly as documented there.

    Args:
        config: a DictConfig/dict with ``_component_`` or ``_target_`` (or None -> None).
        *args: positional arguments prepended to the node's ``_args_``.
        **kwargs: keyword arguments overriding the node's keys.

    Returns:
        The built object (or a ``functools.partial`` with ``_partial_: true``).

    Raises:
        ConfigError: one paragraph naming the key path, the dotted path and the fix.
    """
    if config is None:
        return None
    node = to_hydra_node(config)
    kwargs = {k: to_hydra_node(v) if _mentions_component(v) else v for k, v in kwargs.items()}
    try:
        built = hydra.utils.instantiate(node, *args, **kwargs)
    except InstantiationException as exc:
        from tunekit.config.validate import explain_instantiation_error

        raise ConfigError(explain_instantiation_error(exc, config, args, kwargs)) from exc
    if isinstance(built, functools.partial) and isinstance(node, DictConfig) and TARGET in node:
        path = config._get_full_key(None) if OmegaConf.is_config(config) else ""
        built = ConfigPartial.wrap(built, path=path or "<root>", dotted=str(node[TARGET]),
                                   config_keys=[str(k) for k in node.keys()])
    return built


class ConfigPartial(functools.partial):
    """A ``functools.partial`` built from a config node (``_partial_: true``).

    Calling it is where the component sees its values (an optimizer gets its parameters, a
    schedule its optimizer), so that is where a bad value fails: an exception of exactly
    ``ValueError``/``TypeError``/``IndexError``/``KeyError`` becomes a :class:`ConfigError`
    naming the key path (``optimizer.lr``), the value and the fix. Any other exception keeps
    its type.
    """

    tk_path: str = "<root>"
    tk_dotted: str = "?"
    tk_values: dict[str, Any] = {}
    tk_target: Any = None

    @classmethod
    def wrap(cls, part: functools.partial, *, path: str, dotted: str,
             config_keys: list[str]) -> "ConfigPartial":
        # `part` may be Hydra's own partial subclass (it checks the target policy when
        # called): keep it whole as the wrapped callable.
        new = cls(part)
        new.tk_path, new.tk_dotted, new.tk_target = path, dotted, part.func
        new.tk_values = {k: v for k, v in part.keywords.items()
                         if k in config_keys and not k.startswith("_")}
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            from omegaconf.errors import OmegaConfBaseException

            from tunekit.config.validate import VALUE_ERRORS, build_error_text

            if type(exc) not in VALUE_ERRORS and not isinstance(exc, OmegaConfBaseException):
                raise
            values = {k: v for k, v in self.tk_values.items() if k not in kwargs}

            def probe(**reset: Any) -> Any:
                return functools.partial.__call__(self, *args, **{**kwargs, **reset})

            text = build_error_text(exc, path=self.tk_path, dotted=self.tk_dotted,
                                    target=self.tk_target, values=values, probe=probe)
            raise ConfigError(text) from exc
