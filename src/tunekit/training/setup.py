"""Small builders the recipes share: model from a checkpoint, data loaders, resume, run records.

Every function takes flat arguments (objects, paths, numbers), never a whole config, so a
recipe reads as "instantiate the config nodes, hand them to these, call :func:`train`".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
    "announce_run",
    "build_datasets",
    "build_loaders",
    "build_model",
    "build_training_model",
    "check_adapter_compatible",
    "check_resume_fits",
    "check_tokenizer_fits",
    "find_auto_resume_dir",
    "init_distributed",
    "load_model_weights",
    "load_resume",
    "package_versions",
    "pin_memory_for",
    "report_result",
    "resolve_resume_dir",
    "train_settings",
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


@contextlib.contextmanager
def process_group_teardown() -> Iterator[None]:
    """Destroy the process group a recipe started, when the recipe ends (no-op for one process).

    Without it the interpreter tears gloo/NCCL down during finalisation, where gloo's worker
    threads can abort the process ("terminate called without an active exception", SIGABRT)
    after a run that otherwise succeeded. On success the ranks meet at a barrier first, so no
    rank leaves while another still writes; after an error there is no barrier (the other
    ranks may never arrive).
    """
    from tunekit.training import distributed

    try:
        yield
    except BaseException:
        distributed.destroy_distributed()
        raise
    distributed.barrier()
    distributed.destroy_distributed()


# ---------------------------------------------------------------------------- model


def _materialize_meta_(model: nn.Module, device: torch.device) -> list[str]:
    """Give every parameter still on the meta device real storage; returns their names.

    Only LoRA adapters are expected here (a plain checkpoint has no ``lora_a``/``lora_b``);
    they get PEFT's initialisation (A Kaiming, B zero) through ``reset_adapter``.
    """
    from tunekit.modules.peft import LoRALinear

    names = [n for n, p in model.named_parameters() if p.is_meta]
    for m in model.modules():
        dora_meta = isinstance(m, LoRALinear) and m.use_dora and m.lora_magnitude.is_meta
        if isinstance(m, LoRALinear) and (m.lora_a.weight.is_meta or m.lora_b.weight.is_meta or dora_meta):
            dtype = m.weight.dtype if m.weight.is_floating_point() else torch.float32
            m.lora_a.to_empty(device=device).to(dtype)
            m.lora_b.to_empty(device=device).to(dtype)
            if dora_meta:  # DoRA: its magnitude is the row norm of the weight just loaded
                m.lora_magnitude = nn.Parameter(torch.empty(m.out_dim, device=device, dtype=dtype))
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
    missing = [k for k in missing if not (lora and _is_adapter_key(k))]
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


def check_model_settings(model: nn.Module, declared: Mapping[str, Any] | None, source: str) -> None:
    """Refuse a model whose non-shape settings differ from what its checkpoint declares.

    Shapes are checked when the weights are loaded; the RoPE base, the RMSNorm epsilon and RoPE
    scaling are not visible in the weights, and a mismatch would silently run them with
    settings they were not trained with (e.g. a CodeLlama checkpoint, rope_theta 1e6, under
    ``model=llama2_7b``, 1e4).

    Args:
        declared: a checkpointer's ``model_settings`` (``norm_eps``, ``rope_base``,
            ``rope_scaling``); None or empty checks nothing.

    Raises:
        CheckpointError: naming each mismatch and the override that fixes it.
    """
    if not declared:
        return
    import math

    from tunekit.checkpointing import CheckpointError
    from tunekit.modules import RMSNorm, RotaryPositionalEmbeddings

    problems = []
    if declared.get("rope_scaling"):
        problems.append(f"RoPE scaling {declared['rope_scaling']!r}, which tunekit's Llama 2 does not implement")
    rope = declared.get("rope_base")
    bases = sorted({float(m.base) for m in model.modules() if isinstance(m, RotaryPositionalEmbeddings)})
    if rope is not None and any(not math.isclose(b, rope, rel_tol=1e-9) for b in bases):
        problems.append(f"rope_theta={rope!r} where the model was built with rope_base="
                        f"{', '.join(repr(b) for b in bases)} (set model.rope_base={rope!r})")
    eps = declared.get("norm_eps")
    eps_model = sorted({float(m.eps) for m in model.modules() if isinstance(m, RMSNorm)})
    if eps is not None and any(not math.isclose(e, eps, rel_tol=1e-6) for e in eps_model):
        problems.append(f"norm_eps={eps!r} where the model was built with norm_eps="
                        f"{', '.join(repr(e) for e in eps_model)} (set model.norm_eps={eps!r})")
    if problems:
        raise CheckpointError(
            f"{source} declares {'; '.join(problems)}. The weights would run with settings they "
            f"were not trained with. Build a matching model: the shape builders (llama2_7b, ...) fix "
            f"Llama 2's values, so use model._component_=tunekit.models.llama2.llama2 with the "
            f"shape arguments and the settings above, or point the checkpointer at the weights "
            f"this model is for."
        )


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


def _cast_params_(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters (not buffers) to ``dtype``, as the single-device loop does."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def build_training_model(make_model: Callable[..., nn.Module],
                         load_weights: Callable[[], Mapping[str, torch.Tensor]] | None, *,
                         settings: Any, lora: Any = None, source: str = "the checkpoint",
                         world_size: int = 1, rank: int = 0,
                         declared: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a fine-tuning recipe trains, on one process or sharded over several.

    One process: as :func:`build_model` (meta build, the weights assigned without a copy); the
    loop then places it and applies activation checkpointing and compile.

    Several ranks (FSDP2): every rank builds on the meta device, casts the parameters to
    ``settings.dtype`` (pure-bf16 storage with ``dtype=bf16``, as on one device) and shards
    with ``shard_model`` (mixed precision per ``settings.dtype``, activation checkpointing
    per ``activation_checkpointing`` / ``ac_policy`` / ``ac_every_k_layers``, ``compile``:
    applied before ``fully_shard``, so the loop does not apply them again). Only rank 0 calls
    ``load_weights`` and builds the full model on its CPU (fresh LoRA adapters drawn exactly
    as one process draws them); ``load_full_state_dict`` broadcasts it and every rank keeps
    only its shards.

    Args:
        make_model: the builder (``instantiate(cfg.model, _partial_=True)``).
        load_weights: returns the plain (base, or resumed full-FT) weights, tunekit names;
            None when a sharded checkpoint supplies every weight (the parameters are then
            only allocated, and the loop loads them).
        settings: the run's ``TrainSettings`` (dtype, AC, compile).
        lora: a ``LoRASpec`` or None.
        source: where the weights come from, for error messages.
        world_size, rank: from :func:`init_distributed`.
        declared: the checkpoint's non-shape settings (``checkpointer.model_settings``),
            checked on every rank before any weight is read (:func:`check_model_settings`).
    """
    from tunekit.modules.peft import set_trainable_params

    with torch.device("meta"):
        model = make_model(lora=lora) if lora is not None else make_model()
    check_model_settings(model, declared, source)
    if world_size <= 1:  # the meta model gets the weights assigned, as build_model does
        if load_weights is not None:
            load_model_weights(model, load_weights(), lora=lora is not None, source=source)
        else:
            from tunekit.training.distributed import materialize_empty

            materialize_empty(model)
        if lora is not None:
            set_trainable_params(model)
        return model

    from tunekit.training import distributed
    from tunekit.training.precision import get_dtype

    _cast_params_(model, get_dtype(settings.dtype))
    distributed.shard_model(
        model, dtype=settings.dtype, activation_checkpointing=settings.activation_checkpointing,
        ac_every_k_layers=settings.ac_every_k_layers, ac_policy=settings.ac_policy,
        compile=settings.compile,
    )
    if load_weights is None:
        distributed.materialize_empty(model)
    else:
        full: Mapping[str, torch.Tensor] = {}
        error: BaseException | None = None
        if rank == 0:
            try:
                full = build_model(make_model, load_weights(), lora=lora, source=source).state_dict()
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not hang
                error = exc
        message = distributed.broadcast_object(None if error is None else str(error))
        if message is not None:
            if error is not None:
                raise error
            from tunekit.checkpointing import CheckpointError

            raise CheckpointError(f"(rank 0) {message}")
        distributed.load_full_state_dict(model, full, strict=True)
        del full
    if lora is not None:
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


