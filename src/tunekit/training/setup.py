"""Small builders the recipes share: model from a checkpoint, data loaders, resume, run records.

Every function takes flat arguments (objects, paths, numbers), never a whole config, so a
recipe reads as "instantiate the config nodes, hand them to these, call :func:`train`".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from tunekit.training.data_loading import build_dataloader

__all__ = [
    "RESULT_FILE",
    "RUN_INFO_FILE",
    "RESOLVED_CONFIG_FILE",
    "build_datasets",
    "build_loaders",
    "build_model",
    "check_adapter_compatible",
    "check_tokenizer_fits",
    "find_auto_resume_dir",
    "init_distributed",
    "load_model_weights",
    "package_versions",
    "resolve_resume_dir",
    "user_errors",
    "write_result",
    "write_run_info",
]

RUN_INFO_FILE = "run_info.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
RESULT_FILE = "result.json"
_PACKAGES = ("tunekit", "torch", "hydra-core", "omegaconf", "sentencepiece", "safetensors",
             "transformers", "peft", "numpy")


# ---------------------------------------------------------------------------- errors


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad-input errors (data file, checkpoint, tokenizer, NaN loss) into ``ConfigError``.

    ``recipe_main`` prints a ``ConfigError`` as one paragraph and exits with status 1; with
    ``HYDRA_FULL_ERROR=1`` the original exception stays chained for the traceback.
    """
    from tunekit.checkpointing import CheckpointError
    from tunekit.config import ConfigError
    from tunekit.data import DataFormatError
    from tunekit.training.distributed import MultirunInTorchrunError
    from tunekit.training.loop import NonFiniteLossError

    try:
        yield
    except ConfigError:
        raise
    except (DataFormatError, CheckpointError, NonFiniteLossError, MultirunInTorchrunError,
            FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc


# ---------------------------------------------------------------------------- distributed


def init_distributed(device: str) -> tuple[int, int]:
    """``(rank, world_size)``; starts a process group only when a launcher started several ranks.

    Also refuses a Hydra ``-m`` sweep inside a multi-rank launch (see ``tunekit.training.distributed``).
    """
    from tunekit.training import distributed

    distributed.check_not_multirun_in_torchrun()
    return distributed.init_distributed(device)


# ---------------------------------------------------------------------------- model


def _materialize_meta_(model: nn.Module, device: torch.device) -> list[str]:
    """Give every parameter still on the meta device real storage; returns their names.

    Only LoRA adapters are expected here (a plain checkpoint has no ``lora_a``/``lora_b``);
    they get PEFT's initialisation (A Kaiming, B zero) through ``reset_adapter``.
    """
    from tunekit.modules.peft import LoRALinear

    names = [n for n, p in model.named_parameters() if p.is_meta]
    for m in model.modules():
        if isinstance(m, LoRALinear) and (m.lora_a.weight.is_meta or m.lora_b.weight.is_meta):
            dtype = m.weight.dtype if m.weight.is_floating_point() else torch.float32
            m.lora_a.to_empty(device=device).to(dtype)
            m.lora_b.to_empty(device=device).to(dtype)
            m.reset_adapter()
    return names


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                       lora: bool, source: str) -> nn.Module:
    """Load a plain (base or merged) state dict into a meta-device model without a copy.

    ``load_state_dict(assign=True)`` makes the checkpoint's tensors the parameters, then the
    RoPE tables are rebuilt. With ``lora=True`` the adapter weights (absent from a plain
    checkpoint) are created fresh; any other missing or unexpected key is an error.

    Raises:
        CheckpointError: the checkpoint does not fit the model built from the config.
    """
    from tunekit.checkpointing import CheckpointError

    try:
        missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    except RuntimeError as err:  # size mismatches
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln][:4]
        raise CheckpointError(
            f"The weights in {source} do not fit the model chosen by the config: "
            + (" ".join(lines) or str(err).splitlines()[0])
            + " Pick the matching `model=` option (or the right checkpoint directory)."
        ) from None
    missing = [k for k in missing if not (lora and (".lora_a." in k or ".lora_b." in k))]
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {source} do not fit the model chosen by the config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Pick the matching `model=` option (or the right checkpoint directory)."
        )
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    _materialize_meta_(model, device)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(f"{source} left parameters unset: {still_meta[:5]}")
    model.init_buffers(device=device)
    return model


