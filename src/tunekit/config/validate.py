"""Validate a composed config without building anything.

Three passes, all problems collected before anything is reported:

1. every value resolves (no ``???`` left, no broken ``${...}``);
2. the recipe schema's ranges, choices and cross-field rules (``schemas.schema_problems``);
3. every node with ``_component_``/``_target_`` (nested ones too) names an importable callable
   whose signature accepts the node's keys and gets its required arguments
   (``_partial_: true`` nodes may leave arguments for the recipe to pass).

Importing a component's module may import torch; nothing is instantiated.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunekit.config._instantiate import target_key
from tunekit.config.devices import check_device
from tunekit.config.errors import ConfigError, close_matches, did_you_mean, paragraph
from tunekit.config.required import required_value_problems
from tunekit.config.schemas import SCHEMAS, schema_problems
from tunekit.config.secrets import secret_problems
from tunekit.config.torchtune import torchtune_key_hint

__all__ = [
    "check_config",
    "component_problems",
    "config_problems",
    "build_error_text",
    "cli_value",
    "explain_instantiation_error",
    "find_culprits",
    "locate",
    "resolution_problems",
]

_HYDRA_KEYS = ("_target_", "_component_", "_args_", "_partial_", "_recursive_", "_convert_")


def _candidates(obj: Any) -> list[str]:
    names = [n for n in dir(obj) if not n.startswith("_")]
    if hasattr(obj, "__path__"):  # a package: its not-yet-imported submodules count too
        names += [m.name for m in pkgutil.iter_modules(obj.__path__)]
    return names


def locate(path: str) -> Any:
    """Import the object at dotted ``path``.

    Raises:
        ConfigError: the module or attribute does not exist (with close matches), or the
            module exists but failed to import (with the underlying error).
    """
    parts = path.split(".")
    if not path or not all(parts):
        raise ConfigError(f"{path!r} is not a dotted path like `package.module.Name`")
    obj: Any = None
    depth = 0
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not a module: the remaining parts are attributes
                break
            raise ConfigError(f"importing `{name}` failed: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"importing `{name}` failed: {type(exc).__name__}: {exc}") from exc
        depth = i
    if depth == 0:
        top = sorted(m.name for m in pkgutil.iter_modules())
        raise ConfigError(f"no module named `{parts[0]}`.{did_you_mean(parts[0], top)}")
    for i in range(depth, len(parts)):
        attr = parts[i]
        if not hasattr(obj, attr):
            owner = ".".join(parts[:i])
            kind = "module" if inspect.ismodule(obj) else "object"
            raise ConfigError(
                f"{kind} `{owner}` has no attribute `{attr}`."
                f"{did_you_mean(attr, _candidates(obj))}"
            )
        obj = getattr(obj, attr)
    return obj


def _render_signature(name: str, sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={p.default!r}")
    return f"{name}({', '.join(parts)})"


def signature_problem(
    target: Any, dotted: str, n_args: int, keys: Sequence[str], partial: bool
) -> str | None:
    """Describe why ``target(*n_args placeholders, **keys)`` cannot bind, or return None."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return None
    params = sig.parameters
    kinds = {p.kind for p in params.values()}
    accepted = [
        n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    issues = []
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        for key in keys:
            if key not in accepted:
                hits = close_matches(key, accepted)
                hint = f" (did you mean: {', '.join(hits)}?)" if hits else ""
                issues.append(f"unexpected key `{key}`{hint}")
    positional = [
        n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if inspect.Parameter.VAR_POSITIONAL not in kinds and n_args > len(positional):
        issues.append(f"{n_args} positional arguments given, at most {len(positional)} accepted")
    if not partial:
        filled = set(positional[:n_args]) | set(keys)
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in filled
        ]
        if missing:
            issues.append(f"missing required argument(s): {', '.join(missing)}")
    if not issues:
        return None
    return f"{'; '.join(issues)}. Signature: {_render_signature(dotted, sig)}"


def component_problems(
    node: DictConfig, extra_args: int = 0, extra_keys: Sequence[str] = ()
) -> list[str]:
    """Check one component node against its callable's signature (not its children)."""
    path = node._get_full_key(None) or "<root>"
    try:
        key = target_key(node)
    except ConfigError as exc:
        return [str(exc)]
    if key is None:
        return []
    dotted = node._get_node(key)._value()
    if not isinstance(dotted, str):
        return [f"`{path}.{key}`={dotted!r}: expected a dotted path string"]
    try:
        target = locate(dotted)
    except ConfigError as exc:
        return [f"`{path}.{key}`={dotted!r}: {exc}"]
    if not callable(target):
        return [f"`{path}.{key}`={dotted!r}: names a {type(target).__name__}, not a callable"]
    n_args = extra_args
    if "_args_" in node and isinstance(node._get_node("_args_"), ListConfig):
        n_args += len(node._get_node("_args_"))
    keys = [k for k in node.keys() if k not in _HYDRA_KEYS] + list(extra_keys)
    partial = bool(node._get_node("_partial_")._value()) if "_partial_" in node else False
    problem = signature_problem(target, dotted, n_args, keys, partial)
    if problem is None:
        return []
    def given(k: str) -> str | None:
        value = node._get_node(k)._value() if k in node else None
        return None if value is None or isinstance(value, (DictConfig, ListConfig)) else str(value).lower()

    hints = [h for h in (torchtune_key_hint(f"{path}.{k}", given(k)) for k in keys) if h]  # model.lora_rank
    return [f"`{path}`: {problem}" + "".join(f" {h}" for h in hints)]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing()):
        for key in node.keys():
            yield from _walk(node._get_node(key))
    elif isinstance(node, ListConfig) and not (node._is_none() or node._is_missing()):
        for i in range(len(node)):
            yield from _walk(node._get_node(i))