def _shapes(items: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in items.items()}


def _is_adapter_key(key: str) -> bool:
    return ".lora_a." in key or ".lora_b." in key or key.endswith(".lora_magnitude")


def check_adapter_compatible(model: nn.Module, adapter: Mapping[str, Any], source: str) -> None:
    """The saved adapter has exactly the model's LoRA keys and shapes (same lora.* settings).

    Args:
        adapter: the saved adapter tensors, or ``{key: shape}`` (a sharded checkpoint's).

    Raises:
        CheckpointError: naming the first differences and the settings to restore.
    """
    from tunekit.checkpointing import CheckpointError

    # Parameters, not state_dict(): global shapes for a sharded model too, and no FSDP hooks.
    own = {k: tuple(v.shape) for k, v in model.named_parameters() if _is_adapter_key(k)}
    saved = _shapes(adapter)
    if own == saved:
        return
    only_saved = sorted(set(saved) - set(own))
    only_model = sorted(set(own) - set(saved))
    shapes = [f"{k}: saved {saved[k]}, now {own[k]}" for k in sorted(set(own) & set(saved)) if own[k] != saved[k]]
    raise CheckpointError(
        f"resume: the LoRA adapter in {source} does not match this run's `lora` settings "
        f"(only in the checkpoint: {only_saved[:3]}; only in this run: {only_model[:3]}; "
        f"different shapes: {shapes[:3]}). Resume with the lora.rank / lora.targets / "
        "lora.rank_pattern / lora.use_dora it was trained with, or start a new run."
    )


