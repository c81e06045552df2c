"""Safe checkpoint file I/O: reading shards, writing shards, atomic checkpoint directories."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError

__all__ = [
    "COMPLETE_MARKER",
    "atomic_checkpoint_dir",
    "download_hint",
    "is_complete",
    "load_pickle",
    "load_state_file",
    "own_storage",
    "parse_size",
    "plan_shards",
    "save_shards",
    "validate_state_dict",
]

COMPLETE_MARKER = "COMPLETE"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def download_hint(checkpoint_dir: Path) -> str:
    """A sentence telling the user how to fetch the model into ``checkpoint_dir``."""
    from tunekit.cli.download import default_models_root  # torch-free helper

    try:
        repo = checkpoint_dir.resolve().relative_to(default_models_root().resolve()).as_posix()
    except ValueError:
        repo = ""
    if repo.count("/") == 1:
        return f"Download it with `tunekit download {repo}`."
    return f"Download it with `tunekit download <repo_id> --output-dir {checkpoint_dir}`."


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` / ``500MiB`` / ``1000000`` (GB = 10**9, as huggingface_hub)."""
    if isinstance(size, int):
        return size
    m = _SIZE_RE.match(size)
    if m is None or (m.group(2) or "").upper() not in _UNITS:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB', '500MiB' or 1000000")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


# --- reading ---------------------------------------------------------------------------------
def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Could not read checkpoint file {path}: it looks truncated or corrupt "
        f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}). "
        f"An interrupted download is the usual cause; delete the file and download it again."
    )


def load_pickle(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, memory-mapped when the format allows.

    Raises:
        CheckpointFileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, or a pickle with non-tensor objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileNotFoundError(f"Checkpoint file {path} does not exist.")
    # mmap needs the zip format (torch >= 1.6); legacy pickles load fully.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(err), re.DOTALL)
        detail = " ".join(m.group(1).split()) if m else ""
        if "Unsupported global" in detail or (mmap and "Unsupported operand" in detail):
            raise CheckpointError(
                f"Refusing to load {path}: it contains Python objects or pickle features beyond tensors "
                f"and plain containers ({detail.split('. ')[0]}), and tunekit only unpickles with "
                f"weights_only=True for safety. Re-save it as a plain state dict (or safetensors)."
            ) from err
        raise _corrupt(path, RuntimeError(detail or str(err))) from err
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged archives
        raise _corrupt(path, err) from err


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read one weight file (``.safetensors``, ``.bin``, ``.pth``, ``.pt``) into a flat dict.

    Raises:
        CheckpointFileNotFoundError, CheckpointError: with the file's path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileNotFoundError(f"Checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            out: dict[str, torch.Tensor] = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    out[key] = f.get_tensor(key)
            return out
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise _corrupt(path, err) from err
    obj = load_pickle(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"Checkpoint file {path} holds a {type(obj).__name__}, not a state dict.")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"Checkpoint file {path} is not a flat state dict: key(s) {bad[:10]} are not tensors "
            f"(a training-state file passed as a weights file?)."
        )
    return dict(obj)


def validate_state_dict(
    expected: Mapping[str, Sequence[int | None]],
    sd: Mapping[str, torch.Tensor],
    *,
    source: str,
    key_files: Mapping[str, str] | None = None,
) -> None:
    """Check that ``sd`` has exactly the ``expected`` keys and shapes; report every problem at once.

    Args:
        expected: key -> shape (None entries are not checked).
        sd: the loaded state dict.
        source: the checkpoint (directory or file) named in the message.
        key_files: key -> file it came from, to name the file of each bad key.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches.
    """
    key_files = key_files or {}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = []
    for k, shape in expected.items():
        if k in sd:
            got = tuple(sd[k].shape)
            if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
                where = f" in {key_files[k]}" if k in key_files else ""
                want = tuple("?" if e is None else e for e in shape)
                shapes.append(f"{k}{where}: checkpoint {got}, model {want}")
    if not (missing or unexpected or shapes):
        return

    def show(items: list[str]) -> str:
        return ", ".join(items[:15]) + (f", ... ({len(items)} in all)" if len(items) > 15 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show([k + (f' (in {key_files[k]})' if k in key_files else '') for k in unexpected])}")
    if shapes:
        parts.append(f"shape mismatches: {show(shapes)}")
    raise CheckpointError(
        f"The checkpoint {source} does not match the model: " + "; ".join(parts) + ". "
        "Check that model (sizes) and checkpointer.model_type match this checkpoint, and that "
        "checkpoint_files lists every shard."
    )


# --- writing ---------------------------------------------------------------------------------
def plan_shards(sd: Mapping[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Split keys, in order, into groups of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, t in sd.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def own_storage(t: torch.Tensor) -> torch.Tensor:
    # torch.save writes whole storages; a view of a bigger buffer (mmap, fused weights) must be
    # copied or the file balloons. safetensors needs contiguous tensors.
    t = t.detach()
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


def save_shards(
    shards: Iterator[dict[str, torch.Tensor]],
    num_shards: int,
    out_dir: Path,
    *,
    fmt: str,
) -> list[str]:
    """Write converted shards as HF files plus the index JSON; returns the file names.

    Args:
        shards: one dict per shard, produced lazily (so only one converted shard is alive).
        num_shards: how many ``shards`` yields.
        out_dir: directory to write into.
        fmt: ``"safetensors"`` or ``"bin"``.
    """
    weight_map: dict[str, str] = {}
    total = 0
    names = []
    for i, shard in enumerate(shards, start=1):
        if fmt == "safetensors":
            name = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
            # Tied/shared tensors are refused by safetensors: give each key its own buffer.
            seen: set[int] = set()
            clean = {}
            for k, t in shard.items():
                t = own_storage(t)
                if t.untyped_storage().data_ptr() in seen:
                    t = t.clone()
                seen.add(t.untyped_storage().data_ptr())
                clean[k] = t
            save_file(clean, str(out_dir / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{i:05d}-of-{num_shards:05d}.bin"
            torch.save({k: own_storage(t) for k, t in shard.items()}, out_dir / name)
        for k, t in shard.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
        names.append(name)
        del shard
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (out_dir / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names + [index]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a checkpoint directory whose save finished (has the marker)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


@contextmanager
def atomic_checkpoint_dir(output_dir: Path, name: str, info: Mapping[str, Any]) -> Iterator[Path]:
    """Yield a temporary directory in ``output_dir``; on success mark it complete and rename it to ``name``.

    The marker file is written last (after every file is fsynced), then the directory is renamed
    into place, replacing an older one of the same name only after the new one is complete. On
    an exception the temporary directory is removed and nothing already saved is touched.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=output_dir))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        marker = tmp / COMPLETE_MARKER
        marker.write_text(json.dumps({**info, "saved_at_ns": time.time_ns()}, indent=2))
        _fsync_path(marker)
        _fsync_path(tmp)
        final = output_dir / name
        old = None
        if final.exists():
            old = output_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        _fsync_path(output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
