"""Config errors and their one-paragraph explanations.

Every config mistake a user can make (an unknown group option, a misspelt key, a value of the
wrong type, a bad ``_component_``) ends up as a :class:`ConfigError` whose message is a single
paragraph naming the key path, the offending value and what would be valid. ``explain``
turns the exceptions that Hydra and OmegaConf raise into such a paragraph.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from tunekit.config.torchtune import torchtune_key_hint, torchtune_option_hint

__all__ = [
    "ConfigError",
    "close_matches",
    "did_you_mean",
    "explain",
    "explain_with_override",
    "paragraph",
    "path_error_message",
    "yaml_error_text",
]


class ConfigError(ValueError):
    """A config mistake; ``str(err)`` is a complete, user-facing paragraph."""


def paragraph(text: str) -> str:
    """Join the non-empty lines of ``text`` into one paragraph (no blank lines)."""
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like a misspelling of ``word``."""
    pool = sorted({str(c) for c in candidates})
    hits = difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
    if not hits:  # also catch case slips and prefixes, e.g. "lr" vs "lr_scheduler"
        hits = [c for c in pool if c.lower().startswith(word.lower())][:n]
    return hits


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean: a, b?' or '' when nothing is close."""
    hits = close_matches(word, candidates)
    return f" Did you mean: {', '.join(hits)}?" if hits else ""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _first(exc: BaseException, kind: type | tuple[type, ...]) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _type_name(t: Any) -> str:
    if t is None or t is Any:
        return "any"
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _node_keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        try:
            return [str(k) for k in node.keys()]
        except OmegaConfBaseException:
            return []
    return []


def _explain_omegaconf(err: OmegaConfBaseException, override: str | None) -> str:
    """Explain an OmegaConf error; ``override`` is the command-line item that caused it."""
    full_key = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
    msg = getattr(err, "msg", None) or str(err)
    msg = msg.splitlines()[0] if msg else type(err).__name__
    where = f"`{override}`" if override else f"`{full_key}`"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and not isinstance(
        err, MissingMandatoryValue
    ):
        key = str(getattr(err, "key", None) or full_key.rsplit(".", 1)[-1])
        parent = getattr(err, "parent_node", None)
        valid = [k for k in _node_keys(parent) if k != "hydra"]
        parent_key = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        scope = f"under `{parent_key}`" if parent_key else "at the top level"
        given = override.split("=", 1)[1] if override and "=" in override else None
        torchtune = torchtune_key_hint(full_key or key, given)
        hint = f" {torchtune}" if torchtune else did_you_mean(key, valid)
        text = f"{where}: unknown key `{full_key or key}` ({scope}).{hint}"
        if valid:
            text += f" Valid keys {scope}: {', '.join(valid)}."
        if override:
            text += f" To add a genuinely new key, write `+{override.lstrip('+~')}`."
        return text
    if isinstance(err, ValidationError):
        child = getattr(err, "child_node", None)
        meta = getattr(child, "_metadata", None)
        expected = _type_name(getattr(meta, "ref_type", None) if meta else err.ref_type)
        value = getattr(err, "value", None)
        return (
            f"{where}: `{full_key}` expects a value of type {expected}, got {value!r}"
            f" ({type(value).__name__})."
        )
    if isinstance(err, MissingMandatoryValue):
        return f"`{full_key}` has no value (???): set it, e.g. `{full_key}=...`."
    if isinstance(err, InterpolationResolutionError):
        return f"`{full_key}`: cannot resolve the interpolation: {msg}"
    return f"{where}: {msg}"


_OVERRIDE_RE = re.compile(
    r"(?:Could not (?:override|append to config|delete from config)[^']*'([^']*)'"
    r"|Error merging override ([^\n]+?)\s*$)", re.M
)
_APPEND_RE = re.compile(r"use (\+[^\n]+?)\s*$", re.M)


def _explain_missing_config(err: MissingConfigException, override: str | None) -> str:
    missing = err.missing_cfg_file or ""
    options = list(err.options or [])
    group, _, option = missing.rpartition("/")
    torchtune = torchtune_option_hint(group, option) if group else None
    if torchtune:
        return (f"`{override or f'{group}={option}'}`: {torchtune} Valid options for `{group}`:"
                f" {', '.join(sorted(options))}." if options else torchtune)
    if group and options:
        text = (
            f"`{override or f'{group}={option}'}`: config group `{group}` has no option"
            f" `{option}`.{did_you_mean(option, options)} Valid options for `{group}`:"
            f" {', '.join(sorted(options))}."
        )
        return text
    if group:
        return (
            f"`{override or missing}`: `{group}` is not a config group here and"
            f" `{missing}.yaml` does not exist; run `tunekit ls` to see the groups."
        )
    return paragraph(
        f"Cannot find the primary config `{missing}`."
        + (f" Available: {', '.join(sorted(options))}." if options else "")
    )