def resolution_problems(cfg: DictConfig) -> list[str]:
    """Every ``???`` left and every interpolation that does not resolve, with key paths."""
    problems = []
    for child in _walk(cfg):
        if child is cfg:
            continue
        path = child._get_full_key(None)
        if child._is_missing():
            problems.append(f"`{path}` has no value (???): set it, e.g. `{path}=...`")
        elif child._is_interpolation():
            try:
                child._dereference_node()
            except Exception as exc:
                msg = str(exc).splitlines()[0]
                problems.append(f"`{path}`={child._value()!r} does not resolve: {msg}")
    return problems


def config_problems(cfg: DictConfig, recipe: str, hydra_cfg: DictConfig | None = None) -> list[str]:
    """All problems of a composed recipe config, without building anything.

    Required values (``???``) left unset or hidden by a default, broken interpolations, the
    schema's ranges and choices, the device, credentials written into the config, and the
    signature of every component.

    Args:
        cfg: the composed config.
        recipe: the recipe name (selects the schema).
        hydra_cfg: Hydra's node of the composition (``HydraConfig.get()``); with it, a ``???``
            written in the user's YAML but filled by a schema/group default is reported too.
    """
    problems = resolution_problems(cfg)
    if hydra_cfg is not None:
        problems += required_value_problems(cfg, hydra_cfg)
    schema = SCHEMAS.get(recipe)
    if schema is not None:
        problems += schema_problems(cfg, schema)
    if "device" in cfg and not cfg._get_node("device")._is_missing():
        try:
            device_problem = check_device(cfg.device)
        except Exception:  # unresolvable: reported above
            device_problem = None
        if device_problem and not any(p.startswith("`device`") for p in problems):
            problems.append(device_problem)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # unresolvable: reported above
        container = OmegaConf.to_container(cfg, resolve=False)
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    problems += secret_problems(container, overrides)
    for node in _walk(cfg):
        if isinstance(node, DictConfig) and not (node._is_none() or node._is_missing()):
            problems += component_problems(node)
    return problems


def check_config(cfg: DictConfig, recipe: str, hydra_cfg: DictConfig | None = None) -> None:
    """Raise one ``ConfigError`` listing every problem of ``cfg`` (see ``config_problems``)."""
    problems = config_problems(cfg, recipe, hydra_cfg)
    if problems:
        raise ConfigError(format_problems(problems, f"Invalid `{recipe}` config"))


