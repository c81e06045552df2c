"""The loop's settings from a recipe config; their defaults come from the recipe schema only."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tunekit.config.schemas import FullFinetuneSchema
from tunekit.training import TrainSettings

__all__ = ["schedule_warnings", "train_settings"]


def _schema_defaults() -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(FullFinetuneSchema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def train_settings(values: Mapping[str, Any] | None = None, /, **overrides: Any) -> TrainSettings:
    """``TrainSettings`` from a config's training fields, the schema's defaults filling the rest.

    Args:
        values: the recipe config (or any mapping); its fields named as ``TrainSettings``'s are taken.
        overrides: individual settings (scripts, tests, benchmarks).

    The fine-tuning schemas name their loop settings exactly as ``TrainSettings`` does, so a
    setting added to both reaches the loop without touching the recipes.
    """
    names = [f.name for f in dataclasses.fields(TrainSettings)]
    defaults = _schema_defaults()
    merged = {n: defaults[n] for n in names if n in defaults}
    if values is not None:
        merged.update({n: values[n] for n in names if n in values})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"train_settings: unknown setting(s) {unknown}; valid: {', '.join(names)}")
    merged.update(overrides)
    missing = [n for n in names if n not in merged]
    if missing:
        raise TypeError(f"train_settings: the schema gives no default for {missing}")
    return TrainSettings(**merged)


def schedule_warnings(lr_scheduler: Any, total_steps: int) -> list[str]:
    """Warn when the learning-rate schedule never reaches the optimizer's rate within the run.

    Works on any ``LambdaLR``-style schedule (its factor per step): a warmup longer than the
    run (the default 100 warmup steps with ``max_steps_per_epoch=1``) keeps the rate near 0.
    """
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if not lambdas or total_steps < 1:
        return []
    peak = max(float(lambdas[0](s)) for s in range(total_steps))
    if peak >= 0.99:
        return []
    suggestion = max(0, total_steps // 10)
    return [f"the learning rate never reaches optimizer.lr in this run's {total_steps} optimizer step(s): "
            f"it peaks at {100 * peak:.1f}% of it because the warmup is longer than the run. Lower "
            f"lr_scheduler.num_warmup_steps (e.g. lr_scheduler.num_warmup_steps={suggestion}) or train longer."]
