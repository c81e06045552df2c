"""``tunekit validate``'s second half: build the cheap components for real.

Signatures say whether a config *binds*; only building says whether its values are accepted
(torch refuses ``lr=-1`` and ``betas=[0.9]`` when the optimizer is made, a schedule refuses a
negative warmup, a data set an unknown template or a missing file). Everything here is cheap and
writes nothing: the optimizer over one dummy parameter, the lr schedule over that optimizer with
the run's real number of steps, the loss, the tokenizer when its file is there, and the training
split of the data set (rows read and checked, nothing tokenized). Checkpointers and metric
loggers touch the disk and are left to the run; the model is left to the run too (its signature
is checked, and building even on the meta device costs seconds: ``torch.device("meta")`` as a
context imports torch._dynamo).
torch is imported here, never by ``import tunekit.config``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunekit.config._instantiate import instantiate, target_key
from tunekit.config.errors import ConfigError

__all__ = ["build_problems"]


class _NoTokenizer:
    """Stands in for the tokenizer when its file is not there yet (data sets store it only)."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"validate builds the data set without a tokenizer (asked for {name!r})")


def _is_component(cfg: DictConfig, key: str) -> bool:
    if key not in cfg:
        return False
    node = cfg._get_node(key)
    try:
        return isinstance(node, DictConfig) and not node._is_none() and target_key(node) is not None
    except ConfigError:
        return False


def _blocked(key: str, problems: list[str]) -> bool:
    """Whether a problem found so far concerns node ``key`` (building it would only repeat it).

    Problems about a command-line override (`` `key.x=1`: unknown key``) do not count: that
    override is not in the composed config.
    """
    for p in problems:
        m = re.match(r"`([^`]*)`", p)
        token = m.group(1) if m else ""
        if "=" not in token and (token == key or token.startswith(key + ".")):
            return True
    return False


def _attempt(cfg: DictConfig, key: str, fn: Callable[[], Any], problems: list[str]) -> Any:
    """Run one build; a refused value becomes a problem naming ``key``."""
    from tunekit.config.validate import VALUE_ERRORS

    try:
        return fn()
    except ConfigError as exc:
        problems.append(str(exc))
    except AttributeError as exc:
        if "without a tokenizer" not in str(exc):
            problems.append(f"`{key}`: building it failed: AttributeError: {exc}")
    except (OSError, ValueError, *VALUE_ERRORS) as exc:
        # The component's own message (a data file, a row); name the key that holds the value.
        from tunekit.config.validate import find_culprits

        text = " ".join(str(exc).split())
        node = OmegaConf.select(cfg, key)
        values = {}
        if isinstance(node, DictConfig):
            for k in node.keys():
                if not str(k).startswith("_"):
                    try:
                        values[str(k)] = OmegaConf.select(node, str(k))
                    except Exception:
                        pass
        culprits = find_culprits(exc, values, {})
        if culprits:
            shown = " and ".join(f"`{key}.{k}`={values[k]!r}" for k in culprits)
            problems.append(f"{shown}: {text}")
        else:
            problems.append(f"`{key}`: {text}")
    return None


def _total_steps(cfg: DictConfig, num_samples: int | None) -> tuple[int | None, str]:
    """Optimizer steps of the run as the training loop counts them (one rank, not packed)."""
    epochs, accum = int(cfg.epochs), int(cfg.gradient_accumulation_steps)
    max_steps = cfg.max_steps_per_epoch
    if num_samples is None or cfg.packed:
        if max_steps is None:
            return None, ""
        return epochs * int(max_steps), f"`max_steps_per_epoch`={max_steps} x `epochs`={epochs}"
    batches = math.ceil(num_samples / int(cfg.batch_size))
    per_epoch = batches // max(1, accum)
    if max_steps is not None:
        per_epoch = min(per_epoch, int(max_steps))
    how = (f"{num_samples} training samples, `batch_size`={cfg.batch_size},"
           f" `gradient_accumulation_steps`={accum}, `epochs`={epochs}"
           + (f", `max_steps_per_epoch`={max_steps}" if max_steps is not None else ""))
    return epochs * per_epoch, how