def format_problems(problems: Sequence[str], title: str) -> str:
    """One paragraph: a title line, then one line per problem."""
    n = len(problems)
    lines = [f"{title} ({n} problem{'s' if n != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


_FULL_KEY_RE = re.compile(r"full_key: (\S+)")


def explain_instantiation_error(
    exc: Exception, config: Any, args: Sequence[Any], kwargs: dict[str, Any]
) -> str:
    """Turn Hydra's InstantiationException into one paragraph naming key path and fix.

    Signature mismatches are re-derived with ``inspect`` so the message lists every offending
    key, the close matches and the signature, instead of the first TypeError.
    """
    text = str(exc)
    m = _FULL_KEY_RE.search(text)
    full_key = m.group(1) if m else ""
    node_key = full_key[: -len("._target_")] if full_key.endswith("._target_") else full_key
    if full_key == "_target_":
        node_key = ""
    root = config._get_root() if OmegaConf.is_config(config) else OmegaConf.create(config)
    node = OmegaConf.select(root, node_key) if node_key else root
    if not isinstance(node, DictConfig):
        node = root
    is_top = node is config or (OmegaConf.is_config(config) and node_key == config._get_full_key(None))
    key = (target_key(node) or "_target_") if isinstance(node, DictConfig) else "_target_"
    path = node._get_full_key(None) if isinstance(node, DictConfig) else node_key
    where = f"`{path}.{key}`" if path else f"`{key}`"
    dotted = node._get_node(key)._value() if isinstance(node, DictConfig) and key in node else "?"
    if text.startswith("Error locating target"):
        try:
            locate(str(dotted))
            reason = paragraph(str(exc.__cause__ or text)).replace("\n", " ")
        except ConfigError as err:
            reason = str(err)
        return f"{where}={dotted!r} cannot be imported: {reason}"
    if text.startswith("Error in call to target") and isinstance(node, DictConfig):
        problems = component_problems(
            node,
            extra_args=len(args) if is_top else 0,
            extra_keys=list(kwargs) if is_top else (),
        )
        if problems:
            return f"Cannot build {dotted!r}: " + " ".join(problems)
        cause = exc.__cause__
        if cause is not None and (type(cause) in VALUE_ERRORS
                                  or isinstance(cause, OmegaConfBaseException)):
            return _explain_node_value_error(cause, node, str(dotted), path or "<root>",
                                             args if is_top else (), kwargs if is_top else {})
        # A failure inside the component itself is not a config mistake: keep it visible.
        if cause is not None and not isinstance(cause, TypeError):
            if hasattr(cause, "add_note"):
                cause.add_note(f"(while building `{path or '<root>'}`: {dotted})")
            raise cause
    body = paragraph(_FULL_KEY_RE.sub("", text)).replace("\n", " ")
    body = body.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "")
    return f"`{path or '<root>'}`: {body}"


#: Exceptions (exactly these built-in types, not subclasses) that a callable raises when it
#: refuses an argument value: torch's ``ValueError("Invalid learning rate: -1")``, the
#: ``IndexError`` of ``betas=[0.9]``. Subclasses (``DataFormatError``, ...) carry their own
#: complete message and keep their type.
VALUE_ERRORS = (ValueError, TypeError, IndexError, KeyError)

# How libraries spell a parameter in their messages when it is not its own name.
_SPELLINGS = {"lr": ("learning rate", "learning_rate"), "eps": ("epsilon",),
              "betas": ("beta",), "num_warmup_steps": ("warmup",)}


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value


def cli_value(value: Any) -> str:
    """``value`` written as a command-line override value (``[0.9,0.999]``, ``null``, ``true``)."""
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(cli_value(v) for v in value) + "]"
    return str(value)


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text, re.I) is not None