def build_model(make_model: Callable[..., nn.Module], state_dict: Mapping[str, torch.Tensor], *,
                lora: Any = None, source: str = "the checkpoint") -> nn.Module:
    """Build the model on the meta device (allocates nothing), then assign the weights.

    Args:
        make_model: the builder (``instantiate(cfg.model, _partial_=True)`` or a builder).
        state_dict: plain model weights, tunekit names (base or merged; never with adapters).
        lora: a ``LoRASpec`` (adapters created fresh and made the only trainable params) or None.
        source: where the weights came from, for error messages.
    """
    with torch.device("meta"):
        model = make_model(lora=lora) if lora is not None else make_model()
    load_model_weights(model, state_dict, lora=lora is not None, source=source)
    if lora is not None:
        from tunekit.modules.peft import set_trainable_params

        set_trainable_params(model)
    return model


def check_tokenizer_fits(tokenizer: Any, model: nn.Module) -> str | None:
    """Refuse a tokenizer whose ids exceed the model's vocabulary; note a smaller one.

    Returns:
        A warning to print when the tokenizer's vocabulary is smaller than the model's (fine:
        e.g. the bundled tokenizer with random-weight 32000-vocab models), else None.
    """
    from tunekit.config import ConfigError

    vocab = model.tok_embeddings.num_embeddings
    if tokenizer.vocab_size > vocab:
        raise ConfigError(
            f"The tokenizer ({getattr(tokenizer, 'path', tokenizer)}) has {tokenizer.vocab_size} "
            f"pieces but the model's embedding has {vocab} rows, so some token ids would be out "
            "of range. Use the tokenizer.model shipped with these weights (`tokenizer.path=...`)."
        )
    if tokenizer.vocab_size < vocab:
        return (f"note: the tokenizer has {tokenizer.vocab_size} pieces, the model {vocab}; "
                "ids above the tokenizer's are never produced (fine for random-weight tests).")
    return None


def check_adapter_compatible(model: nn.Module, adapter: Mapping[str, torch.Tensor], source: str) -> None:
    """The saved adapter has exactly the model's LoRA keys and shapes (same lora.* settings).

    Raises:
        CheckpointError: naming the first differences and the settings to restore.
    """
    from tunekit.checkpointing import CheckpointError

    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".lora_a." in k or ".lora_b." in k}
    saved = {k: tuple(v.shape) for k, v in adapter.items()}
    if own == saved:
        return
    only_saved = sorted(set(saved) - set(own))
    only_model = sorted(set(own) - set(saved))
    shapes = [f"{k}: saved {saved[k]}, now {own[k]}" for k in sorted(set(own) & set(saved)) if own[k] != saved[k]]
    raise CheckpointError(
        f"resume: the LoRA adapter in {source} does not match this run's `lora` settings "
        f"(only in the checkpoint: {only_saved[:3]}; only in this run: {only_model[:3]}; "
        f"different shapes: {shapes[:3]}). Resume with the lora.rank / lora.targets / "
        "lora.rank_pattern it was trained with, or start a new run."
    )


# ---------------------------------------------------------------------------- data


def build_datasets(make_dataset: Callable[..., Any], tokenizer: Any, *, validation: bool,
                   packed: bool, max_seq_len: int) -> tuple[Any, Any]:
    """The training split (packed if asked) and the validation split (never packed) or None."""
    from tunekit.data import PackedDataset

    train_ds = make_dataset(tokenizer, split="train")
    if packed:
        train_ds = PackedDataset(train_ds, max_seq_len, pad_id=tokenizer.pad_id)
    val_ds = make_dataset(tokenizer, split="validation") if validation else None
    return train_ds, val_ds


