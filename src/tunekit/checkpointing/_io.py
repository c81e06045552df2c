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
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.config.resolvers import default_models_root

__all__ = [
    "COMPLETE_MARKER",
    "apply_umask",
    "atomic_checkpoint_dir",
    "current_umask",
    "pickle_globals",
    "unique_sibling",
    "download_hint",
    "is_complete",
    "load_pickle",
    "load_state_file",
    "own_storage",
    "run_checkpoint_of",
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
    """A sentence telling the user how to fetch the model into ``checkpoint_dir``.

    Inside a checkpoint tunekit saved (``RUN/epoch_N/...``) nothing can be downloaded: the
    sentence names the run's previous complete checkpoint instead.
    """

    own = run_checkpoint_of(Path(checkpoint_dir))
    if own is not None:
        return f"It belongs to the checkpoint {own.name} that tunekit saved in {own.parent}. {_own_run_fix(own)}"
    try:
        repo = checkpoint_dir.resolve().relative_to(Path(default_models_root()).resolve()).as_posix()
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
_CKPT_NAME_RE = re.compile(r"^(epoch|step)_(\d+)$")


def run_checkpoint_of(path: Path) -> Path | None:
    """The ``RUN/epoch_N`` / ``RUN/step_N`` directory tunekit wrote that holds ``path``, if any.

    A directory counts as tunekit's own when its name is ``epoch_N``/``step_N`` and it has the
    ``COMPLETE`` marker or ``checkpoint.json`` (both written only by tunekit's saves).
    """
    path = Path(path).absolute()
    for d in [path, *list(path.parents)[:3]]:
        if _CKPT_NAME_RE.match(d.name) and ((d / COMPLETE_MARKER).is_file() or (d / "checkpoint.json").is_file()):
            return d
    return None


def _saved_at(d: Path) -> int:
    try:
        return int(json.loads((d / COMPLETE_MARKER).read_text())["saved_at_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return (d / COMPLETE_MARKER).stat().st_mtime_ns
        except OSError:
            return 0


def _other_checkpoints(ckpt: Path) -> list[Path]:
    """The other complete checkpoints of ``ckpt``'s run, oldest first (by save time)."""
    found = []
    for d in ckpt.parent.iterdir() if ckpt.parent.is_dir() else []:
        if _CKPT_NAME_RE.match(d.name) and d.name != ckpt.name and d.is_dir() and is_complete(d):
            found.append((_saved_at(d), d.name, d))
    return [d for *_, d in sorted(found)]


def _detail(err: BaseException) -> str:
    text = str(err).strip()
    # torch's own advice (re-run with weights_only=False) must never reach the user: it would run
    # whatever code the file carries.
    lines = [ln for ln in text.splitlines() if ln.strip() and "weights_only" not in ln and "torch.load" not in ln]
    return lines[0].strip() if lines else "no detail"


def _not_a_checkpoint(path: Path) -> str | None:
    """What a file that is no checkpoint at all holds (another zip, an LFS pointer, a web page)."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                return f"a zip archive of other files ({', '.join(names[:4]) or 'empty'}), not a PyTorch checkpoint"
    except (OSError, zipfile.BadZipFile):
        return None
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (the repository was cloned without `git lfs pull`)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "a web page, not the weights (a download that saved an error or login page)"
    return None


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    what = f"({type(err).__name__}: {_detail(err)})"
    other = _not_a_checkpoint(path)
    if other is not None:
        return CheckpointError(
            f"Could not read checkpoint file {path}: it is {other}. Replace it with the model's real weight "
            f"file (e.g. `tunekit download <repo>`), or point the checkpoint directory at the one that holds it."
        )
    own = run_checkpoint_of(path)
    if own is None:
        return CheckpointError(
            f"Could not read checkpoint file {path}: it looks truncated or corrupt {what}. "
            f"An interrupted download is the usual cause; delete the file and download it again."
        )
    return CheckpointError(
        f"Could not read {path}: this file of the run checkpoint {own.name} that tunekit saved in "
        f"{own.parent} is truncated or corrupt {what}; a full disk or a copy that was cut short are "
        f"the usual causes, and only this run wrote it. {_own_run_fix(own)}"
    )


def _own_run_fix(own: Path) -> str:
    """What to use instead of the damaged run checkpoint ``own``."""
    others = _other_checkpoints(own)
    mine = _saved_at(own) if is_complete(own) else None
    before = [d for d in others if mine is None or _saved_at(d) <= mine] or others
    if before:
        listed = f" (complete checkpoints of this run: {', '.join(d.name for d in others)})" if len(others) > 1 else ""
        fix = (f"The previous complete checkpoint of this run is {before[-1]}" + listed
               + f"; use it instead (e.g. checkpointer.checkpoint_dir={before[-1]} or resume={before[-1]}).")
    else:
        fix = (f"This run ({own.parent}) has no other complete checkpoint, so start again from the "
               f"base model.")
    return fix


# Globals a plain state dict of tensors needs (what torch's weights_only unpickler allows).
_SAFE_GLOBAL_PREFIXES = ("torch._utils.", "torch.", "collections.OrderedDict", "_codecs.encode",
                         "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.slice",
                         "builtins.complex")
_SAFE_TORCH_DENY = ("torch.hub", "torch.load", "torch.save", "torch.serialization", "torch.jit",
                    "torch.package", "torch.ops", "torch._C._", "torch.utils.cpp_extension")


def _is_safe_global(name: str) -> bool:
    if name.startswith(_SAFE_TORCH_DENY):
        return False
    return name.startswith(_SAFE_GLOBAL_PREFIXES)


def _pickle_streams(path: Path) -> list[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]


def pickle_globals(path: Path) -> list[str] | None:
    """The classes/functions a pickle file would import or call, read without running it.

    Returns:
        The imported names (``module.name``), or None when the file is not a complete pickle
        (truncated or corrupt): then it cannot be told what it holds.
    """
    import io
    import pickletools

    try:
        streams = _pickle_streams(path)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None
    if not streams:
        return None
    found: list[str] = []
    legacy = not zipfile.is_zipfile(path)
    for data in streams:
        buf = io.BytesIO(data)
        # torch's legacy format is 5 pickles (magic, protocol, sys info, data, storage keys)
        # followed by raw storage bytes; a plain pickle.dump file is one pickle.
        for _ in range(5 if legacy else 1):
            if buf.tell() >= len(data):
                break
            # Only names are tracked: the last values pushed (strings, or None) and the memo, so
            # STACK_GLOBAL's module and name can be read back; nothing is built or called.
            pushed: list[str | None] = []
            memo: dict[int, str | None] = {}
            stopped = False
            try:
                for op, arg, _pos in pickletools.genops(buf):
                    name = op.name
                    if name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                        pushed.append(None)
                    elif name == "STACK_GLOBAL":
                        mod, attr = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                        found.append(f"{mod}.{attr}" if mod and attr else "<computed name>")
                        pushed.append(None)
                    elif name == "MEMOIZE":
                        memo[len(memo)] = pushed[-1] if pushed else None
                    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[int(arg)] = pushed[-1] if pushed else None
                    elif name in ("GET", "BINGET", "LONG_BINGET"):
                        pushed.append(memo.get(int(arg)))
                    elif "UNICODE" in name or name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
                        pushed.append(str(arg))
                    elif name not in ("PROTO", "FRAME", "STOP", "MARK"):
                        pushed.append(None)
                    stopped = name == "STOP"
            except Exception:  # noqa: BLE001 - pickletools raises ValueError and others on damage
                return None
            if not stopped:
                return None
    return found


def _code_error(path: Path, names: list[str]) -> CheckpointError:
    shown = ", ".join(dict.fromkeys(names[:6]))
    return CheckpointError(
        f"Refusing to load {path}: the file holds Python objects other than tensors ({shown}), and "
        f"unpickling them would run code from the file. tunekit will not run them. A checkpoint file "
        f"must be a plain state dict of tensors; use the .safetensors weights of this model, or "
        f"re-save the tensors alone (e.g. as safetensors) with the program that wrote the file, if "
        f"you trust it."
    )


def load_pickle(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, memory-mapped when the format allows.

    Raises:
        CheckpointFileNotFoundError: the file does not exist.
        CheckpointError: truncated/corrupt file, or a pickle with non-tensor objects (never run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileNotFoundError(f"Checkpoint file {path} does not exist.")
    # mmap needs the zip format (torch >= 1.6); legacy pickles load fully.
    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged archives
        names = pickle_globals(path)
        if names is not None:
            unsafe = [n for n in names if not _is_safe_global(n)]
            if unsafe or isinstance(err, pickle.UnpicklingError):
                raise _code_error(path, unsafe or ["pickle instructions beyond a plain state dict"]) from None
        raise _corrupt(path, err) from None


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
        where = [k + (f" (in {key_files[k]})" if k in key_files else "") for k in unexpected]
        parts.append(f"unexpected keys: {show(where)}")
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


def current_umask() -> int:
    """The process umask (read from /proc where possible, so nothing is changed even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain mkdir/open would have given.

    ``tempfile.mkdtemp``/``mkstemp`` (used by tunekit and by some writers) create 0700/0600
    whatever the umask; files a user saves must honour it (0755/0644 under umask 022).
    Executable bits of files are not added.
    """
    mask = current_umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def unique_sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path`` (``.<tag>-<name>-<random>``), not created."""
    return path.parent / f".{tag}-{path.name}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_checkpoint_dir(output_dir: Path, name: str, info: Mapping[str, Any]) -> Iterator[Path]:
    """Yield a temporary directory in ``output_dir``; on success mark it complete and rename it to ``name``.

    The marker file is written last (after every file is fsynced), then the directory is renamed
    into place, replacing an older one of the same name only after the new one is complete. On
    an exception the temporary directory is removed and nothing already saved is touched. Every
    directory and file gets the modes the user's umask gives (not mkdtemp's 0700).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=output_dir))
    try:
        yield tmp
        marker = tmp / COMPLETE_MARKER
        marker.write_text(json.dumps({**info, "saved_at_ns": time.time_ns()}, indent=2))
        apply_umask(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
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
