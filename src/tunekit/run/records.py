"""What a run writes about itself: its config and versions, its start line, its result.

Also the guard that keeps two runs out of one directory: a run directory that already holds
another run's checkpoints or metrics is refused unless this run resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from tunekit.checkpointing import list_checkpoints
from tunekit.run.errors import RunError

__all__ = [
    "RESOLVED_CONFIG_FILE",
    "RESULT_FILE",
    "RUN_INFO_FILE",
    "announce_run",
    "check_run_dir",
    "finish_run",
    "package_versions",
    "report_result",
    "write_result",
    "write_run_info",
]

RUN_INFO_FILE = "run_info.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
RESULT_FILE = "result.json"
METRICS_FILE = Path("logs") / "metrics.jsonl"
_PACKAGES = ("tunekit", "torch", "hydra-core", "omegaconf", "sentencepiece", "safetensors",
             "transformers", "peft", "numpy")


LOCK_FILE = ".tunekit.lock"
_HELD_LOCKS: list[Any] = []  # open lock files: held (flock) until this process ends, even by kill -9


def _lock_run_dir(out: Path, recipe: str) -> None:
    """Hold an exclusive lock on ``out`` for the life of this process: one run per directory at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the checks above still hold for runs one after another
        return
    from tunekit.distributed import get_rank

    if get_rank() != 0 or any(getattr(f, "name", None) == str(out / LOCK_FILE) for f in _HELD_LOCKS):
        return
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - kept open on purpose: the lock lives with the process
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunError(
            f"Another tunekit run ({holder}) is writing into the run directory {out} right now; two runs in one "
            f"directory would replace each other's checkpoints and mix their metrics. Wait for it to finish "
            f"(then resume={out} continues it), or start this {recipe} run in another directory "
            "(hydra.run.dir=<a new directory>, or drop the fixed hydra.run.dir). Nothing was written."
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, {recipe}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _HELD_LOCKS.append(f)


def check_run_dir(output_dir: str | Path, *, resuming_here: bool, resume_setting: str | None,
                  recipe: str) -> str | None:
    """Refuse a run directory that holds another run, or that another run is writing right now.

    Passing the checks, this process takes the directory's lock (``.tunekit.lock``, rank 0), so
    a second run started into it while this one works is refused too.
    """
    note = _check_used(output_dir, resuming_here=resuming_here, resume_setting=resume_setting, recipe=recipe)
    _lock_run_dir(Path(output_dir), recipe)
    return note


def _check_used(output_dir: str | Path, *, resuming_here: bool, resume_setting: str | None,
                recipe: str) -> str | None:
    """Refuse to start a fresh run in a directory that holds another run's checkpoints or metrics.

    ``resume=auto`` that found no checkpoint (a run stopped before its first save, relaunched)
    starts over in the same directory: the stopped attempt's metrics file is kept under a new
    name (``metrics.jsonl.attempt-N``) so the new file holds one run only.

    Args:
        output_dir: this run's directory.
        resuming_here: this run continues a checkpoint of ``output_dir`` itself (its metrics go on).
        resume_setting: the ``resume`` setting, for the message.

    Returns:
        A note to print (the kept metrics file), else None.

    Raises:
        RunError: naming what is there and the two ways on; nothing is moved or written.
    """
    out = Path(output_dir)
    if resuming_here or not out.is_dir():
        return None
    checkpoints = [p.name for p in list_checkpoints(out) if p.parent == out]
    metrics = out / METRICS_FILE
    has_metrics = metrics.is_file() and metrics.stat().st_size > 0
    if resume_setting == "auto" and not checkpoints and has_metrics:
        n = 1
        while metrics.with_name(f"{metrics.name}.attempt-{n}").exists():
            n += 1
        kept = metrics.with_name(f"{metrics.name}.attempt-{n}")
        metrics.rename(kept)
        return (f"resume=auto found no checkpoint in {out}; starting over there (the earlier attempt's "
                f"metrics are kept as {kept.relative_to(out)})")
    found = checkpoints + ([str(METRICS_FILE)] if has_metrics else [])
    if (out / RESULT_FILE).is_file():
        found.append(RESULT_FILE)
    if not found:
        return None
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    how = "" if resume_setting is None else f" (resume={resume_setting} continues a checkpoint of another directory)"
    raise RunError(
        f"The run directory {out} already holds another {recipe} run ({shown}); a new run there would "
        f"replace its checkpoints and mix two runs in one metrics file{how}. To continue that run, add "
        f"resume={out} (or resume=auto); to start a new one, choose another directory "
        "(hydra.run.dir=... or drop the fixed hydra.run.dir). Nothing was written."
    )


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


def _free_name(out: Path, name: str) -> Path:
    """``name`` in ``out``, or ``<stem>.resume-N<suffix>`` when an earlier part of the run wrote it."""
    path = out / name
    n = 1
    while path.exists():
        path = out / f"{Path(name).stem}.resume-{n}{Path(name).suffix}"
        n += 1
    return path


def write_run_info(output_dir: str | Path, *, recipe: str, resolved_config_yaml: str,
                   overrides: Sequence[str], resumed_from: str | None) -> None:
    """Write ``config_resolved.yaml`` and ``run_info.json`` (overrides, versions, host, resume).

    A run resumed in its own directory keeps the first records and writes its own beside them
    (``run_info.resume-1.json``, ``config_resolved.resume-1.yaml``, ...): nothing is overwritten.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(_free_name(out, RESOLVED_CONFIG_FILE), resolved_config_yaml)
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
    _atomic_write(_free_name(out, RUN_INFO_FILE), json.dumps(info, indent=2) + "\n")


def announce_run(*, recipe: str, output_dir: str, resolved_config_yaml: str, config: Mapping[str, Any],
                 overrides: Sequence[str], metric_logger: Any, model_summary: str, num_train: int,
                 num_val: int, total_steps: int, resume: Any, resume_auto: bool,
                 notes: Sequence[str] = ()) -> None:
    """Rank 0's start of a run: run records, the config to the metric logger, a summary line.

    Args:
        model_summary: the recipe's words on the model ("1.2M parameters, all trainable").
        resume: the ``tunekit.run.resume.Resume`` being continued, or None.
        resume_auto: ``resume=auto`` was asked (said when it found nothing).
        notes: warnings for stderr (e.g. from ``check_tokenizer_fits``).
    """
    source = None if resume is None else str(resume.source)
    write_run_info(output_dir, recipe=recipe, resolved_config_yaml=resolved_config_yaml,
                   overrides=overrides, resumed_from=source)
    metric_logger.log_config(dict(config))
    print(f"tunekit {recipe}: {model_summary}; {num_train} train / {num_val} validation samples; "
          f"{total_steps} optimizer steps; output: {output_dir}", flush=True)
    if resume is not None:
        rs = resume.state.get("recipe_state") or {}
        print(f"tunekit {recipe}: resuming from {source} ({resume.how}; epoch {rs.get('epoch')}, "
              f"global step {rs.get('global_step')})", flush=True)
    elif resume_auto:
        print(f"tunekit {recipe}: resume=auto found no checkpoint to continue; starting fresh", flush=True)
    for note in notes:
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


def finish_run(recipe: str, cfg: Any, *, net: torch.nn.Module, optimizer: Any, loss_fn: Any, tokenizer: Any,
               metric_logger: Any, result: Any, probe: Any, device: torch.device, rank: int,
               overrides: Sequence[str], t_start: float) -> Any:
    """What a fine-tuning recipe does after ``train()``: print the memory budget (rank 0), score
    ``eval_tasks``, close the logger, draw ``plots/``, write and print the result, and answer the
    ``examples`` after training. Returns what the recipe returns (the Hydra sweeper's value)."""
    from tunekit.training.memory import format_memory_budget, memory_budget

    if rank == 0:  # where the memory went, and what would lower it
        freed = cfg.optimizer_in_backward or getattr(optimizer, "tunekit_prescale_loss", False)
        logits = cfg.batch_size * cfg.max_seq_len * net.tok_embeddings.num_embeddings * 4
        print(format_memory_budget(memory_budget(
            net, optimizer, device=device, gradients_freed_in_backward=freed,
            logits_bytes=logits // getattr(loss_fn, "num_chunks", 1))), flush=True)
    if cfg.eval_tasks and not result.interrupted:  # scored on every rank (sharded forward), logged by rank 0
        from tunekit.evaluation import evaluate_after_training

        table = evaluate_after_training(net, tokenizer, tasks=list(cfg.eval_tasks), output_dir=cfg.output_dir,
                                        metric_logger=metric_logger, step=result.global_step,
                                        limit=cfg.eval_limit, seed=cfg.seed, rank_zero=rank == 0)
        print(table if rank == 0 else "", end="", flush=True)
    metric_logger.close()
    if cfg.plots and rank == 0:  # never fails the run (no matplotlib: a note)
        from tunekit.reporting import plots_after_run

        print(f"tunekit {recipe}: {plots_after_run(cfg.output_dir)}", flush=True)
    value = report_result(recipe, cfg.output_dir, result, overrides=overrides,
                          seconds=time.perf_counter() - t_start, rank_zero=rank == 0)
    if probe is not None and not result.interrupted:
        probe.finish(net, cfg.output_dir)
    return value