def yaml_error_text(err: BaseException) -> str:
    """One paragraph for a YAML syntax error: the file, line, column, what is wrong and the fix."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    where = "a YAML config"
    if mark is not None:
        where = f"`{mark.name}`, line {mark.line + 1}, column {mark.column + 1}"
    what = f"{context}, {problem}" if context else problem
    if "duplicate key" in what:
        fix = "A key may appear only once in a mapping: merge the two blocks into one."
    elif "'\\t'" in problem or "\t" in problem:
        fix = "YAML does not allow tab characters for indentation: indent with spaces."
    else:
        fix = "Fix the YAML syntax there (indentation, a missing `:`, an unclosed bracket or quote)."
    return f"Cannot read the config file {where}: {what}. {fix}"


def _yaml_error(exc: BaseException) -> BaseException | None:
    try:
        import yaml
    except ImportError:  # pragma: no cover - hydra depends on PyYAML
        return None
    return _first(exc, yaml.YAMLError)


def _explain_parse_error(exc: OverrideParseException) -> str:
    """A command-line override Hydra's grammar cannot read: name it and show how to quote it."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    item = first.split(": ", 1)[1].strip() if ": " in first else ""
    key, eq, value = item.partition("=")
    if not eq or " " in key:
        return (
            f"Cannot parse a command-line override: {first.strip()}. A value holding brackets, commas,"
            " quotes, spaces or non-ASCII letters needs quotes inside the shell quotes (\"key='value'\"),"
            " a list is written key=[a,b] (see https://hydra.cc/docs/advanced/override_grammar/basic/)."
        )
    odd = sorted({c for c in value if not c.isascii() or c in " \t,=[]{}()'\"\\:$*?<>|"})
    shown = ", ".join(repr(c) for c in odd) if odd else "its characters"
    return (
        f"Cannot parse the command-line override `{item}`: Hydra's override grammar does not allow {shown} in"
        f" an unquoted value. Quote the value inside the shell quotes: \"{key}='{value}'\" (see"
        " https://hydra.cc/docs/advanced/override_grammar/basic/)."
    )


def explain_with_override(exc: BaseException) -> tuple[str | None, str | None]:
    """Like :func:`explain`, also returning the command-line override that caused ``exc``.

    Returns:
        ``(paragraph or None, "key=value" / "group=option" override or None)``.
    """
    own = _first(exc, ConfigError)
    if own is not None:
        return str(own), None
    yaml_err = _yaml_error(exc)
    if yaml_err is not None:
        return yaml_error_text(yaml_err), None
    override = None
    for e in _chain(exc):
        m = _OVERRIDE_RE.search(str(e))
        if m:
            override = m.group(1) or m.group(2)
            append = _APPEND_RE.search(str(e))
            if append and "=" in append.group(1):  # Hydra's hint holds the full key=value
                override = append.group(1).lstrip("+")
            break
    missing = _first(exc, MissingConfigException)
    if missing is not None:
        group, _, option = (missing.missing_cfg_file or "").rpartition("/")
        culprit = override or (f"{group}={option}" if group else None)
        return _explain_missing_config(missing, override), culprit
    oc = _first(exc, OmegaConfBaseException)
    if oc is not None and isinstance(exc, (ConfigCompositionException, OmegaConfBaseException)):
        return _explain_omegaconf(oc, override), override
    if isinstance(exc, OverrideParseException):
        return _explain_parse_error(exc), None
    if isinstance(exc, ConfigCompositionException):
        return paragraph(str(exc).replace("\n", " ")), override
    return None, None


_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


#: A path that cannot be used as given: its shape is wrong, not the disk.
_PATH_ERRORS = {
    errno.EEXIST: "a file of that name is in the way of a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory where a file is needed",
    errno.ELOOP: "it is a symbolic link loop",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


def path_error_message(exc: BaseException) -> str | None:
    """One paragraph for a path that is the wrong kind of thing (a file where a directory goes, ...)."""
    e = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno in _PATH_ERRORS), None)
    if e is None:
        return None
    where = f"`{e.filename}`" if e.filename else "a path given in the config"
    return (
        f"Cannot use {where}: {_PATH_ERRORS[e.errno]} ({e.strerror}). Nothing was written there. Give a "
        "path whose directories are directories (for a run: hydra.run.dir=<a new directory> or "
        "output_dir=<a new directory>; for a copy or a conversion: a new destination), or move the file "
        "that is in the way."
    )


def disk_error_message(exc: BaseException) -> str | None:
    """One paragraph for a write that failed for want of space or permission; None for other errors.

    Looks through the exception's chain (Hydra wraps the log file's ``OSError`` in a
    ``ValueError``); writers in Rust (safetensors) report ``(os error N)`` in their text. A path
    of the wrong kind (a file in the way of a directory) gets :func:`path_error_message`.
    """
    shape = path_error_message(exc)
    if shape is not None:
        return shape
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
            code, where, detail = e.errno, e.filename, e.strerror
            break
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found is not None and int(found.group(1)) in _DISK_ERRORS:
            code, where, detail = int(found.group(1)), None, os.strerror(int(found.group(1)))
            break
    else:
        return None
    where = where or "the run's output directory"
    return (
        f"Cannot write {where}: {_DISK_ERRORS[code]} ({detail}). Checkpoints are written under a temporary "
        "name and renamed into place, so every checkpoint saved before is intact and resume=auto continues "
        "from the newest one. Free space (or fix the permissions) and resume, or write the run elsewhere "
        "with hydra.run.dir=<a writable directory>."
    )


def explain(exc: BaseException) -> str | None:
    """Turn a config-related exception into one readable paragraph.

    Args:
        exc: an exception raised while composing, validating or instantiating a config.

    Returns:
        The paragraph, or ``None`` when ``exc`` is not a config mistake (a real bug should
        keep its traceback).
    """
    return explain_with_override(exc)[0] or disk_error_message(exc)
