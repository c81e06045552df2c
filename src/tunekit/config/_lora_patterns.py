"""Which modules a ``lora.rank_pattern`` / ``lora.alpha_pattern`` key can reach (torch-free).

A key is matched as PEFT does (``tunekit.modules.peft.LoRASpec``): a regex that matches a module
path or any dotted suffix of it, e.g. ``q_proj`` (every layer's) or ``layers.3.attn.q_proj``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: more layers than any supported published model has (Llama 3.1 405B: 126)
_LAYERS = 160


def _paths(target: str) -> list[str]:
    if target == "output":
        return ["output"]
    block = "mlp" if target in ("w1", "w2", "w3") else "attn"
    return [f"layers.{i}.{block}.{target}" for i in range(_LAYERS)]


def pattern_matches(pattern: str, targets: Iterable[str]) -> bool:
    """Whether ``pattern`` matches the path of at least one module ``targets`` adapts."""
    try:
        rx = re.compile(rf"(.*\.)?(?:{pattern})")
    except re.error:
        return False
    return any(rx.fullmatch(p) for t in targets for p in _paths(str(t)))
