"""Keeping access tokens out of configs, run records, logs and the terminal.

A Hugging Face token belongs in ``$HF_TOKEN`` or the ``huggingface-cli login`` cache, never in a
config: every saved config (``config_resolved.yaml``, ``run_info.json``, ``.hydra/``) would
carry it. :func:`secret_problems` refuses a token found in a composed config (without ever
printing it); :func:`redact` and :func:`redact_override` are the second line of defence for
what is written anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["REDACTED", "looks_secret", "redact", "redact_override", "secret_problems"]

REDACTED = "<redacted>"

# Hugging Face user/org access tokens and a few other common API token shapes.
_TOKEN_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|api_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})\b")
# Key names that hold credentials. `stop_token`, `pad_token`, `max_new_tokens` are settings.
_SECRET_KEY = re.compile(
    r"^((hf|hub|api|access|auth|bearer)_)?token$|secret|password|passwd|api_?key", re.I
)


def looks_secret(key: str | None, value: Any) -> bool:
    """Whether ``key: value`` holds a credential (by the key's name or the value's shape)."""
    if not isinstance(value, str) or not value:
        return False
    if _TOKEN_VALUE.search(value):
        return True
    name = str(key or "").rsplit(".", 1)[-1].lstrip("+~")
    return bool(_SECRET_KEY.search(name))


def redact(obj: Any, key: str | None = None) -> Any:
    """A copy of a plain container with every secret-looking value replaced by ``<redacted>``."""
    if isinstance(obj, dict):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, key) for v in obj]
    if looks_secret(key, obj):
        return REDACTED
    return obj


def redact_override(item: str) -> str:
    """``key=value`` with the value redacted when it looks like a credential."""
    key, eq, value = item.partition("=")
    if eq and looks_secret(key.lstrip("+~"), value):
        return f"{key}={REDACTED}"
    return _TOKEN_VALUE.sub(REDACTED, item)


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], obj


def secret_problems(container: Any, overrides: Sequence[str] = ()) -> list[str]:
    """One message per config key (or override) that holds a credential; values never shown."""
    keys = [k for k, v in _leaves(container) if looks_secret(k, v)]
    keys += [o.split("=", 1)[0] for o in overrides if "=" in o and redact_override(o) != o
             and o.split("=", 1)[0].lstrip("+~") not in keys]
    return [
        f"`{k}` holds what looks like an access token; tokens must not be written into configs"
        " (every saved config and run record would carry it). Remove it and give the token"
        " through the environment (`export HF_TOKEN=...`) or `huggingface-cli login`"
        for k in dict.fromkeys(keys)
    ]