def check_resume_fits(model: nn.Module, resume_state: Mapping[str, Any], source: str, *,
                      lora: bool) -> None:
    """The checkpoint being resumed fits the model built from this run's config.

    LoRA: the adapter's keys and shapes (:func:`check_adapter_compatible`). A sharded
    checkpoint: every parameter's shape, from its metadata (no tensors read). Full-format
    full-FT weights were already checked when the model was built from them.

    Raises:
        CheckpointError: what differs and what to change.
    """
    from tunekit.checkpointing import CheckpointError

    saved = resume_state.get("sharded_shapes")
    if lora:
        adapter = resume_state.get("adapter")
        if saved is not None:
            adapter = {k: v for k, v in saved.items() if _is_adapter_key(k)}
        check_adapter_compatible(model, adapter or {}, source)
    if saved is None:
        return
    own = {k: tuple(v.shape) for k, v in model.named_parameters()}
    if own != dict(saved):
        diff = sorted(k for k in set(own) | set(saved) if own.get(k) != saved.get(k))
        raise CheckpointError(
            f"resume: the weights in {source} do not fit the model chosen by the config "
            f"(first differences: {[(k, saved.get(k), own.get(k)) for k in diff[:3]]} as "
            "(key, saved, now)). Resume with the `model=` option it was trained with."
        )


def load_resume(resume_dir: Path, *, lora: bool, model_type: str, rank: int = 0) -> dict[str, Any]:
    """The resume state of either checkpoint layout, refused when the other recipe saved it.

    Full checkpoints (``epoch_N/``, single-process ``step_N/``) and sharded step checkpoints
    (``step_N/dcp/``, written under FSDP) both work, on any number of ranks (see
    ``tunekit.training.distributed.load_resume_state``). Full fine-tuning: the saved weights
    come under ``model`` on rank 0 only (other ranks get their shards from it); a sharded
    checkpoint gives ``sharded_checkpoint`` (the loop loads model + optimizer) and
    ``sharded_shapes`` (for :func:`check_resume_fits`).

    Raises:
        CheckpointError: a LoRA checkpoint given to full fine-tuning or the reverse.
    """
    from tunekit.checkpointing import ADAPTER_FILE, CheckpointError
    from tunekit.training import distributed

    shapes = None
    if distributed.is_sharded_checkpoint(resume_dir):
        shapes = distributed.sharded_model_shapes(resume_dir)
        has_adapter = any(_is_adapter_key(k) for k in shapes)
        what = "LoRA adapter weights"
    else:
        has_adapter = (resume_dir / ADAPTER_FILE).is_file()
        what = ADAPTER_FILE
    if lora and not has_adapter:
        raise CheckpointError(
            f"resume: {resume_dir} holds no LoRA adapter ({what}); it was saved by "
            "full_finetune. Resume it with `python -m recipes.full_finetune resume=...`."
        )
    if not lora and has_adapter:
        raise CheckpointError(
            f"resume: {resume_dir} was saved by lora_finetune (it holds {what}); its "
            "model files are merged LoRA weights. Resume it with `python -m "
            "recipes.lora_finetune resume=...`, or fine-tune the merged model from scratch "
            f"with checkpointer.checkpoint_dir={resume_dir}."
        )
    state = distributed.load_resume_state(resume_dir, model_type, lora=lora, load_model=rank == 0)
    if shapes is not None:
        state["sharded_shapes"] = shapes
    return state


