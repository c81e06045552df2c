"""OmegaConf resolvers used by the shipped configs (registered on import of tunekit.config).

- ``${tunekit.models_root:}``: ``$TUNEKIT_MODELS_ROOT`` if set, else
  ``$XDG_CACHE_HOME/tunekit/models`` (``~/.cache/tunekit/models``). The config key
  ``paths.models_root`` defaults to it, so either the environment or the config can move it.
- ``${tunekit.run_dir:}``: Hydra's ``runtime.output_dir`` during a run; where Hydra has not
  made one (``--cfg job --resolve``, ``tunekit validate``) the absolute ``hydra.run.dir``.
- ``${tunekit.asset:tiny_llama2/hf}``: absolute path of a file or directory under the installed
  package's ``tunekit/assets`` directory.
- ``${tunekit.run_id:}``: the run's directory name, the same on every rank of one launch (the
  primary configs' ``hydra.run.dir`` uses it; see :func:`run_id`).
- ``${tunekit.sweep_id:}``: ``run_id`` for ``hydra.sweep.dir``; refuses a ``-m`` sweep inside a
  multi-rank torchrun/srun launch (sweeps of distributed jobs go through a submitit launcher).
- ``${tunekit.hydra_subdir:}``: ``.hydra`` (``hydra.output_subdir``), or null when a command-line
  override holds an access token, so Hydra writes no copy of it before the run refuses it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = [
    "MODELS_ROOT_ENV",
    "asset_path",
    "default_models_root",
    "register_resolvers",
    "run_dir",
    "run_id",
    "sweep_id",
]

_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"

MODELS_ROOT_ENV = "TUNEKIT_MODELS_ROOT"
_ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def default_models_root() -> str:
    """Where downloaded weights live unless ``paths.models_root`` says otherwise."""
    env = os.environ.get(MODELS_ROOT_ENV)
    if env:
        return str(Path(env).expanduser().resolve())
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache).expanduser() / "tunekit" / "models")


def asset_path(relative: str) -> str:
    """Absolute path of ``relative`` inside the package's bundled assets directory."""
    return str(_ASSETS_DIR / relative)


