"""FullModelHFCheckpointer and FullModelMetaCheckpointer.

Both read a checkpoint in their format into tunekit names, and write every save back in the
same format into ``output_dir/epoch_{e}/`` (or ``step_{s}/``), atomically, in the layout of
:mod:`tunekit.checkpointing._layout`:

```
epoch_0/
  model/                           the clean model directory, nothing else:
    model-00001-of-00002.safetensors ... model.safetensors.index.json   (HF; or pytorch_model-*.bin)
    config.json, generation_config.json, tokenizer files               (HF, copied from the input)
    consolidated.00.pth [.. .07.pth], params.json, tokenizer.model     (Meta; the input's file count)
  adapter/                         LoRA only: PEFT adapter, peft.PeftModel.from_pretrained(base, epoch_0/adapter)
    adapter_config.json, adapter_model.safetensors
  state/                           training state
    adapter_0.pt                   LoRA weights in tunekit names (for resuming)
    recipe_state.pt                optimizer, lr_scheduler, recipe_state, ... (what the caller passed)
  checkpoint.json                  format, epoch, step, merged_adapter, trained_with
  COMPLETE                         written last; JSON with epoch, step, format, time
```

Readers accept a run directory (its newest complete checkpoint), a checkpoint directory or its
``model/`` directory, in this layout and in the older flat one (everything in ``epoch_0/``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.checkpointing._formats import (
    _discover_hf,
    _discover_meta,
    check_json_describes_weights,
    check_model_parallel_size,
    hf_config_and_dims,
    hf_model_settings,
    meta_model_settings,
    meta_params_and_dims,
    read_hf_model,
    read_meta_model,
    write_hf_weights,
    write_meta_weights,
)
from tunekit.checkpointing._io import (
    COMPLETE_MARKER,
    atomic_checkpoint_dir,
    download_hint,
    is_complete,
    load_pickle,
    load_state_file,
    parse_size,
)
from tunekit.checkpointing._layout import INFO_FILE, MODEL_SUBDIR, PEFT_SUBDIR, STATE_SUBDIR, model_dir, state_dir
from tunekit.models import ConversionError, ModelType

__all__ = [
    "ADAPTER_FILE",
    "Checkpointer",
    "FullModelHFCheckpointer",
    "FullModelMetaCheckpointer",
    "PEFT_ADAPTER_DIR",
    "RECIPE_STATE_FILE",
    "hf_model_settings",
    "meta_model_settings",
    "read_hf_model",
    "read_meta_model",
    "write_hf_weights",
    "write_meta_weights",
]

ADAPTER_FILE = "adapter_0.pt"
RECIPE_STATE_FILE = "recipe_state.pt"
PEFT_ADAPTER_DIR = PEFT_SUBDIR
_MODEL_KEYS = ("model", "adapter", "adapter_config")
# What a saved model/ directory takes over from the input besides the weights: the config and
# tokenizer files its format's tools read, and the licence that must travel with the weights.
# Nothing else (no model card of the base model, no training state, no other *.pt/*.pth: Meta's
# and llama.cpp's tools glob for weight files).
_HF_AUX = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
           "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template*",
           "vocab.json", "merges.txt", "LICENSE*", "USE_POLICY.md")
_META_AUX = ("params.json", "tokenizer.model", "LICENSE*", "USE_POLICY.md")
_STEP_RE = re.compile(r"^step_(\d+)$")


class Checkpointer(Protocol):
    """The shape both checkpointers share (and any future format must have)."""

    checkpoint_dir: Path
    output_dir: Path

    def load_checkpoint(self) -> dict[str, Any]:
        """Read the model (tunekit names) and, when resuming, the training state."""
        ...

    def save_checkpoint(
        self, state: dict[str, Any], epoch: int, intermediate_checkpoint: bool = False, step: int | None = None,
        *, info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``state`` into a complete ``epoch_{epoch}/`` or ``step_{step}/`` directory."""
        ...


# --- shared setup ------------------------------------------------------------------------------
@dataclass
class _Setup:
    checkpoint_dir: Path
    output_dir: Path
    model_type: ModelType
    files: list[Path]
    adapter_path: Path | None
    recipe_path: Path | None
    key_files: dict[str, str] = field(default_factory=dict)


def _has_weights(d: Path) -> bool:
    return any(d.glob("model*.safetensors")) or any(d.glob("pytorch_model*.bin")) or any(d.glob("consolidated.*.pth"))