def find_culprits(
    exc: BaseException, values: dict[str, Any], defaults: dict[str, Any], probe: Any = None
) -> list[str]:
    """The config keys whose values made a callable raise ``exc``.

    In order: keys named in the message (or in a usual spelling: ``learning rate`` for ``lr``),
    the one key whose value the message quotes, and, with ``probe(**{key: default})``, the
    keys whose reset to the callable's default makes the call succeed.
    """
    msg = str(exc)
    named = [k for k in values if _mentions(msg, k) or _mentions(msg, k.replace("_", " "))]
    if named:
        return named
    named = [k for k in values if any(_mentions(msg, w) for w in _SPELLINGS.get(k, ()))]
    if named:
        return named
    quoted = [k for k, v in values.items()
              if isinstance(_plain(v), (int, float, str)) and not isinstance(v, bool)
              and len(str(v)) > 0 and _mentions(msg, str(v))]
    if len(quoted) == 1:
        return quoted
    if probe is None:
        return []
    found = []
    for key, value in list(values.items())[:16]:
        if key not in defaults or _plain(defaults[key]) == _plain(value):
            continue
        try:
            probe(**{key: defaults[key]})
        except Exception:
            continue
        found.append(key)
    return found


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if isinstance(exc, OmegaConfBaseException) else str(exc)
    name = "IndexError" if isinstance(exc, IndexError) else type(exc).__name__
    return " ".join(f"{name}: {text}".split())


def build_error_text(
    exc: BaseException, *, path: str, dotted: str, target: Any, values: dict[str, Any],
    probe: Any = None,
) -> str:
    """One paragraph for the values a component refused: key paths, values, reasons and fixes.

    With ``probe``, the keys found are reset to their defaults and the call retried, so a
    second bad value of the same node is reported in the same paragraph.
    """
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    defaults = {} if sig is None else {
        n: p.default for n, p in sig.parameters.items() if p.default is not p.empty
    }
    where = path if path and path != "<root>" else ""
    parts: list[str] = []

    def part(keys: list[str], err: BaseException) -> None:
        shown, fixes = [], []
        for key in keys:
            full = f"{where}.{key}" if where else key
            shown.append(f"`{full}`={_plain(values[key])!r}")
            fix = f"set `{full}` to a valid value"
            if key in defaults:
                fix += f" (the default is `{full}={cli_value(defaults[key])}`)"
            fixes.append(fix)
        parts.append(f"{' and '.join(shown)}: refused by {dotted} ({_reason(err)})."
                     f" Fix: {'; '.join(fixes)}.")

    named = find_culprits(exc, values, defaults, None)
    if named:
        part(named, exc)
    if probe is not None:
        # Every other value alone (the rest at their defaults): reports all bad values at once.
        resettable = [k for k in values if k in defaults and _plain(defaults[k]) != _plain(values[k])]
        base = {k: defaults[k] for k in resettable}
        try:
            probe(**base)
            baseline_ok = True
        except Exception:
            baseline_ok = False
        if baseline_ok:
            for key in resettable[:16]:
                if key in named:
                    continue
                try:
                    probe(**{k: v for k, v in base.items() if k != key})
                except Exception as err:
                    if type(err) in VALUE_ERRORS or isinstance(err, OmegaConfBaseException):
                        part([key], err)
    if parts:
        return " ".join(parts)
    shown = ", ".join(f"{k}={_plain(v)!r}" for k, v in values.items())
    sig_text = f" Signature: {_render_signature(dotted, sig)}." if sig is not None else ""
    return (f"Building `{where or '<root>'}` ({dotted}) failed: {_reason(exc)}. Check the values"
            f" under `{where or '<root>'}` ({shown or 'none'}).{sig_text}")


def _explain_node_value_error(exc: BaseException, node: DictConfig, dotted: str, path: str,
                              args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    values = {str(k): node._get_node(k)._value() if not OmegaConf.is_config(node._get_node(k))
              else node._get_node(k) for k in node.keys() if k not in _HYDRA_KEYS}
    try:
        values = {k: _plain(OmegaConf.select(node, k)) for k in values}
    except Exception:
        pass
    try:
        target = locate(dotted)
    except ConfigError:
        target = None
    nested = any(isinstance(v, dict) and (COMPONENT_KEYS & set(v)) for v in values.values())
    probe = None
    if target is not None and not nested:
        def probe(**reset: Any) -> Any:
            return target(*args, **{**values, **kwargs, **reset})
    return build_error_text(exc, path=path, dotted=dotted, target=target, values=values, probe=probe)


COMPONENT_KEYS = {"_component_", "_target_"}