def run_dir() -> str:
    """The run's output directory (see the module docstring)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return str(Path("outputs").resolve())
    hydra_cfg = HydraConfig.get()
    out = OmegaConf.select(hydra_cfg, "runtime.output_dir", throw_on_missing=False)
    if out:
        return str(out)
    # The user config (hydra's parent) may no longer hold the `hydra` key: re-root a copy. The
    # copy's time-based run id is its own, so resolve it once per Hydra config: `output_dir` and
    # every `${output_dir}/...` must name the same directory even across a second boundary.
    global _detached_run_dir
    if _detached_run_dir is not None and _detached_run_dir[0] is hydra_cfg:
        return _detached_run_dir[1]
    detached = OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)})
    _detached_run_dir = (hydra_cfg, str(Path(detached.hydra.run.dir).resolve()))
    return _detached_run_dir[1]


_detached_run_dir: tuple[object, str] | None = None


def _process_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) of process ``pid`` from /proc (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_id(environ: dict[str, str] | None = None) -> str:
    """A name for the run directory on which every rank of one launch agrees.

    - torchrun with ``--rdzv-id ID`` (``TORCHELASTIC_RUN_ID``): ``ID`` (multi-node runs must
      pass the same id on every node; the job id of the scheduler is a good choice).
    - torchrun without an id (``TORCHELASTIC_RUN_ID=none``, single node): the start time of
      the torchrun agent (the ranks' parent process) plus its pid:
      ``2024-05-01_12-00-00-p4242``.
    - a Slurm step with several tasks (srun, submitit): ``slurm-JOBID`` (array jobs:
      ``slurm-ARRAYJOBID_TASKID``), so a requeued job finds its own checkpoints again.
    - submitit's local executor with several tasks: ``local-JOBID``.
    - otherwise (one process): the current time, ``2024-05-01_12-00-00`` (Hydra's default).
    """
    env = os.environ if environ is None else environ
    rdzv = env.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return rdzv
    if rdzv == "none":
        ppid = os.getppid()
        started = _process_start_time(ppid)
        stamp = time.strftime(_TIME_FORMAT, time.localtime(started if started is not None else 0))
        return f"{stamp}-p{ppid}"
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and env.get("SLURM_JOB_ID"):
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"slurm-{env['SLURM_JOB_ID']}"
    if int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1 and env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local-{env['SUBMITIT_LOCAL_JOB_ID']}"
    return time.strftime(_TIME_FORMAT)


def sweep_id() -> str:
    """:func:`run_id` for ``hydra.sweep.dir``, after refusing a sweep inside a multi-rank launch.

    Hydra resolves ``hydra.sweep.dir`` only in ``-m`` mode, so this is where a sweep started
    under ``torchrun --nproc-per-node N`` (N > 1) or a multi-task srun is stopped, before any
    job runs. Jobs started by a submitit launcher (``SUBMITIT_EXECUTOR`` set) are fine.
    """
    if "SUBMITIT_EXECUTOR" not in os.environ and (
        int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
    ):
        from tunekit.config.errors import ConfigError

        raise ConfigError(MULTIRUN_IN_TORCHRUN)
    return run_id()


MULTIRUN_IN_TORCHRUN = (
    "a Hydra multirun (-m) sweep cannot run inside torchrun/srun with several ranks: every "
    "rank would run every sweep point in turn and re-initialise the process group per job. "
    "Sweep distributed jobs through a launcher that gives each job its own processes: "
    "`python -m recipes.full_finetune -m hydra/launcher=slurm hydra.launcher.nodes=2 "
    "hydra.launcher.gpus_per_node=8 optimizer.lr=1e-5,2e-5` on Slurm, or `hydra/launcher=local` "
    "(two local ranks, for testing); or run one torchrun per sweep point. See docs/distributed.md."
)


def holds_a_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` already holds a run: a complete checkpoint, metrics or a result."""
    d = Path(str(run_dir))
    if not d.is_dir():
        return False
    if (d / "result.json").is_file() or (d / "logs" / "metrics.jsonl").is_file():
        return True
    return any((c / "COMPLETE").is_file() for c in d.glob("*") if re.fullmatch(r"(epoch|step)_\d+", c.name))


def hydra_subdir(*, _root_: Any = None) -> str | None:
    """``hydra.output_subdir``: ``.hydra``, or None when the config or an override holds a token,
    or the run directory already holds a run (its own ``.hydra/`` record is never overwritten:
    a refused second run writes nothing there, a resumed run keeps the first record)."""
    from hydra.core.hydra_config import HydraConfig

    from tunekit.config.secrets import redact_override, secret_problems

    if HydraConfig.initialized():
        task = OmegaConf.select(HydraConfig.get(), "overrides.task", default=None) or []
        if any(redact_override(str(o)) != str(o) for o in task):
            return None
        # A directory that already holds a run keeps that run's record: a resumed or a refused
        # second run must not overwrite its .hydra/ files (tunekit records its own beside them).
        out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
        if out and (holds_a_run(out) or ((Path(out) / ".hydra").is_dir() and (Path(out) / "run_info.json").is_file())):
            return None
    if _root_ is not None:
        try:
            keys = [k for k in _root_.keys() if k != "hydra"]
            plain = {k: OmegaConf.to_container(_root_._get_node(k), resolve=False)
                     if OmegaConf.is_config(_root_._get_node(k)) else _root_._get_node(k)._value()
                     for k in keys}
        except Exception:
            return ".hydra"
        if secret_problems(plain):
            return None
    return ".hydra"


def model_file(checkpoint_dir: str, name: str) -> str:
    """``name`` inside the model directory that ``checkpoint_dir`` stands for.

    As the checkpointers read it: a model directory holds its files itself; a checkpoint tunekit
    saved keeps them in ``model/`` (``RUN/epoch_N/model/tokenizer.model``); a run directory
    stands for its newest complete ``epoch_*`` / ``step_*`` checkpoint. Used by the tokenizer
    configs, so ``checkpointer.checkpoint_dir=RUN`` or ``=RUN/epoch_N`` finds the tokenizer saved
    with those weights. Where nothing is found the plain ``checkpoint_dir/name`` is returned
    (and the tokenizer reports it missing).
    """
    base = Path(str(checkpoint_dir)).expanduser()
    for candidate in (base / name, base / "model" / name):
        if candidate.exists():
            return str(candidate)
    saved = [d for d in base.glob("*") if re.fullmatch(r"(epoch|step)_\d+", d.name) and (d / "COMPLETE").is_file()]
    for d in sorted(saved, key=lambda d: (d / "COMPLETE").stat().st_mtime_ns, reverse=True):
        for candidate in (d / "model" / name, d / name):
            if candidate.exists():
                return str(candidate)
    return str(base / name)


def register_resolvers() -> None:
    """Register tunekit's resolvers with OmegaConf (idempotent)."""
    resolvers = (
        ("tunekit.models_root", default_models_root),
        ("tunekit.asset", asset_path),
        ("tunekit.run_dir", run_dir),
        ("tunekit.hydra_subdir", hydra_subdir),
        ("tunekit.model_file", model_file),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    # Cached per config object, like Hydra's `now`: every use in one config (and the pickled
    # config a submitit job receives) sees the same value.
    for name, fn in (("tunekit.run_id", lambda: run_id()), ("tunekit.sweep_id", sweep_id)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
