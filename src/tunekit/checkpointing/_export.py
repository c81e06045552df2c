"""Finding weights in a directory, and converting a checkpoint to the other format.

``convert_checkpoint`` turns a Meta checkpoint into an HF one (``config.json``, sharded
safetensors, tokenizer files) or back, or re-writes one in its own format with another dtype,
shard size or model-parallel split. It is what ``tunekit convert`` runs. Weights pass through
tunekit names, so every conversion is the same pair of tested key tables the checkpointers use;
only the config file (``config.json`` <-> ``params.json``) is written anew.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tunekit.checkpointing._auto import meta_rope_scaling, resolve_model_type
from tunekit.checkpointing._checkpointer import (
    _HF_AUX,
    _META_AUX,
    _copy_aux,
    _discover_hf,
    _discover_meta,
    check_model_parallel_size,
    read_hf_model,
    read_meta_model,
    write_hf_weights,
    write_meta_weights,
)
from tunekit.checkpointing._errors import CheckpointError
from tunekit.checkpointing._formats import hf_config_and_dims, meta_params_and_dims
from tunekit.checkpointing._io import COMPLETE_MARKER, apply_umask, parse_size, unique_sibling
from tunekit.checkpointing._layout import INFO_FILE, model_dir
from tunekit.checkpointing._settings import _rope_scaling_dict, rope_scaling_type
from tunekit.models import ConversionError, ModelType, meta_llama3_scaling

__all__ = ["CONVERT_MARKER", "FORMATS", "checkpoint_format", "convert_checkpoint", "find_weights_dir"]

#: Written into every ``tunekit convert`` output (HF and Meta tools ignore dotfiles): what it was
#: converted from and which files it wrote. Only a directory carrying it may be replaced (--force).
CONVERT_MARKER = ".tunekit-convert.json"

FORMATS = ("hf", "meta")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Files both formats share (SentencePiece model, license) when converting between them.
_SHARED_AUX = ("tokenizer.model", "LICENSE*", "USE_POLICY.md", "README.md")
# Llama 2's context length; Meta's params.json does not record it.
DEFAULT_MAX_POSITION_EMBEDDINGS = 4096


def checkpoint_format(d: Path) -> str | None:
    """``"hf"`` (config.json + model*.safetensors / pytorch_model*.bin), ``"meta"``
    (params.json + consolidated.*.pth) or None for what ``d`` holds. A checkpoint directory
    (``epoch_N/``) is judged by its ``model/`` directory."""
    return _own_format(Path(d)) or _own_format(model_dir(Path(d)))


def _own_format(d: Path) -> str | None:
    if (d / "config.json").is_file() and (any(d.glob("model*.safetensors")) or any(d.glob("pytorch_model*.bin"))):
        return "hf"
    if (d / "params.json").is_file() and any(d.glob("consolidated.*.pth")):
        return "meta"
    return None


def find_weights_dir(path: str | Path, *, what: str = "checkpoint") -> Path:
    """The directory holding model weights for ``path``.

    ``path`` may itself hold HF or Meta weights (see :func:`checkpoint_format`), be a checkpoint
    directory (its ``model/``; the flat layout of older checkpoints too), or be a run directory:
    then its newest complete ``epoch_*`` / ``step_*`` checkpoint is used.

    Args:
        what: the setting ``path`` came from, named in the error.

    Raises:
        CheckpointError: no weights found.
    """
    from tunekit.checkpointing._resume import list_checkpoints

    d = Path(path).expanduser()
    if _own_format(d):
        return d
    if checkpoint_format(d):
        return model_dir(d)
    found = list_checkpoints(d) if d.is_dir() else []
    if found:
        return model_dir(found[-1])
    if not d.exists():
        raise CheckpointError(f"{what}={str(d)!r} does not exist. Give an HF or Meta model directory, "
                              f"a checkpoint directory (epoch_N/, step_N/) or a run directory.")
    raise CheckpointError(
        f"{what}={str(d)!r} holds no model weights: expected an HF directory (config.json + "
        "model*.safetensors), a Meta directory (params.json + consolidated.00.pth), a checkpoint "
        "directory (epoch_N/ with model/), or a run directory with complete epoch_*/step_* checkpoints."
    )


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(_DTYPES)} (or omitted to keep the "
                              f"checkpoint's), got {name!r}")
    return _DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # "bfloat16": the name config.json uses


def _hf_to_meta_settings(config: dict[str, Any], mt: ModelType, source: Path) -> dict[str, Any] | None:
    """What Meta's params.json cannot say is refused rather than written as a model that differs;
    returns the ``llama3`` RoPE scaling to write (``use_scaled_rope``), None for plain RoPE."""
    problems = []
    kind = rope_scaling_type(config)
    scaling = None
    if kind == "llama3":
        scaling = dict(_rope_scaling_dict(config) or {})
        try:
            meta_llama3_scaling(scaling)
        except ConversionError as err:
            problems.append(str(err).split(" cannot", 1)[0])
    elif kind is not None:
        problems.append(f"RoPE scaling {kind!r}")
    if any(w.meta is None for w in mt.weights):
        problems.append(f"the {mt.display_name} layout (it has tensors without a Meta name)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"{key}=true")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config['hidden_act']!r}")
    if problems:
        raise CheckpointError(f"{source / 'config.json'} uses {', '.join(problems)}, which Meta's "
                              "params.json cannot express; this checkpoint can only stay in HF format.")
    return scaling


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the character a byte-level BPE vocabulary writes -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def tiktoken_ranks_from_tokenizer_json(path: Path) -> str | None:
    """Meta's ``tokenizer.model`` (``<base64 bytes> <rank>`` lines) for a byte-level BPE
    ``tokenizer.json`` whose ordinary tokens hold ids ``0..n-1`` and special tokens the ids after
    them (Llama 3's layout: the ids, hence the embedding rows, stay the same); None otherwise."""
    import base64

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
        special = {a["content"] for a in data.get("added_tokens", []) if a.get("special")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        return None
    ordinary = sorted((i, t) for t, i in vocab.items() if t not in special)
    if [i for i, _ in ordinary] != list(range(len(ordinary))):
        return None
    if any(a["id"] < len(ordinary) for a in data.get("added_tokens", [])):
        return None
    decode = _byte_decoder()
    try:
        lines = [base64.b64encode(bytes(decode[c] for c in t)).decode() + f" {i}" for i, t in ordinary]
    except KeyError:  # not GPT-2's byte alphabet
        return None
    return "\n".join(lines) + "\n"


def _meta_tokenizer_model(src: Path, tmp: Path) -> None:
    """Give a Meta output of an HF source its ``tokenizer.model``: the source's own, the tiktoken
    file an HF download of Llama 3 keeps in ``original/``, or one written from a Llama 3 layout
    ``tokenizer.json`` (same ids)."""
    if (tmp / "tokenizer.model").exists():
        return
    if (src / "original" / "tokenizer.model").is_file():
        shutil.copy2(src / "original" / "tokenizer.model", tmp / "tokenizer.model")
    elif (src / "tokenizer.json").is_file():
        ranks = tiktoken_ranks_from_tokenizer_json(src / "tokenizer.json")
        if ranks is not None:
            (tmp / "tokenizer.model").write_text(ranks)


def _run_like(d: Path) -> str | None:
    """Why ``d`` looks like tunekit training output (never replaced by convert), or None."""
    if (d / COMPLETE_MARKER).exists() or (d / INFO_FILE).exists():
        return "it is a training checkpoint (it has COMPLETE/checkpoint.json)"
    ckpts = sorted(p.name for p in d.glob("*") if p.is_dir() and (p.name.startswith(("epoch_", "step_"))))
    if ckpts:
        return f"it is a run directory (it holds {', '.join(ckpts[:4])})"
    return None


def _check_destination(out: Path, sources: list[Path], force: bool) -> bool:
    """Refuse a destination that would overwrite or delete what convert did not write.

    Returns:
        Whether ``out`` holds a previous convert output to be replaced.
    """
    real = out.resolve()
    for src in sources:
        s = src.resolve()
        if real == s:
            suggestion = out.parent / (out.name + "-converted")
            raise CheckpointError(f"dest {out} is the source {src}: convert never writes over what it reads. "
                                  f"Choose a new directory for the converted checkpoint, e.g. {suggestion}.")
        if s.is_relative_to(real):
            raise CheckpointError(f"dest {out} contains the source {src}: replacing it would delete the "
                                  f"checkpoint being read. Choose a directory outside {out} (e.g. beside it).")
        if real.is_relative_to(s):
            raise CheckpointError(f"dest {out} is inside the source {src}: the output would mix with the "
                                  f"checkpoint being read. Choose a directory outside {src}.")
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_symlink() or not out.is_dir():
        what = "a symbolic link" if out.is_symlink() else "a file, not a directory"
        raise CheckpointError(f"dest {out} exists and is {what}; convert will not replace it. "
                              f"Choose a new directory.")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    marker = out / CONVERT_MARKER
    why = _run_like(out)
    if why is not None or not marker.is_file():
        raise CheckpointError(
            f"dest {out} exists and is not empty ({why or 'it was not written by tunekit convert'}; "
            f"it holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}). convert only writes "
            f"a new directory or replaces its own earlier output (with --force), and never deletes files "
            f"it did not create. Choose a new directory."
        )
    try:
        record = json.loads(marker.read_text())
        written = set(record["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"dest {out}: its {CONVERT_MARKER} is unreadable, so convert cannot tell which "
                              f"files it wrote there; it will not replace the directory. Choose a new "
                              f"directory.") from None
    foreign = [e for e in entries if e != CONVERT_MARKER and e not in written]
    foreign += [e for e in entries if e in written and (out / e).is_dir()]
    if foreign:
        raise CheckpointError(
            f"dest {out} is an earlier tunekit convert output, but it also holds {', '.join(foreign[:5])}, "
            f"which convert did not write; it will not delete them. Move them away or choose a new directory."
        )
    if not force:
        raise CheckpointError(f"dest {out} holds an earlier tunekit convert output (from "
                              f"{record.get('source', '?')}); pass --force to replace it, or choose a new "
                              f"directory.")
    return True


@contextmanager
def _atomic_output(out: Path, replace: bool) -> Iterator[Path]:
    """A temporary directory beside ``out``, swapped in for it once everything is written.

    A failure (or an interrupt) removes only the temporary directory: an earlier output stays
    as it was. Modes follow the umask.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-convert-{out.name}-", dir=out.parent))
    try:
        yield tmp
        apply_umask(tmp)
        for f in tmp.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        old = None
        if out.is_dir() and any(out.iterdir()):
            if not replace:  # appeared while converting: leave it alone
                raise CheckpointError(f"dest {out} was created by something else while converting; "
                                      f"nothing was replaced. Choose a new directory.")
            old = unique_sibling(out, "old")
            out.rename(old)
        elif out.is_dir():
            out.rmdir()  # an empty directory (e.g. made by the user for the output)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_checkpoint(
    source: str | Path,
    dest: str | Path,
    *,
    to: str,
    model_type: str = "auto",
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    model_parallel_size: int | None = None,
    max_position_embeddings: int | None = None,
    force: bool = False,
) -> Path:
    """Write the weights under ``source`` into ``dest`` in format ``to`` (``"hf"`` or ``"meta"``).

    Args:
        source: an HF or Meta directory, or a run directory (its newest complete checkpoint).
        dest: the new directory. It may exist only empty, or as an earlier output of this
            function (marked by :data:`CONVERT_MARKER`) with ``force``: it is then replaced once
            the new output is complete. It may not be, contain or lie inside the source.
        dtype: ``fp32`` / ``bf16`` / ``fp16`` to cast to; None keeps the checkpoint's.
        max_shard_size: largest HF output shard (HF output only).
        model_parallel_size: ``consolidated.NN.pth`` files to write (Meta output only); None
            keeps a Meta input's count, 1 for an HF input.
        max_position_embeddings: written to ``config.json`` (HF output from Meta only: Meta does
            not record it); None gives Llama 2's 4096.

    Returns:
        ``dest``. It holds the weights, the config file of its format, the tokenizer files and
        :data:`CONVERT_MARKER`; it is written under a temporary name beside ``dest`` and renamed
        into place.

    Raises:
        CheckpointError: a bad argument, a source without weights, or weights the target format
            cannot express (each message names the file or setting).
    """
    if to not in FORMATS:
        raise CheckpointError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    cast = _dtype(dtype)
    max_shard_bytes = parse_size(max_shard_size)
    if to == "hf" and model_parallel_size is not None:
        raise CheckpointError("model_parallel_size applies to Meta output only (--to meta)")
    src = find_weights_dir(source, what="source")
    fmt = checkpoint_format(src)
    mt = resolve_model_type(model_type, src)  # "auto": the family src's config.json / params.json declares
    if fmt == "meta" and to == "meta" and max_position_embeddings is not None:
        raise CheckpointError("max_position_embeddings applies to HF output only (--to hf)")
    if fmt == "hf" and max_position_embeddings is not None:
        raise CheckpointError("max_position_embeddings comes from the HF source's config.json; "
                              "it is only set when converting from Meta")
    out = Path(dest).expanduser().absolute()
    given = Path(source).expanduser()
    replace = _check_destination(out, [given, src, *([src.parent] if src.name == "model" else [])], force)

    # ---- read (validated against the source's own config) and describe the model
    if fmt == "hf":
        files = _discover_hf(src)
        config, dims = hf_config_and_dims(src, mt)
        norm_eps, rope_theta = float(config.get("rms_norm_eps", 1e-5)), mt.rope_theta_of(config)
        scaling = _hf_to_meta_settings(config, mt, src) if to == "meta" else None
        sd = read_hf_model(src, files, mt)
    else:
        files = _discover_meta(src)
        params, dims = meta_params_and_dims(src, mt)
        # use_scaled_rope: the factors Meta's code applies (rope_scaling_factor / rope_high_freq_factor
        # when stated; a config.json of the same download beside original/ wins)
        scaling = meta_rope_scaling(params, src / "params.json")
        norm_eps, rope_theta = float(params.get("norm_eps", 1e-5)), float(params.get("rope_theta", 10000.0))
        sd = read_meta_model(src, files, mt)
    if dims.vocab_size is None:
        dims = type(dims)(**{**dims.__dict__, "vocab_size": sd["tok_embeddings.weight"].shape[0]})
    if cast is not None:
        sd = {k: v.to(cast) for k, v in sd.items()}
    heads = (dims.num_heads, dims.num_kv_heads, dims.embed_dim)
    mp = None
    if to == "meta":
        mp = check_model_parallel_size(
            (len(files) if fmt == "meta" else 1) if model_parallel_size is None else model_parallel_size,
            dims, given=model_parallel_size is not None, source=src)

    # ---- write
    try:
        with _atomic_output(out, replace) as tmp:
            if to == "hf":
                weight_fmt = "bin" if fmt == "hf" and all(f.suffix == ".bin" for f in files) else "safetensors"
                write_hf_weights(sd, tmp, mt, heads, fmt=weight_fmt, max_shard_bytes=max_shard_bytes,
                                 name=out.name)
                if fmt == "hf":
                    _copy_aux(src, tmp, _HF_AUX)
                    if cast is not None:  # transformers 5 writes "dtype", older ones "torch_dtype"
                        config = json.loads((tmp / "config.json").read_text())
                        config["dtype" if "dtype" in config else "torch_dtype"] = _dtype_name(cast)
                        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
                else:
                    dtype_out = next(iter(sd.values())).dtype
                    n_pos = (max_position_embeddings or params.get("max_seq_len")
                             or (mt.max_position_embeddings if scaling else DEFAULT_MAX_POSITION_EMBEDDINGS))
                    config = mt.hf_config(dims, norm_eps=norm_eps, rope_theta=rope_theta,
                                          max_position_embeddings=n_pos, dtype=dtype_out, rope_scaling=scaling)
                    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
                    (tmp / "generation_config.json").write_text(json.dumps(
                        {"bos_token_id": config.get("bos_token_id", 1), "eos_token_id": config.get("eos_token_id", 2),
                         "max_length": n_pos}, indent=2) + "\n")
                    _copy_aux(src, tmp, _SHARED_AUX)
                    if (tmp / "tokenizer.model").is_file():
                        (tmp / "tokenizer_config.json").write_text(
                            json.dumps(mt.hf_tokenizer_config(n_pos), indent=2) + "\n")
            else:
                meta = mt.tunekit_to_meta(sd)
                write_meta_weights(meta, mp, mt, tmp, out.name)
                del meta
                if fmt == "meta":
                    _copy_aux(src, tmp, _META_AUX)
                else:
                    params = mt.meta_params(dims, norm_eps=norm_eps, rope_theta=rope_theta, rope_scaling=scaling)
                    (tmp / "params.json").write_text(json.dumps(params, indent=2) + "\n")
                    _copy_aux(src, tmp, _SHARED_AUX)
                    _meta_tokenizer_model(src, tmp)
            record = {"written_by": "tunekit convert", "source": str(src), "source_format": fmt, "format": to,
                      "dtype": dtype, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "files": sorted(f.name for f in tmp.iterdir())}
            (tmp / CONVERT_MARKER).write_text(json.dumps(record, indent=2) + "\n")
    except ConversionError as err:
        raise CheckpointError(f"Cannot convert {src}: {err}") from None
    return out
