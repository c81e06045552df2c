"""Reading and writing weights in the HF and Meta formats (tunekit names in, the format's names out).

The format checkpointers (``_checkpointer.py``), ``tunekit convert`` and resume use these;
each validates the weights against the format's own JSON and names the file and field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tunekit.checkpointing._errors import CheckpointError, CheckpointFileNotFoundError
from tunekit.checkpointing._io import (
    download_hint,
    load_state_file,
    own_storage,
    plan_shards,
    save_shards,
    validate_state_dict,
)
from tunekit.checkpointing._settings import (
    check_supported_hf_config,
    check_supported_meta_params,
    describe_rope_scaling,
    rope_scaling_type,
)
from tunekit.models import ConversionError, ModelType


def _read_json(path: Path, ckpt: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointFileNotFoundError(
            f"{path} is missing: {'an' if what == 'HF' else 'a'} {what} checkpoint directory needs it. "
            f"{download_hint(ckpt)}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is truncated or corrupt. "
                              f"{download_hint(ckpt)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object of settings; "
                              f"the file is not a {what} config. {download_hint(ckpt)}")
    return data


def hf_model_settings(config: Mapping[str, Any], mt: ModelType, path: str | Path | None = None) -> dict[str, Any]:
    """What an HF ``config.json`` declares, for :func:`tunekit.checkpointing.check_model_matches`.

    Returns:
        ``{"path": the config.json, "format": "hf", "declared": {quantity: (field, value)},
        "norm_eps", "rope_base", "rope_scaling"}`` (the last three also at top level, as before).
    """
    kind = rope_scaling_type(config)
    eps = config.get("rms_norm_eps")
    rope = mt.rope_theta_of(config)
    declared: dict[str, tuple[str, Any]] = {}
    try:
        d = mt.hf_config_dims(config)
    except ConversionError:
        d = None
    if d is not None:
        declared.update({
            "num_layers": ("num_hidden_layers", d.num_layers),
            "num_heads": ("num_attention_heads", d.num_heads),
            "num_kv_heads": ("num_key_value_heads" if config.get("num_key_value_heads") else
                             "num_attention_heads (no num_key_value_heads)", d.num_kv_heads),
            "embed_dim": ("hidden_size", d.embed_dim),
            "intermediate_dim": ("intermediate_size", d.intermediate_dim),
            "vocab_size": ("vocab_size", d.vocab_size),
            "head_dim": ("head_dim" if d.declared_head_dim else "hidden_size / num_attention_heads", d.head_dim),
        })
    declared.update({
        "rope_base": ("rope_theta", rope),
        "norm_eps": ("rms_norm_eps", None if eps is None else float(eps)),
        "rope_scaling": ("rope_scaling", describe_rope_scaling(config)),
        "tie_word_embeddings": ("tie_word_embeddings", bool(config.get("tie_word_embeddings", False))),
    })
    return {"path": None if path is None else str(path), "format": "hf", "declared": declared,
            "builder": mt.builder,
            "norm_eps": None if eps is None else float(eps), "rope_base": rope, "rope_scaling": kind}


def meta_model_settings(params: Mapping[str, Any], mt: ModelType | None = None,
                        path: str | Path | None = None) -> dict[str, Any]:
    """The same for a Meta ``params.json`` (Llama 2's omit ``rope_theta``: 10000)."""
    eps = params.get("norm_eps")
    rope = float(params.get("rope_theta") or 10000.0)
    declared: dict[str, tuple[str, Any]] = {}
    d = None
    if mt is not None:
        try:
            d = mt.meta_params_dims(params)
        except ConversionError:
            d = None
    if d is not None:
        declared.update({
            "num_layers": ("n_layers", d.num_layers),
            "num_heads": ("n_heads", d.num_heads),
            "num_kv_heads": ("n_kv_heads" if params.get("n_kv_heads") else "n_heads (no n_kv_heads)",
                             d.num_kv_heads),
            "embed_dim": ("dim", d.embed_dim),
            "intermediate_dim": ("multiple_of/ffn_dim_multiplier (FFN width)", d.intermediate_dim),
            "vocab_size": ("vocab_size", d.vocab_size),
        })
    declared.update({
        "rope_base": ("rope_theta", rope),
        "norm_eps": ("norm_eps", None if eps is None else float(eps)),
        "rope_scaling": ("use_scaled_rope", "llama3" if params.get("use_scaled_rope") else None),
    })
    return {"path": None if path is None else str(path), "format": "meta", "declared": declared,
            "builder": None if mt is None else mt.builder,
            "norm_eps": None if eps is None else float(eps), "rope_base": rope,
            "rope_scaling": "llama3" if params.get("use_scaled_rope") else None}


def read_hf_config(checkpoint_dir: Path, mt: ModelType) -> dict[str, Any]:
    """``config.json`` of an HF model directory, refused when it declares what the model code lacks."""
    path = checkpoint_dir / "config.json"
    config = _read_json(path, checkpoint_dir, "HF")
    check_supported_hf_config(config, path, mt)
    return config


def read_meta_params(checkpoint_dir: Path, mt: ModelType) -> dict[str, Any]:
    """``params.json`` of a Meta model directory, refused when it declares what the model code lacks."""
    path = checkpoint_dir / "params.json"
    params = _read_json(path, checkpoint_dir, "Meta")
    check_supported_meta_params(params, path, mt)
    return params


def _dims_of(read: Any, data: dict[str, Any], path: Path) -> Any:
    try:
        return read(data)
    except ConversionError as err:
        raise CheckpointError(f"{path}: {err}; restore the file that came with these weights.") from None


def hf_config_and_dims(checkpoint_dir: Path, mt: ModelType) -> tuple[dict[str, Any], Any]:
    """``config.json`` (checked by :func:`read_hf_config`) and the model dimensions it declares."""
    config = read_hf_config(checkpoint_dir, mt)
    return config, _dims_of(mt.hf_config_dims, config, checkpoint_dir / "config.json")


def meta_params_and_dims(checkpoint_dir: Path, mt: ModelType) -> tuple[dict[str, Any], Any]:
    """``params.json`` (checked by :func:`read_meta_params`) and the model dimensions it declares."""
    params = read_meta_params(checkpoint_dir, mt)
    return params, _dims_of(mt.meta_params_dims, params, checkpoint_dir / "params.json")


# --- HF ------------------------------------------------------------------------------------------
def _discover_hf(ckpt: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = ckpt / index
        if p.is_file():
            data = _read_json(p, ckpt, "HF")
            if "weight_map" not in data:
                raise CheckpointError(f"{p} has no 'weight_map'; the index file is corrupt.")
            files = [ckpt / f for f in sorted(set(data["weight_map"].values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointFileNotFoundError(
                    f"{p} lists shard(s) {', '.join(missing)} that are not in {ckpt}: the download is "
                    f"incomplete. {download_hint(ckpt)}"
                )
            return files
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        files = sorted(ckpt.glob(pattern))
        if files:
            return files
    raise CheckpointFileNotFoundError(
        f"No HF weights in {ckpt}: expected model.safetensors.index.json, model*.safetensors, "
        f"pytorch_model.bin.index.json or pytorch_model*.bin. {download_hint(ckpt)} "
        f"(For Meta's consolidated.*.pth use checkpointer=meta.)"
    )


def _config_vs_weights(sd: Mapping[str, torch.Tensor], dims: Any, fields: Mapping[str, str]) -> list[str]:
    """Where the weights' own shapes contradict the sizes the JSON declares (field=value vs files)."""
    found: dict[str, Any] = {}
    layer_ids = {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()}
    if layer_ids:
        found["num_layers"] = max(layer_ids) + 1
    emb = sd.get("tok_embeddings.weight")
    if emb is not None and emb.dim() == 2:
        found["vocab_size"], found["embed_dim"] = int(emb.shape[0]), int(emb.shape[1])
    w1 = sd.get("layers.0.mlp.w1.weight")
    if w1 is not None:
        found["intermediate_dim"] = int(w1.shape[0])
    k = sd.get("layers.0.attn.k_proj.weight")
    explicit = getattr(dims, "declared_head_dim", None)
    if k is not None and getattr(dims, "num_heads", 0) and (explicit or dims.embed_dim % dims.num_heads == 0):
        head_dim = explicit or dims.embed_dim // dims.num_heads
        if "embed_dim" not in found or found["embed_dim"] == dims.embed_dim:
            found["num_kv_heads"] = int(k.shape[0]) // head_dim
    out = []
    for q, field_name in fields.items():
        want = getattr(dims, q, None)
        if want is not None and q in found and found[q] != want:
            out.append(f"{field_name}={want} but the weight files hold {found[q]}")
    return out


def _json_mismatch(clash: list[str], json_path: Path, source: Path) -> CheckpointError:
    return CheckpointError(
        f"{json_path} does not describe the weights beside it: it declares {'; '.join(clash)}. "
        f"Restore the {json_path.name} that came with these weights (download it again: "
        f"{download_hint(source).removeprefix('Download it with ').rstrip('.')}), or point "
        f"checkpointer.checkpoint_dir at the directory these settings belong to."
    )


def _validate_against_json(sd: dict[str, torch.Tensor], dims: Any, mt: ModelType, *, json_path: Path,
                           fields: Mapping[str, str], source: Path, key_files: dict[str, str]) -> None:
    try:
        validate_state_dict(mt.expected_shapes(dims), sd, source=str(source), key_files=key_files)
    except CheckpointError:
        clash = _config_vs_weights(sd, dims, fields)
        if not clash:
            raise
        raise _json_mismatch(clash, json_path, source) from None
    _check_finite(sd, source=source, key_files=key_files)


def _check_finite(sd: Mapping[str, torch.Tensor], *, source: Path, key_files: Mapping[str, str]) -> None:
    """Refuse weights holding NaN or inf: they train to a NaN loss and generate garbage, silently."""
    bad = [k for k, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not bad:
        return
    counts = ", ".join(f"{k} ({int((~torch.isfinite(sd[k])).sum())} values)" for k in bad[:5])
    more = f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""
    raise CheckpointError(
        f"{key_files.get(bad[0], source)}: the weights hold NaN or inf values in {counts}{more}. Such weights "
        f"give a NaN loss and garbage text; they come from a training run that diverged or a damaged file. "
        f"Use an earlier checkpoint of that run (checkpointer.checkpoint_dir=, checkpoint= or convert's "
        f"source), or download the model again (`tunekit download <repo>`)."
    )


class _Shape:
    """A tensor's shape read from a file's header, without its data."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(n) for n in shape)

    def dim(self) -> int:
        return len(self.shape)


def _header_shapes(files: Sequence[Path], mt: ModelType) -> dict[str, _Shape]:
    """``{tunekit key: shape}`` from the weight files' headers (safetensors; Meta .pth memory-mapped).

    Nothing is read beyond the headers; a file that cannot be read this way gives ``{}`` (the
    full read reports it with its own message).
    """
    out: dict[str, _Shape] = {}
    try:
        for f in files:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt", device="cpu") as h:
                    for key in h.keys():
                        name = mt.hf_to_tunekit_key(key)
                        if name is not None:
                            out[name] = _Shape(h.get_slice(key).get_shape())
            elif f.suffix == ".pth" and len(files) == 1:  # one Meta file: every shape whole
                sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
                out.update({k: _Shape(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)})
            else:
                return {}
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the full read
        return {}
    return out


def check_json_describes_weights(files: Sequence[Path], dims: Any, mt: ModelType, *, json_path: Path,
                                 source: Path) -> None:
    """Refuse a ``config.json`` / ``params.json`` whose sizes the weight files contradict.

    Run when the checkpointer is built, before any model exists, so the message blames the JSON
    file and its field (``num_hidden_layers=2 but the weight files hold 4``), not the model.
    """
    fields = _HF_FIELDS if json_path.name == "config.json" else _META_FIELDS
    clash = _config_vs_weights(_header_shapes(files, mt), dims, fields)
    if clash:
        raise _json_mismatch(clash, json_path, source)


_HF_FIELDS = {"num_layers": "num_hidden_layers", "embed_dim": "hidden_size", "vocab_size": "vocab_size",
              "intermediate_dim": "intermediate_size", "num_kv_heads": "num_key_value_heads"}
_META_FIELDS = {"num_layers": "n_layers", "embed_dim": "dim", "vocab_size": "vocab_size",
                "intermediate_dim": "multiple_of/ffn_dim_multiplier (FFN width)", "num_kv_heads": "n_kv_heads"}


def read_hf_model(
    checkpoint_dir: Path, files: Sequence[Path], mt: ModelType, key_files: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read HF weight files shard by shard into one tunekit-named, validated state dict."""
    config, dims = hf_config_and_dims(checkpoint_dir, mt)
    key_files = {} if key_files is None else key_files
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        shard = load_state_file(f)
        try:
            converted = mt.hf_to_tunekit(shard, dims.num_heads, dims.num_kv_heads, dims.embed_dim)
        except ConversionError as err:
            raise CheckpointError(f"In {f}: {err}") from None
        del shard
        for k in converted:
            if k in sd:
                raise CheckpointError(f"Key {k} appears in both {key_files[k]} and {f}.")
            key_files[k] = str(f)
        sd.update(converted)
        del converted
    if config.get("tie_word_embeddings") and "tok_embeddings.weight" in sd and "output.weight" in sd:
        # A tied model has no output weight of its own (TiedLinear); a stored copy must be the embedding.
        if (sd["output.weight"].shape == sd["tok_embeddings.weight"].shape
                and torch.equal(sd["output.weight"], sd["tok_embeddings.weight"])):
            del sd["output.weight"]
        else:
            raise CheckpointError(
                f"{checkpoint_dir / 'config.json'} declares tie_word_embeddings=true, but "
                f"{key_files.get('output.weight', checkpoint_dir)} holds an lm_head.weight that differs from "
                f"model.embed_tokens.weight: transformers would drop it and run other weights. Set "
                f"tie_word_embeddings to false in that config.json if the files are right, or restore the "
                f"config.json that came with these weights."
            )
    _validate_against_json(sd, dims, mt, json_path=checkpoint_dir / "config.json", fields=_HF_FIELDS,
                           source=checkpoint_dir, key_files=key_files)
    return sd


def write_hf_weights(
    model: Mapping[str, torch.Tensor], out_dir: Path, mt: ModelType, heads: tuple[int, int, int], *,
    fmt: str, max_shard_bytes: int, name: str,
) -> list[str]:
    """Write a tunekit state dict as HF shards (+ index) into ``out_dir``, one shard at a time.

    Args:
        heads: ``(num_heads, num_kv_heads, embed_dim)`` for the q/k RoPE permutation.
        fmt: ``"safetensors"`` or ``"bin"``.
        name: what is being saved, for error messages.
    """
    groups = plan_shards(model, max_shard_bytes)

    def converted():
        for keys in groups:
            try:
                yield mt.tunekit_to_hf({k: model[k] for k in keys}, *heads)
            except ConversionError as err:
                raise CheckpointError(f"Cannot save {name}: {err}") from None

    return save_shards(converted(), len(groups), out_dir, fmt=fmt)


# --- Meta ----------------------------------------------------------------------------------------
def _discover_meta(ckpt: Path) -> list[Path]:
    files = sorted(ckpt.glob("consolidated.*.pth"))
    if files:
        return files
    raise CheckpointFileNotFoundError(
        f"No Meta weights in {ckpt}: expected consolidated.00.pth (and .01, ... for model-parallel "
        f"checkpoints) beside params.json. {download_hint(ckpt)} (For HF-format weights use checkpointer=hf.)"
    )


def _merge_model_parallel(files: Sequence[Path], mt: ModelType) -> dict[str, torch.Tensor]:
    # Meta's 13B/70B files are tensor-parallel slices; each weight concatenates along the dim it
    # was split on. Parts are memory-mapped, so only the merged tensors take new memory.
    parts = [load_state_file(f) for f in files]
    keys = [k for k in parts[0] if k != "rope.freqs"]
    for f, p in zip(files[1:], parts[1:]):
        diff = set(keys) ^ {k for k in p if k != "rope.freqs"}
        if diff:
            raise CheckpointError(
                f"Model-parallel files {files[0].name} and {f.name} hold different keys "
                f"({sorted(diff)[:10]}); are they from the same checkpoint?"
            )
    merged: dict[str, torch.Tensor] = {}
    for k in keys:
        try:
            dim = mt.meta_merge_dim(k)
        except ConversionError as err:
            raise CheckpointError(f"In {files[0]}: {err}") from None
        tensors = [p.pop(k) for p in parts]
        merged[k] = tensors[0] if dim is None else torch.cat(tensors, dim=dim)
        del tensors
    return merged


def check_model_parallel_size(n: Any, dims: Any, *, given: bool, source: Path) -> int:
    what = "model_parallel_size" if given else "the input's model-parallel file count"
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CheckpointError(f"FullModelMetaCheckpointer: model_parallel_size must be a positive "
                              f"integer or null (the input's file count), got {n!r}")
    sizes = {"n_heads": dims.num_heads, "n_kv_heads": dims.num_kv_heads, "dim": dims.embed_dim}
    bad = [f"{k}={v}" for k, v in sizes.items() if v % n]
    if bad:
        raise CheckpointError(
            f"FullModelMetaCheckpointer: {what} ({n}) must divide {', '.join(bad)} from {source}: "
            f"each model-parallel file holds whole heads. Set checkpointer.model_parallel_size to "
            f"a divisor (1 writes one merged consolidated.00.pth)."
        )
    return n


def write_meta_weights(
    meta: Mapping[str, torch.Tensor], n: int, mt: ModelType, out_dir: Path, name: str
) -> None:
    """Write ``meta`` as ``consolidated.00.pth`` .. ``consolidated.{n-1:02d}.pth``.

    Each weight is cut into ``n`` equal slices along the dim it is split on in Meta's
    tensor-parallel model (replicated weights go to every file), the inverse of
    :func:`_merge_model_parallel`. One file's slices are copied at a time, so at most ``1/n``
    of the model is held on top of ``meta``.
    """
    dims: dict[str, int | None] = {}
    uneven = []
    for k, v in meta.items():
        try:
            dims[k] = None if n == 1 else mt.meta_merge_dim(k)
        except ConversionError as err:
            raise CheckpointError(f"Cannot save {name}: {err}") from None
        if dims[k] is not None and v.shape[dims[k]] % n:
            uneven.append(f"{k} (dim {dims[k]} = {v.shape[dims[k]]})")
    if uneven:
        raise CheckpointError(
            f"Cannot save {name} as {n} model-parallel files: {n} does not divide "
            f"{', '.join(uneven[:5])}{' ...' if len(uneven) > 5 else ''}. Set "
            f"checkpointer.model_parallel_size to a divisor (1 writes one merged file)."
        )
    for i in range(n):
        part = {k: own_storage(v if dims[k] is None else v.chunk(n, dim=dims[k])[i]) for k, v in meta.items()}
        torch.save(part, out_dir / f"consolidated.{i:02d}.pth")
        del part


def read_meta_model(
    checkpoint_dir: Path, files: Sequence[Path], mt: ModelType, key_files: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read Meta ``consolidated.*.pth`` (merging model-parallel parts) into a validated tunekit sd."""
    _, dims = meta_params_and_dims(checkpoint_dir, mt)
    raw = load_state_file(files[0]) if len(files) == 1 else _merge_model_parallel(files, mt)
    source = str(files[0]) if len(files) == 1 else f"{files[0]} .. {files[-1].name}"
    try:
        sd = mt.meta_to_tunekit(raw)
    except ConversionError as err:
        raise CheckpointError(f"In {source}: {err}") from None
    del raw
    key_files = {} if key_files is None else key_files
    key_files.update({k: source for k in sd})
    if dims.vocab_size is None and "tok_embeddings.weight" in sd:  # Meta writes vocab_size: -1
        dims = type(dims)(**{**dims.__dict__, "vocab_size": sd["tok_embeddings.weight"].shape[0]})
    _validate_against_json(sd, dims, mt, json_path=checkpoint_dir / "params.json", fields=_META_FIELDS,
                           source=checkpoint_dir, key_files=key_files)
    return sd


