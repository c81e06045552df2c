"""Resume, in one place: find the checkpoint, check it belongs to this run, restore it.

Every way in goes through here:

- ``resume=DIR``: a run directory (its newest complete checkpoint) or an ``epoch_N`` / ``step_N``;
- ``resume=auto``: the newest complete checkpoint of this run directory, else of a sibling run
  of the same recipe *trained with the same settings* (another experiment is never adopted);
- the seeds' own way: ``checkpointer.resume_from_checkpoint=true`` with
  ``checkpointer.recipe_checkpoint`` (and ``adapter_checkpoint`` for LoRA), the checkpoint files
  pointing at the base model (LoRA) or at the saved model (full fine-tuning).

:func:`open_resume` reads the state and checks its fingerprint (what the run was trained with:
model, checkpoint, tokenizer, data content, batch size, sequence length, seed, LoRA settings)
against this run's, refusing every difference unless ``resume_accept`` names it.
:func:`restore` puts weights, optimizer, schedule and data position back and returns the
:class:`~tunekit.training.ResumePoint` the loop starts from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from tunekit.checkpointing import (
    ADAPTER_FILE,
    CheckpointError,
    find_resume_dir,
    is_sharded_checkpoint,
    list_checkpoints,
    load_resume_state,
    load_sharded_checkpoint,
    load_training_state,
    read_checkpoint_info,
    saved_at,
    sharded_dir,
    sharded_model_shapes,
    state_dir,
)
from tunekit.distributed import get_world_size, is_sharded, load_full_state_dict, load_optimizer_state_dict
from tunekit.modules.peft import is_adapter_key, quantized_base_names
from tunekit.run.errors import RunError
from tunekit.training import ResumePoint, StatefulSampler, TrainSettings

__all__ = [
    "FINGERPRINT_FIELDS",
    "Resume",
    "check_adapter_compatible",
    "check_resume_fits",
    "data_digest",
    "fingerprint",
    "fingerprint_differences",
    "load_checkpoint_dir",
    "model_weights",
    "open_resume",
    "restore",
]

RUN_INFO_FILE = "run_info.json"

#: what a checkpoint records it was trained with; each can be accepted as changed by name
FINGERPRINT_FIELDS = ("recipe", "model", "checkpoint", "tokenizer", "data", "batch_size", "max_seq_len",
                      "packed", "seed", "lora", "objective")
_FIX = {
    "model": "the `model=` option",
    "checkpoint": "checkpointer.checkpoint_dir",
    "tokenizer": "tokenizer.path",
    "data": "the dataset (dataset.source, template, split, train_on_input)",
    "batch_size": "batch_size x gradient_accumulation_steps x ranks, the global batch",
    "max_seq_len": "max_seq_len",
    "packed": "packed",
    "seed": "seed",
    "lora": "the lora.* settings",
    "objective": "the dpo.* settings",
}


# ---------------------------------------------------------------------------- fingerprint


def _file_digest(path: str | Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_digest(dataset: Any) -> str:
    """sha256 of every training sample's token ids and labels, in order (data content + template)."""
    if isinstance(getattr(dataset, "content_digest", None), str):  # a stream computed it while counting
        return dataset.content_digest
    h = hashlib.sha256()
    for i in range(len(dataset)):
        sample = dataset[i]
        for key in ("tokens", "labels"):
            h.update(torch.as_tensor(sample[key], dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def fingerprint(*, recipe: str, model: Mapping[str, Any], checkpoint_dir: str | Path, tokenizer_path: Any,
                train_dataset: Any, batch_size: int, max_seq_len: int, packed: bool, seed: int,
                lora: Mapping[str, Any] | None, gradient_accumulation_steps: int = 1,
                world_size: int = 1, objective: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run trains with, as plain JSON data (saved in every checkpoint; compared on resume).

    ``batch_size`` is recorded as the global batch (per-rank batch x accumulation x ranks): a
    run may continue on another number of GPUs with the per-rank batch adjusted to match.
    ``objective``: the settings of a training objective other than cross-entropy (the DPO
    recipes' ``dpo.*``); recorded only when given.
    """
    return {
        "recipe": recipe,
        "model": json.loads(json.dumps(dict(model), default=str)),
        "checkpoint": str(Path(checkpoint_dir).expanduser().resolve()),
        "tokenizer": _file_digest(tokenizer_path) or str(tokenizer_path),
        "data": {"samples": len(train_dataset), "sha256": data_digest(train_dataset)},
        "batch_size": int(batch_size) * int(gradient_accumulation_steps) * int(world_size),
        "max_seq_len": int(max_seq_len),
        "packed": bool(packed),
        "seed": int(seed),
        "lora": None if lora is None else json.loads(json.dumps(dict(lora), default=str)),
        **({} if objective is None else {"objective": json.loads(json.dumps(dict(objective), default=str))}),
    }


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def fingerprint_differences(saved: Mapping[str, Any], now: Mapping[str, Any],
                            accept: Sequence[str] = ()) -> list[str]:
    """One line per field that differs and is not accepted (empty: same run settings)."""
    out = []
    for name in FINGERPRINT_FIELDS:
        # The other kind of checkpoint (LoRA / full) gets its own message when its files are read;
        # the other recipe of the same kind (lora_dpo's adapter in lora_finetune) is named here.
        if name == "recipe" and saved.get("recipe") != now.get("recipe") and name not in accept and \
                isinstance(saved.get("recipe"), str) and (saved.get("lora") is None) == (now.get("lora") is None):
            out.append(f"recipe: {saved['recipe']} then, {now.get('recipe')} now (resume it with `python -m "
                       f"recipes.{saved['recipe']} resume=...`)")
        if name == "recipe" or name in accept or name not in saved or name not in now:
            continue
        if saved[name] != now[name]:
            where = _FIX.get(name, name)
            if name == "data" and isinstance(saved[name], dict) and isinstance(now[name], dict):
                detail = (f"{saved[name].get('samples')} samples (sha256 {str(saved[name].get('sha256'))[:12]}) "
                          f"then, {now[name].get('samples')} samples (sha256 {str(now[name].get('sha256'))[:12]}) now")
            elif isinstance(saved[name], dict) and isinstance(now[name], dict):  # only the keys that differ
                keys = sorted(k for k in {*saved[name], *now[name]} if saved[name].get(k, ()) != now[name].get(k, ()))
                detail = ", ".join(f"{k}={_short(saved[name].get(k))} then, {_short(now[name].get(k))} now"
                                   for k in keys)
            else:
                detail = f"{_short(saved[name])} then, {_short(now[name])} now"
            out.append(f"{name}: {detail} (set by {where})")
    return out


# ---------------------------------------------------------------------------- finding


@dataclass
class Resume:
    """The state a run resumes from.

    Attributes:
        source: the checkpoint directory (or the checkpointer's ``recipe_checkpoint`` file).
        how: the setting that asked for it, for messages (``resume=auto``, ...).
        state: ``optimizer``, ``lr_scheduler``, ``recipe_state`` (+ ``adapter`` for LoRA,
            ``sharded_checkpoint`` / ``sharded_shapes`` for a sharded step checkpoint).
        weights: the model weights read with the state (rank 0 only): full fine-tuning's saved
            model; LoRA through the checkpointer's way in, the base model. None otherwise.
    """

    source: Path
    how: str
    state: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def sharded(self) -> bool:
        return "sharded_checkpoint" in self.state

    def inside(self, run_dir: str | Path) -> bool:
        """Whether the checkpoint lies in ``run_dir`` (the run continues its own directory)."""
        return Path(self.source).expanduser().resolve().is_relative_to(Path(run_dir).expanduser().resolve())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _auto_dir(output_dir: Path, recipe: str, now: Mapping[str, Any], accept: Sequence[str], *,
              search_siblings: bool) -> tuple[Path | None, list[str]]:
    """What ``resume=auto`` continues, and notes on sibling runs it would not adopt."""
    own = list_checkpoints(output_dir) if output_dir.is_dir() else []
    if own:
        return own[-1], []
    if not search_siblings or not output_dir.parent.is_dir():
        return None, []
    candidates: list[Path] = []
    notes = []
    for run in sorted(output_dir.parent.iterdir()):
        if run == output_dir or not run.is_dir() or _read_json(run / RUN_INFO_FILE).get("recipe") != recipe:
            continue
        found = list_checkpoints(run)
        if not found:
            continue
        saved = read_checkpoint_info(found[-1]).get("trained_with")
        if not saved:
            notes.append(f"{run}: its checkpoints do not record what they were trained with")
            continue
        diffs = fingerprint_differences(saved, now, accept)
        if diffs:
            notes.append(f"{run}: trained with other settings ({'; '.join(diffs)})")
            continue
        candidates.append(found[-1])
    if not candidates:
        return None, notes
    return max(candidates, key=saved_at), notes


def _refuse_rewind(ckpt: Path, output_dir: Path) -> None:
    """Continuing an older checkpoint inside its own run would save over the newer ones: refuse."""
    own = [c.resolve() for c in list_checkpoints(output_dir)] if output_dir.is_dir() else []
    here = Path(ckpt).resolve()
    if here not in own or here == own[-1]:
        return
    later = [c.name for c in own[own.index(here) + 1:]]
    raise RunError(
        f"resume={ckpt} is not the newest checkpoint of its run {output_dir}: {', '.join(later)} came after it, "
        f"and continuing from it in that directory would save over them. To branch off from {ckpt.name}, run in a "
        f"new directory (hydra.run.dir=<a new directory> resume={ckpt}: it is only read); to continue the run, "
        f"use resume={output_dir}. Nothing was written."
    )


def _has_adapter(ckpt: Path) -> tuple[bool, str]:
    if is_sharded_checkpoint(ckpt):
        return any(is_adapter_key(k) for k in sharded_model_shapes(ckpt)), "LoRA adapter weights"
    return (state_dir(ckpt) / ADAPTER_FILE).is_file(), ADAPTER_FILE


def _saved_by(ckpt: Path, default: str) -> str:
    """The recipe a checkpoint records it was trained by (older checkpoints: ``default``)."""
    try:
        recipe = (read_checkpoint_info(ckpt).get("trained_with") or {}).get("recipe")
    except Exception:  # noqa: BLE001 - an unreadable record: the default names the usual recipe
        recipe = None
    return recipe if isinstance(recipe, str) and recipe.isidentifier() else default


def _check_recipe(ckpt: Path, *, lora: bool) -> None:
    """A LoRA checkpoint resumes only with a LoRA recipe, a full one only with a full one."""
    has_adapter, what = _has_adapter(ckpt)
    if lora and not has_adapter:
        recipe = _saved_by(ckpt, "full_finetune")
        raise CheckpointError(
            f"resume: {ckpt} holds no LoRA adapter ({what}); it was saved by {recipe}. "
            f"Resume it with `python -m recipes.{recipe} resume=...`."
        )
    if not lora and has_adapter:
        recipe = _saved_by(ckpt, "lora_finetune")
        raise CheckpointError(
            f"resume: {ckpt} was saved by {recipe} (it holds {what}); its model files are merged "
            f"LoRA weights. Resume it with `python -m recipes.{recipe} resume=...`, or fine-tune "
            f"the merged model from scratch with checkpointer.checkpoint_dir={ckpt}."
        )


def _load_dir(ckpt: Path, *, lora: bool, model_type: str, rank: int) -> tuple[dict[str, Any], Any]:
    _check_recipe(ckpt, lora=lora)
    if is_sharded_checkpoint(ckpt):
        state = load_training_state(ckpt)
        state["sharded_checkpoint"] = str(sharded_dir(ckpt).resolve())
        state["sharded_shapes"] = sharded_model_shapes(ckpt)
        # QLoRA: the NF4 base was not saved; the base checkpoint supplies it again
        state["base_from_checkpointer"] = read_checkpoint_info(ckpt).get("base_weights") == "base checkpoint"
        return state, None
    if lora or rank != 0:
        return load_training_state(ckpt), None
    state = load_resume_state(ckpt, model_type)
    return state, state.pop("model")


def load_checkpoint_dir(ckpt: str | Path, *, lora: bool, model_type: str = "LLAMA2") -> Resume:
    """A checkpoint directory as a :class:`Resume` for your own loop (no fingerprint check).

    Full fine-tuning's saved weights are kept in ``state["model"]`` (on every rank), so
    :func:`restore` loads them into a model built from other weights.
    """
    ckpt = find_resume_dir(ckpt)
    state, weights = _load_dir(ckpt, lora=lora, model_type=model_type, rank=0)
    if weights is not None:
        state["model"] = weights
    return Resume(ckpt, f"resume={ckpt}", state)


def open_resume(resume: str | None, *, checkpointer: Any, output_dir: str | Path, recipe: str, lora: bool,
                model_type: str, trained_with: Mapping[str, Any], accept: Sequence[str] = (), rank: int = 0,
                search_siblings: bool = True, log: Callable[[str], None] = print) -> Resume | None:
    """The state this run resumes from, checked against its fingerprint; None for a fresh run.

    Args:
        resume: the ``resume`` setting (None, ``"auto"``, a run or checkpoint directory).
        checkpointer: the run's checkpointer (its ``resume_from_checkpoint`` way in, model type).
        output_dir: this run's directory.
        recipe: the recipe name.
        lora: a LoRA run (the saved model is merged, so only the adapter is read back).
        model_type: the checkpointer's ``model_type`` (to read saved full-FT weights).
        trained_with: this run's :func:`fingerprint`.
        accept: fingerprint fields allowed to differ (``resume_accept``).
        rank: this process's rank (only rank 0 reads full-FT weights).
        search_siblings: let ``auto`` look at sibling run directories (not in ``-m`` sweeps).

    Raises:
        CheckpointError: an explicit checkpoint that is missing, incomplete or of the other recipe.
        RunError: the checkpoint was trained with other settings (each difference named).
    """
    if resume is not None and getattr(checkpointer, "resume_from_checkpoint", False):
        raise RunError(
            f"resume={resume} and checkpointer.resume_from_checkpoint=true both ask to resume; "
            "use one: resume=auto|DIR (tunekit's way) or the checkpointer's recipe_checkpoint."
        )
    if getattr(checkpointer, "resume_from_checkpoint", False):
        state = checkpointer.load_checkpoint()
        weights = state.pop("model", None)
        source = Path(checkpointer.recipe_path)
        res = Resume(source, "checkpointer.resume_from_checkpoint", state, weights)
        # Full fine-tuning reads the saved model through checkpoint_dir: a different directory by design.
        _check_fingerprint(res, trained_with, tuple(accept) + (() if lora else ("checkpoint",)))
        return res
    if resume is None:
        return None
    if resume == "auto":
        ckpt, notes = _auto_dir(Path(output_dir), recipe, trained_with, accept, search_siblings=search_siblings)
        for note in notes:
            log(f"tunekit {recipe}: resume=auto is not continuing {note}")
        if ckpt is None:
            return None
        how = "resume=auto"
    else:
        ckpt = find_resume_dir(resume)
        how = f"resume={resume}"
        _refuse_rewind(ckpt, Path(output_dir))
    _check_recipe(ckpt, lora=lora)  # the other recipe's checkpoint: say which recipe resumes it
    saved = read_checkpoint_info(ckpt).get("trained_with")
    if saved:  # checked before reading any tensor
        _refuse_differences(saved, trained_with, accept, ckpt, how)
    state, weights = _load_dir(ckpt, lora=lora, model_type=model_type, rank=rank)
    res = Resume(ckpt, how, state, weights)
    if not saved:
        _check_fingerprint(res, trained_with, accept)
    return res


def _refuse_differences(saved: Mapping[str, Any], now: Mapping[str, Any], accept: Sequence[str],
                        source: Path, how: str) -> None:
    diffs = fingerprint_differences(saved, now, accept)
    if not diffs:
        return
    names = [d.split(":", 1)[0] for d in diffs]
    raise RunError(
        f"{how}: the checkpoint {source} was trained with other settings than this run: "
        + "; ".join(diffs) + ". Continuing would mix two experiments. Run with the settings it was "
        f"trained with, or accept the change with resume_accept=[{','.join(names)}], or start a new "
        "run without resume (in a new directory)."
    )


def _check_fingerprint(res: Resume, now: Mapping[str, Any], accept: Sequence[str]) -> None:
    saved = (res.state.get("recipe_state") or {}).get("fingerprint")
    if saved:  # checkpoints of older versions record none: nothing to compare
        _refuse_differences(saved, now, accept, res.source, res.how)


def model_weights(res: Resume | None, checkpointer: Any) -> tuple[Callable[[], Any] | None, str]:
    """What the model is built from: ``(load function or None, where)``.

    A fresh run and a LoRA run read the base model through the checkpointer; a full fine-tune
    resumes from the weights it saved; a sharded step checkpoint supplies every weight itself
    (None: the parameters are only allocated, :func:`restore` fills them), except QLoRA's NF4
    base, which is read again from the base checkpoint.
    """
    if res is None or (res.weights is None and not res.sharded and "adapter" in res.state) or (
            res.sharded and res.state.get("base_from_checkpointer")):
        return (lambda: checkpointer.load_checkpoint()["model"]), str(checkpointer.checkpoint_dir)
    if res.sharded:
        return None, str(res.source)
    weights, res.weights = res.weights, None  # assigned to the model, no second copy kept here
    if weights is None:  # ranks other than 0 of a sharded full fine-tune: rank 0 broadcasts
        return (lambda: {}), str(res.source)
    return (lambda: weights), str(res.source)


# ---------------------------------------------------------------------------- checks


def _shapes(items: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in items.items()}


def check_adapter_compatible(model: nn.Module, adapter: Mapping[str, Any], source: str) -> None:
    """The saved adapter has exactly the model's LoRA keys and shapes (same lora.* settings).

    Args:
        adapter: the saved adapter tensors, or ``{key: shape}`` (a sharded checkpoint's).

    Raises:
        CheckpointError: naming the first differences and the settings to restore.
    """
    # Parameters, not state_dict(): global shapes for a sharded model too, and no FSDP hooks.
    own = {k: tuple(v.shape) for k, v in model.named_parameters() if is_adapter_key(k)}
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


def check_resume_fits(model: nn.Module, res: Resume, *, lora: bool) -> None:
    """The checkpoint being resumed fits the model built from this run's config.

    LoRA: the adapter's keys and shapes. A sharded checkpoint: every parameter's shape, from its
    metadata (no tensors read). Full-format full-FT weights were checked when the model was built.

    Raises:
        CheckpointError: what differs and what to change.
    """
    saved = res.state.get("sharded_shapes")
    if lora:
        adapter = res.state.get("adapter")
        if saved is not None:
            adapter = {k: v for k, v in saved.items() if is_adapter_key(k)}
        check_adapter_compatible(model, adapter or {}, str(res.source))
    if saved is None:
        return
    own = {k: tuple(v.shape) for k, v in model.named_parameters()}
    if res.state.get("base_from_checkpointer"):  # QLoRA: the NF4 base is read from the base checkpoint
        nf4 = {f"{name}.weight" for name in quantized_base_names(model)}
        own = {k: v for k, v in own.items() if k not in nf4}
    if own != dict(saved):
        diff = sorted(k for k in set(own) | set(saved) if own.get(k) != saved.get(k))
        raise CheckpointError(
            f"resume: the weights in {res.source} do not fit the model chosen by the config "
            f"(first differences: {[(k, saved.get(k), own.get(k)) for k in diff[:3]]} as "
            "(key, saved, now)). Resume with the `model=` option it was trained with."
        )


def _saved_batch_size(rs: Mapping[str, Any]) -> int | None:
    """Per-rank micro-batch size of the saving run (recorded, or derived from the sampler)."""
    if rs.get("batch_size"):
        return int(rs["batch_size"])
    sampler, micro = rs.get("sampler"), rs.get("step_in_epoch", 0) * rs.get("gradient_accumulation_steps", 1)
    if sampler and micro and sampler.get("start_index"):
        return int(sampler["start_index"]) // micro
    return None


def _position_problems(res: Resume, settings: TrainSettings, batch_size: int | None) -> list[str]:
    """Why the saved position cannot be continued exactly (empty when it can)."""
    state = res.state
    needed = ["lr_scheduler", "recipe_state"] + ([] if res.sharded else ["optimizer"])
    missing = [k for k in needed if state.get(k) is None]
    if missing:
        return [f"the checkpoint {res.source} lacks {missing}: it was not saved by a tunekit training "
                "run; start a new run from its weights instead (checkpointer.checkpoint_dir=...)"]
    rs = state["recipe_state"]
    if rs.get("epoch", 0) >= settings.epochs:  # else the run would do nothing and say it finished
        return [f"{res.source} already finished {rs['epoch']} epoch(s) and this run asks for epochs="
                f"{settings.epochs}, so nothing is left to train; raise epochs (e.g. epochs={rs['epoch'] + 1}) to "
                f"train on from it, or use it as it is (python -m recipes.generate checkpoint={res.source})"]
    if rs.get("step_in_epoch", 0) == 0:
        return []
    # A mid-epoch position is counted in samples: exact when every step sees the same global
    # samples, so world_size x accumulation x batch (the global batch) must be unchanged.
    ga, ws = settings.gradient_accumulation_steps, get_world_size()
    old_ga, old_ws = rs.get("gradient_accumulation_steps", ga), rs.get("world_size", ws)
    old_bs = _saved_batch_size(rs) or batch_size
    if batch_size is None or old_bs is None:
        changed = (old_ga, old_ws) != (ga, ws)
    else:
        changed = old_ga * old_ws * old_bs != ga * ws * batch_size
    if not changed:
        return []
    return [f"gradient_accumulation_steps was {old_ga}, world_size {old_ws} and batch_size {old_bs} when "
            f"{res.source} was saved mid-epoch, now {ga}, {ws} and {batch_size}; keep world_size x "
            "gradient_accumulation_steps x batch_size (the global batch) unchanged to continue mid-epoch, "
            "or resume from an epoch_* checkpoint"]


# ---------------------------------------------------------------------------- restoring


def restore(res: Resume, *, model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
            train_loader: Any, settings: TrainSettings, lora: bool) -> ResumePoint:
    """Put the saved weights, optimizer, schedule and data position back; the loop's start point.

    The model must be prepared (placed or sharded) and the optimizer built on it. Full
    fine-tuning weights were assigned when the model was built; a sharded checkpoint restores
    model and optimizer together (resharded to this world size).

    Raises:
        RunError: the position cannot be continued exactly (every problem listed).
    """
    problems = _position_problems(res, settings, getattr(train_loader, "batch_size", None))
    if problems:
        raise RunError("resume: " + "; ".join(problems) + ".")
    state, rs = res.state, res.state["recipe_state"]
    if res.sharded:
        load_sharded_checkpoint(state["sharded_checkpoint"], model, optimizer)
    else:
        if not lora and state.get("model") is not None:  # weights not assigned at build time
            if is_sharded(model):
                load_full_state_dict(model, state["model"], strict=True)
            else:
                model.load_state_dict(state["model"])
        if lora and state.get("adapter") is not None:
            if is_sharded(model):  # full tensors in, each rank keeps its shards
                load_full_state_dict(model, state["adapter"], strict=False)
            else:
                _, unexpected = model.load_state_dict(state["adapter"], strict=False)
                if unexpected:
                    raise CheckpointError(f"resume: adapter keys not in the model: {unexpected[:5]}")
        load_optimizer_state_dict(model, optimizer, state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    sampler = getattr(train_loader, "sampler", None)
    if rs.get("sampler") is not None and isinstance(sampler, StatefulSampler):
        sampler_state = dict(rs["sampler"])
        if sampler_state.get("world_size") != get_world_size():
            # The global batch is unchanged (checked above), so the position in the epoch's
            # order carries over; the per-rank start is set by the loop.
            sampler_state.update(world_size=get_world_size(), start_index=0)
        sampler.load_state_dict(sampler_state)  # validates the data size
    interval = rs.get("log_interval") or {}  # absent in older checkpoints: the interval restarts
    return ResumePoint(epoch=rs["epoch"], step_in_epoch=rs["step_in_epoch"], global_step=rs["global_step"],
                       rng=rs.get("rng"), log_loss_sum=float(interval.get("loss_sum", 0.0)),
                       log_tokens=int(interval.get("tokens", 0)),
                       log_metric_sums={str(k): float(v) for k, v in (interval.get("metrics") or {}).items()})