def build_loaders(train_ds: Any, val_ds: Any, *, batch_size: int, packed: bool, pad_id: int,
                  seed: int, rank: int = 0, world_size: int = 1) -> tuple[Any, Any]:
    """Loaders the loop resumes exactly (``StatefulSampler``); validation in file order."""
    from functools import partial

    from tunekit.data import packed_collate, padded_collate

    padded = partial(padded_collate, pad_id=pad_id)
    train_loader = build_dataloader(train_ds, batch_size, packed_collate if packed else padded,
                                    shuffle=True, seed=seed, rank=rank, world_size=world_size)
    val_loader = None
    if val_ds is not None:
        val_loader = build_dataloader(val_ds, batch_size, padded, shuffle=False, seed=seed,
                                      rank=rank, world_size=world_size)
    return train_loader, val_loader


# ---------------------------------------------------------------------------- resume


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def find_auto_resume_dir(output_dir: str | Path, recipe: str, *, search_siblings: bool) -> Path | None:
    """What ``resume=auto`` resumes from (None: nothing found, start fresh).

    1. The newest complete checkpoint in ``output_dir`` itself (a relaunch into the same run
       directory: fixed ``hydra.run.dir``, Slurm requeue, torchrun restart).
    2. Else, if ``search_siblings``: the newest complete checkpoint of the sibling run
       directories under ``output_dir``'s parent (``outputs/<recipe>/<time>/``) that were
       made by the same recipe (their ``run_info.json``). Not used in ``-m`` sweeps, where
       siblings are other jobs of the sweep.
    """
    from tunekit.checkpointing import list_checkpoints

    out = Path(output_dir)
    own = list_checkpoints(out) if out.is_dir() else []
    if own:
        return own[-1]
    if not search_siblings or not out.parent.is_dir():
        return None
    found: list[Path] = []
    for run in out.parent.iterdir():
        if run == out or not run.is_dir():
            continue
        if _read_json(run / RUN_INFO_FILE).get("recipe") != recipe:
            continue
        found += list_checkpoints(run)
    if not found:
        return None
    from tunekit.checkpointing._resume import _saved_at  # newest by completed-save time

    return max(found, key=_saved_at)


def resolve_resume_dir(resume: str | None, output_dir: str | Path, recipe: str, *,
                       search_siblings: bool = True) -> Path | None:
    """The checkpoint directory to resume from, or None for a fresh run.

    Args:
        resume: None, ``"auto"``, a run directory (its newest complete checkpoint) or an
            ``epoch_N`` / ``step_N`` directory.
        output_dir: this run's output directory.
        recipe: the recipe name (``auto`` only takes checkpoints of the same recipe).
        search_siblings: let ``auto`` look at sibling run directories (see
            :func:`find_auto_resume_dir`).

    Raises:
        CheckpointError: an explicit path holds no complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "auto":
        return find_auto_resume_dir(output_dir, recipe, search_siblings=search_siblings)
    from tunekit.checkpointing import find_resume_dir

    return find_resume_dir(resume)


# ---------------------------------------------------------------------------- run records


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_run_info(output_dir: str | Path, *, recipe: str, resolved_config_yaml: str,
                   overrides: Sequence[str], resumed_from: str | None) -> None:
    """Write ``config_resolved.yaml`` and ``run_info.json`` (overrides, versions, host, resume)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / RESOLVED_CONFIG_FILE, resolved_config_yaml)
    info = {
        "recipe": recipe,
        "overrides": list(overrides),
        "command": [Path(sys.executable).name, *sys.argv],
        "resumed_from": resumed_from,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "cuda": torch.version.cuda,
    }
    _atomic_write(out / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")


def write_result(output_dir: str | Path, result: Any, *, overrides: Sequence[str],
                 wall_seconds: float) -> dict[str, Any]:
    """Write ``result.json`` (final losses, steps, checkpoints) for sweeps and scripts."""
    fields = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    record = {
        "overrides": list(overrides),
        "final_train_loss": fields.get("final_train_loss"),
        "final_val_loss": fields.get("final_val_loss"),
        "first_train_loss": (fields.get("step_losses") or [None])[0],
        "start_step": fields.get("start_step"),
        "global_step": fields.get("global_step"),
        "interrupted": fields.get("interrupted"),
        "checkpoints": [list(c) for c in fields.get("checkpoints", [])],
        "wall_seconds": round(wall_seconds, 3),
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record