def train_settings(values: Mapping[str, Any]) -> Any:
    """``TrainSettings`` from the recipe config's training fields (same names as the schema's).

    Every ``TrainSettings`` field found in ``values`` is taken; the others keep their
    defaults. The fine-tuning schemas name their loop settings exactly as ``TrainSettings``
    does, so a setting added to both reaches the loop without touching the recipes.
    """
    from tunekit.training.loop import TrainSettings

    names = [f.name for f in dataclasses.fields(TrainSettings)]
    return TrainSettings(**{n: values[n] for n in names if n in values})


def pin_memory_for(device: str) -> bool:
    """Page-locked host batches when training on CUDA (the loop copies with non_blocking)."""
    from tunekit.training.device import get_device

    return get_device(device).type == "cuda"


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
                  seed: int, rank: int = 0, world_size: int = 1,
                  pin_memory: bool = False) -> tuple[Any, Any]:
    """Loaders the loop resumes exactly (``StatefulSampler``); validation in file order.

    ``pin_memory``: page-locked batches (CUDA runs: :func:`pin_memory_for`), so the loop's
    ``non_blocking`` host-to-device copies overlap with compute.
    """
    from functools import partial

    from tunekit.data import packed_collate, padded_collate

    padded = partial(padded_collate, pad_id=pad_id)
    train_loader = build_dataloader(train_ds, batch_size, packed_collate if packed else padded,
                                    shuffle=True, seed=seed, rank=rank, world_size=world_size,
                                    pin_memory=pin_memory)
    val_loader = None
    if val_ds is not None:
        val_loader = build_dataloader(val_ds, batch_size, padded, shuffle=False, seed=seed,
                                      rank=rank, world_size=world_size, pin_memory=pin_memory)
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


def announce_run(*, recipe: str, output_dir: str, resolved_config_yaml: str, config: Mapping[str, Any],
                 overrides: Sequence[str], metric_logger: Any, model_summary: str, num_train: int,
                 num_val: int, total_steps: int, resume_dir: Path | None, resume_auto: bool,
                 note: str | None) -> None:
    """Rank 0's start of a run: run records, the config to the metric logger, a summary line.

    Args:
        model_summary: the recipe's words on the model ("1.2M parameters, all trainable").
        resume_auto: ``resume=auto`` was asked (said when it found nothing).
        note: a warning for stderr (e.g. from :func:`check_tokenizer_fits`), or None.
    """
    write_run_info(output_dir, recipe=recipe, resolved_config_yaml=resolved_config_yaml,
                   overrides=overrides, resumed_from=None if resume_dir is None else str(resume_dir))
    metric_logger.log_config(dict(config))
    print(f"tunekit {recipe}: {model_summary}; {num_train} train / {num_val} validation samples; "
          f"{total_steps} optimizer steps; output: {output_dir}", flush=True)
    if resume_dir is not None:
        print(f"tunekit {recipe}: resuming from {resume_dir}", flush=True)
    elif resume_auto:
        print(f"tunekit {recipe}: resume=auto found no checkpoint; starting fresh", flush=True)
    if note:
        print(f"tunekit {recipe}: {note}", file=sys.stderr, flush=True)


def report_result(recipe: str, output_dir: str, result: Any, *, overrides: Sequence[str],
                  seconds: float, rank_zero: bool) -> float | None:
    """Rank 0 writes result.json and prints a one-line summary; returns what sweeps minimise.

    Returns:
        The final validation loss, else the final training loss (every rank).
    """
    if rank_zero:
        write_result(output_dir, result, overrides=overrides, wall_seconds=seconds)
        losses = result.step_losses
        span = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps run"
        val = "" if result.final_val_loss is None else f", val_loss {result.final_val_loss:.4f}"
        if result.interrupted:
            print(f"tunekit {recipe}: interrupted at step {result.global_step} ({span}); checkpoint "
                  f"saved; continue with resume={output_dir}", flush=True)
        else:
            print(f"tunekit {recipe}: done in {seconds:.1f}s, {result.global_step} steps, {span}{val}; "
                  f"checkpoints in {output_dir}", flush=True)
    return result.final_val_loss if result.final_val_loss is not None else result.final_train_loss


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