def build_problems(
    cfg: DictConfig, recipe: str, known: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Build the cheap components of ``cfg``; returns ``(problems, notes, what was built)``.

    Args:
        cfg: the composed config (already checked by ``config_problems``).
        recipe: the recipe name.
        known: the problems found so far; a node they mention is not built again.
    """
    import torch

    problems: list[str] = []
    notes: list[str] = []
    built: list[str] = []

    tokenizer: Any = _NoTokenizer()
    ckpt_dir = OmegaConf.select(cfg, "checkpointer.checkpoint_dir", default=None)
    if ckpt_dir is not None and Path(str(ckpt_dir)).is_file():
        problems.append(f"`checkpointer.checkpoint_dir`={str(ckpt_dir)!r} is a file, not a directory: give the"
                        f" directory that holds the model's weights and config, e.g."
                        f" checkpointer.checkpoint_dir={Path(str(ckpt_dir)).parent}")
    elif ckpt_dir is not None and not Path(str(ckpt_dir)).is_dir():
        repo = OmegaConf.select(cfg, "model_info.hf_repo", default=None)
        hint = f" (download it with `tunekit download {repo}`)" if repo else ""
        notes.append(f"`checkpointer.checkpoint_dir`={str(ckpt_dir)!r} does not exist yet{hint};"
                     " the tokenizer and the weights are checked when the run starts.")
    elif _is_component(cfg, "tokenizer") and not _blocked("tokenizer", known):
        tok = _attempt(cfg, "tokenizer", lambda: instantiate(cfg.tokenizer), problems)
        tokenizer = tok if tok is not None else tokenizer
        built.append("tokenizer")

    auto = str(OmegaConf.select(cfg, "model._component_", default="")).endswith(".model_from_checkpoint")
    if auto and "tokenizer" in built and not _blocked("model", known):
        # model=auto: the checkpoint's config.json / params.json is read (and what no family
        # implements refused) on the meta device: no weight is read, nothing is allocated
        with torch.device("meta"):
            _attempt(cfg, "model", lambda: instantiate(cfg.model), problems)
        built.append("model (meta device)")

    num_samples = None
    if _is_component(cfg, "dataset") and not _blocked("dataset", known):
        def build_dataset() -> Any:
            return instantiate(cfg.dataset)(tokenizer, split="train")
        ds = _attempt(cfg, "dataset", build_dataset, problems)
        built.append("data set")
        num_samples = len(ds) if ds is not None else None

    optimizer = None
    if _is_component(cfg, "optimizer") and not _blocked("optimizer", known):
        param = torch.nn.Parameter(torch.zeros(4))
        optimizer = _attempt(cfg, "optimizer", lambda: instantiate(cfg.optimizer)([param]), problems)
        built.append("optimizer")

    if optimizer is None and _is_component(cfg, "lr_scheduler"):
        # the schedule is still checked, over a stand-in optimizer
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)
    if _is_component(cfg, "lr_scheduler") and not _blocked("lr_scheduler", known):
        schema_ok = not any(p.startswith(("`epochs`", "`batch_size`", "`gradient_accumulation_steps`",
                                          "`max_steps_per_epoch`")) for p in known)
        total, how = _total_steps(cfg, num_samples) if schema_ok else (None, "")
        if total == 0:
            problems.append(
                f"the run would take no optimizer step ({how}): lower `batch_size` or"
                " `gradient_accumulation_steps`, or use a larger data set")
        else:
            sched = _attempt(cfg, "lr_scheduler", lambda: instantiate(cfg.lr_scheduler)(
                optimizer, num_training_steps=total if total is not None else 1000), problems)
            built.append("lr schedule")
            warmup = OmegaConf.select(cfg, "lr_scheduler.num_warmup_steps", default=None)
            if sched is not None and total is not None and isinstance(warmup, int) and warmup >= total:
                notes.append(
                    f"`lr_scheduler.num_warmup_steps`={warmup} is not below the run's {total}"
                    f" optimizer steps ({how}): the learning rate never reaches `optimizer.lr`;"
                    f" lower it (e.g. `lr_scheduler.num_warmup_steps={max(0, total // 10)}`).")

    if _is_component(cfg, "loss") and not _blocked("loss", known):
        _attempt(cfg, "loss", lambda: instantiate(cfg.loss), problems)
        built.append("loss")
    return problems, notes, built