def _is_tunekit_checkpoint(d: Path) -> bool:
    return (d / COMPLETE_MARKER).is_file() or (d / INFO_FILE).is_file()


def resolve_checkpoint_dir(path: Path) -> tuple[Path, Path | None]:
    """``(model directory, checkpoint directory or None)`` for what a user points a reader at.

    ``path`` may be a model directory (a download, or a checkpoint's ``model/``), a checkpoint
    directory (``epoch_N/``, new or old flat layout) or a run directory (its newest complete
    checkpoint). The checkpoint directory is None for a plain model directory.
    """
    if (path / MODEL_SUBDIR).is_dir() and not _has_weights(path):
        return path / MODEL_SUBDIR, path
    if path.name == MODEL_SUBDIR and _is_tunekit_checkpoint(path.parent):
        return path, path.parent
    if _has_weights(path) or (path / "config.json").is_file() or (path / "params.json").is_file():
        return path, (path if _is_tunekit_checkpoint(path) else None)
    from tunekit.checkpointing._resume import list_checkpoints

    found = list_checkpoints(path)
    if found:
        return model_dir(found[-1]), found[-1]
    return path, None


def _setup(
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    checkpoint_files: Sequence[str] | None,
    model_type: str,
    adapter_checkpoint: str | None,
    recipe_checkpoint: str | None,
    resume_from_checkpoint: bool,
    discover: Callable[[Path], list[Path]],
) -> _Setup:
    from tunekit.checkpointing._auto import AUTO, resolve_model_type

    auto = str(model_type).lower() == AUTO
    mt = None if auto else resolve_model_type(model_type, checkpoint_dir)
    given = Path(checkpoint_dir).expanduser()
    if auto and not given.is_dir():
        resolve_model_type(model_type, given)  # says what model=auto needs
    out = Path(output_dir).expanduser()
    if given.is_file():
        raise CheckpointFileNotFoundError(
            f"checkpointer.checkpoint_dir {given} is a file, not a directory: give the directory that holds the "
            f"model's weights and config, e.g. checkpointer.checkpoint_dir={given.parent}."
        )
    if not given.is_dir():
        raise CheckpointFileNotFoundError(
            f"checkpointer.checkpoint_dir {given} does not exist or is not a directory. {download_hint(given)}"
        )
    ckpt, saved = resolve_checkpoint_dir(given)
    if mt is None:  # model_type=auto: the family the checkpoint's own config.json / params.json declares
        mt = resolve_model_type(model_type, ckpt)
    for inner in dict.fromkeys([ckpt, *([saved] if saved is not None else [])]):
        if out.resolve().is_relative_to(inner.resolve()):
            raise CheckpointError(
                f"checkpointer.output_dir {out} is inside checkpoint_dir {inner}: saves would mix with the "
                f"model being read and could overwrite it. Choose an output_dir outside {inner}."
            )
    if checkpoint_files:
        files = [ckpt / f for f in checkpoint_files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointFileNotFoundError(
                f"checkpointer.checkpoint_files: {', '.join(missing)} not found in {ckpt}. "
                f"Omit checkpoint_files to discover the weights. {download_hint(ckpt)}"
            )
    else:
        files = discover(ckpt)
    bases = list(dict.fromkeys([given, *([saved] if saved is not None else []), ckpt]))

    def resolve(name: str | None, field_name: str, default_file: str) -> Path | None:
        if name is None:
            return None
        p = Path(name).expanduser()
        cands = [p] if p.is_absolute() else [b / p for b in bases]
        more = []
        for c in cands:
            more.append(c.parent / STATE_SUBDIR / c.name)  # epoch_N/recipe_state.pt -> epoch_N/state/...
            if c.is_dir():
                more += [state_dir(c) / default_file, state_dir(resolve_checkpoint_dir(c)[1] or c) / default_file]
        for c in [*cands, *more]:
            if c.is_file():
                return c
        raise CheckpointFileNotFoundError(
            f"checkpointer.{field_name}: {name} was not found (looked in {', '.join(str(c) for c in cands)} and "
            f"their {STATE_SUBDIR}/ directories). Give the {default_file} of the checkpoint to resume, or "
            f"its epoch_N/step_N directory."
        )

    adapter_path = recipe_path = None
    if resume_from_checkpoint:
        if recipe_checkpoint is None:
            raise CheckpointError(
                "resume_from_checkpoint=True needs checkpointer.recipe_checkpoint (the recipe_state.pt "
                "of the checkpoint to resume), and adapter_checkpoint for LoRA."
            )
        adapter_path = resolve(adapter_checkpoint, "adapter_checkpoint", ADAPTER_FILE)
        recipe_path = resolve(recipe_checkpoint, "recipe_checkpoint", RECIPE_STATE_FILE)
    return _Setup(ckpt, out, mt, files, adapter_path, recipe_path)


def _copy_aux(src: Path, dst: Path, patterns: Sequence[str]) -> None:
    for f in sorted(src.iterdir()):
        if f.is_file() and any(fnmatch.fnmatch(f.name, p) for p in patterns):
            shutil.copy2(f, dst / f.name)


def _load_training_files(adapter_path: Path | None, recipe_path: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if adapter_path is not None:
        out["adapter"] = load_state_file(adapter_path)
    if recipe_path is not None:
        state = load_pickle(recipe_path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{recipe_path} does not hold a dict of training state.")
        out.update(state)
    return out


def _save_common(
    state: Mapping[str, Any], tmp: Path, mt: ModelType, heads: tuple[int, int, int], base: Path
) -> dict[str, Any] | None:
    """Adapter (tunekit in ``state/``, PEFT in ``adapter/``) and recipe state (``state/``): the same
    for every format. Returns checkpoint.json's ``merged_adapter`` entry (None without adapter)."""
    merged = None
    state_path = tmp / STATE_SUBDIR
    if state.get("adapter") is not None:
        state_path.mkdir(exist_ok=True)
        adapter = {k: v.detach().contiguous().clone() for k, v in state["adapter"].items()}
        torch.save(adapter, state_path / ADAPTER_FILE)
        digest = hashlib.sha256()
        with open(state_path / ADAPTER_FILE, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        merged = {"sha256": digest.hexdigest(), "file": f"{STATE_SUBDIR}/{ADAPTER_FILE}"}
        if state.get("adapter_config") is not None:
            peft_dir = tmp / PEFT_ADAPTER_DIR
            peft_dir.mkdir()
            try:
                peft_sd = mt.adapter_to_peft(adapter, *heads)
                cfg = mt.peft_config(dict(state["adapter_config"]), str(base))
            except ConversionError as err:
                raise CheckpointError(f"Cannot export the adapter to PEFT format: {err}") from None
            save_file(peft_sd, str(peft_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
            (peft_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    training = {k: v for k, v in state.items() if k not in _MODEL_KEYS}
    if training:
        state_path.mkdir(exist_ok=True)
        torch.save(training, state_path / RECIPE_STATE_FILE)
    return merged


def _write_info(tmp: Path, *, fmt: str, epoch: int, step: int | None, merged: dict[str, Any] | None,
                info: Mapping[str, Any] | None) -> None:
    record = {"format": fmt, "epoch": epoch, "step": step, "merged_adapter": merged,
              "trained_with": dict(info) if info is not None else {}}
    (tmp / INFO_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def _adopt(ckpt: Any, s: _Setup, resume_from_checkpoint: bool, keep_last_n: int | None) -> None:
    """The attributes every checkpointer exposes, from its shared setup."""
    ckpt._s = s
    #: the family row's name (``model_type="auto"`` resolved from the checkpoint's JSON)
    ckpt.model_type = s.model_type.name
    ckpt.resume_from_checkpoint = bool(resume_from_checkpoint)
    ckpt.recipe_path, ckpt.adapter_path = s.recipe_path, s.adapter_path
    ckpt.checkpoint_dir, ckpt.output_dir, ckpt.checkpoint_files = s.checkpoint_dir, s.output_dir, s.files
    ckpt.keep_last_n = keep_last_n


def _load(s: _Setup, read_model: Callable[..., dict[str, torch.Tensor]]) -> dict[str, Any]:
    """``{"model": ...}`` read by the format's reader, plus the training files when resuming."""
    out: dict[str, Any] = {"model": read_model(s.checkpoint_dir, s.files, s.model_type, s.key_files)}
    out.update(_load_training_files(s.adapter_path, s.recipe_path))
    return out


def _save(ckpt: Any, state: dict[str, Any], epoch: int, step: int | None, info: Mapping[str, Any] | None, *,
          marker_format: str, fmt: str, intermediate: bool, write_model: Callable[[Path, str], None],
          aux: Sequence[str]) -> Path:
    """One complete checkpoint directory, written atomically: ``model/`` (``write_model(dir, name)``
    plus the format's ``aux`` files of the input), adapter and training state, ``checkpoint.json``;
    then the oldest ``step_*`` directories beyond ``keep_last_n`` are pruned."""
    s, name = ckpt._s, _dir_name(epoch, step)
    _clean_stale(ckpt.output_dir)
    marker = {"epoch": epoch, "step": step, "intermediate": intermediate, "format": marker_format}
    with atomic_checkpoint_dir(ckpt.output_dir, name, marker) as tmp:
        mdir = tmp / MODEL_SUBDIR
        mdir.mkdir()
        write_model(mdir, name)
        _copy_aux(s.checkpoint_dir, mdir, aux)
        merged = _save_common(state, tmp, s.model_type, ckpt._heads, s.checkpoint_dir)
        _write_info(tmp, fmt=fmt, epoch=epoch, step=step, merged=merged, info=info)
    _prune(ckpt.output_dir, ckpt.keep_last_n)
    return ckpt.output_dir / name


def _dir_name(epoch: int, step: int | None) -> str:
    return f"step_{step}" if step is not None else f"epoch_{epoch}"


def _clean_stale(output_dir: Path) -> None:
    # Leftovers of a crashed save (never picked by resume, but they take disk space).
    if output_dir.is_dir():
        for d in output_dir.glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)


def _prune(output_dir: Path, keep_last_n: int | None) -> None:
    if keep_last_n is None:
        return
    steps = sorted(
        (int(m.group(1)), d)
        for d in output_dir.iterdir()
        if (m := _STEP_RE.match(d.name)) and is_complete(d)
    )
    for _, d in steps[: max(0, len(steps) - keep_last_n)]:
        shutil.rmtree(d, ignore_errors=True)


# --- HF ------------------------------------------------------------------------------------------
class FullModelHFCheckpointer:
    """Reads and writes HF-format checkpoints (``config.json`` + safetensors or ``.bin`` shards).

    Args:
        checkpoint_dir: the HF model directory.
        output_dir: where ``epoch_{e}/`` and ``step_{s}/`` directories go (not inside checkpoint_dir).
        checkpoint_files: weight files within checkpoint_dir; discovered when omitted.
        model_type: a key of ``tunekit.models.MODEL_TYPES``.
        adapter_checkpoint: ``adapter_0.pt`` to resume LoRA from (relative to checkpoint_dir or absolute).
        recipe_checkpoint: ``recipe_state.pt`` to resume from (relative to checkpoint_dir or absolute).
        resume_from_checkpoint: load the adapter and recipe state as well.
        keep_last_n: keep only the newest n ``step_*`` directories (None keeps all).
        max_shard_size: largest output shard, e.g. ``"5GB"`` or bytes.

    Raises:
        CheckpointError: bad model_type, output_dir inside checkpoint_dir, missing files.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        output_dir: str | Path,
        checkpoint_files: Sequence[str] | None = None,
        model_type: str = "LLAMA2",
        adapter_checkpoint: str | None = None,
        recipe_checkpoint: str | None = None,
        resume_from_checkpoint: bool = False,
        keep_last_n: int | None = None,
        max_shard_size: int | str = "5GB",
    ) -> None:
        s = _setup(checkpoint_dir, output_dir, checkpoint_files, model_type, adapter_checkpoint,
                   recipe_checkpoint, resume_from_checkpoint, _discover_hf)
        _adopt(self, s, resume_from_checkpoint, keep_last_n)
        self.max_shard_bytes = parse_size(max_shard_size)
        self.format = "safetensors" if any(f.suffix == ".safetensors" for f in s.files) else "bin"
        self.config, d = hf_config_and_dims(s.checkpoint_dir, s.model_type)
        check_json_describes_weights(s.files, d, s.model_type, json_path=s.checkpoint_dir / "config.json",
                                     source=s.checkpoint_dir)
        self._heads = (d.num_heads, d.num_kv_heads, d.embed_dim)
        #: what config.json says beyond shapes; the recipes check the built model against it
        self.model_settings = hf_model_settings(self.config, s.model_type, s.checkpoint_dir / "config.json")

    def load_checkpoint(self) -> dict[str, Any]:
        """Read the weights (and, when resuming, adapter + training state).

        Returns:
            ``{"model": sd}`` in tunekit names, plus ``"adapter"``, ``"optimizer"``,
            ``"lr_scheduler"``, ``"recipe_state"``... when resuming.
        """
        return _load(self._s, read_hf_model)

    def save_checkpoint(
        self, state: dict[str, Any], epoch: int, intermediate_checkpoint: bool = False, step: int | None = None,
        *, info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``state`` to ``output_dir/epoch_{epoch}/`` (``step_{step}/`` when step is given).

        Args:
            state: ``{"model": plain or merged sd (tunekit names), "adapter": sd, "adapter_config":
                LoRASpec-as-dict, "optimizer": ..., "lr_scheduler": ..., "recipe_state": {...}}``;
                every key other than model/adapter/adapter_config goes to ``state/recipe_state.pt``.
            epoch: epoch number (recorded; names the directory without step).
            intermediate_checkpoint: recorded in the COMPLETE marker.
            step: global step; names the directory ``step_{step}``.
            info: what the run was trained with (the recipe's fingerprint), stored as
                ``trained_with`` in ``checkpoint.json``.

        Returns:
            The completed checkpoint directory (``model/``, ``adapter/``, ``state/``,
            ``checkpoint.json``, ``COMPLETE``).
        """
        def write_model(mdir: Path, name: str) -> None:
            write_hf_weights(state["model"], mdir, self._s.model_type, self._heads, fmt=self.format,
                             max_shard_bytes=self.max_shard_bytes, name=name)

        return _save(self, state, epoch, step, info, marker_format=f"hf-{self.format}", fmt="hf",
                     intermediate=intermediate_checkpoint, write_model=write_model, aux=_HF_AUX)


# --- Meta ----------------------------------------------------------------------------------------
class FullModelMetaCheckpointer:
    """Reads and writes Meta-format checkpoints (``consolidated.*.pth`` + ``params.json``).

    Model-parallel inputs (``consolidated.00.pth`` ... ``.07.pth``, as Meta ships 13B and 70B)
    are merged on load. The output keeps the input's layout: as many ``consolidated.NN.pth``
    files as the input had, each weight split along the dim Meta's tensor-parallel layers use
    (the layout Meta's reference code and HF's ``convert_llama_weights_to_hf`` expect), with
    ``params.json`` and ``tokenizer.model`` copied. Other arguments as
    :class:`FullModelHFCheckpointer` (without ``max_shard_size``), plus:

    Args:
        model_parallel_size: number of ``consolidated.NN.pth`` files to write; None (default)
            keeps the input's count, 1 writes one merged file. It must divide the head counts,
            the model width and every split dimension.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        output_dir: str | Path,
        checkpoint_files: Sequence[str] | None = None,
        model_type: str = "LLAMA2",
        adapter_checkpoint: str | None = None,
        recipe_checkpoint: str | None = None,
        resume_from_checkpoint: bool = False,
        keep_last_n: int | None = None,
        model_parallel_size: int | None = None,
    ) -> None:
        s = _setup(checkpoint_dir, output_dir, checkpoint_files, model_type, adapter_checkpoint,
                   recipe_checkpoint, resume_from_checkpoint, _discover_meta)
        _adopt(self, s, resume_from_checkpoint, keep_last_n)
        self.params, d = meta_params_and_dims(s.checkpoint_dir, s.model_type)
        check_json_describes_weights(s.files, d, s.model_type, json_path=s.checkpoint_dir / "params.json",
                                     source=s.checkpoint_dir)
        self._heads = (d.num_heads, d.num_kv_heads, d.embed_dim)
        self.model_settings = meta_model_settings(self.params, s.model_type, s.checkpoint_dir / "params.json")
        self.model_parallel_size = check_model_parallel_size(
            len(s.files) if model_parallel_size is None else model_parallel_size, d,
            given=model_parallel_size is not None, source=s.checkpoint_dir / "params.json")

    def load_checkpoint(self) -> dict[str, Any]:
        """Read the weights (and, when resuming, adapter + training state); see the HF checkpointer."""
        return _load(self._s, read_meta_model)

    def save_checkpoint(
        self, state: dict[str, Any], epoch: int, intermediate_checkpoint: bool = False, step: int | None = None,
        *, info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``state`` to ``output_dir/epoch_{epoch}/`` (or ``step_{step}/``); see the HF checkpointer."""
        def write_model(mdir: Path, name: str) -> None:
            try:
                meta = self._s.model_type.tunekit_to_meta(state["model"])
            except ConversionError as err:
                raise CheckpointError(f"Cannot save {name}: {err}") from None
            write_meta_weights(meta, self.model_parallel_size, self._s.model_type, mdir, name)

        return _save(self, state, epoch, step, info, marker_format="meta", fmt="meta",
                     intermediate=intermediate_checkpoint, write_model=write_model, aux=_META_AUX)
