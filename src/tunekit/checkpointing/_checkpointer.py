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
from tunekit.checkpointing._io import (
    COMPLETE_MARKER,
    atomic_checkpoint_dir,
    download_hint,
    is_complete,
    load_pickle,
    load_state_file,
    own_storage,
    parse_size,
    plan_shards,
    save_shards,
    validate_state_dict,
)
from tunekit.checkpointing._layout import INFO_FILE, MODEL_SUBDIR, PEFT_SUBDIR, STATE_SUBDIR, model_dir, state_dir
from tunekit.checkpointing._settings import check_supported_hf_config, check_supported_meta_params, rope_scaling_type
from tunekit.models import ConversionError, ModelType, get_model_type

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
    try:
        mt = get_model_type(model_type)
    except ValueError as err:
        raise CheckpointError(f"checkpointer.model_type: {err}") from None
    given = Path(checkpoint_dir).expanduser()
    out = Path(output_dir).expanduser()
    if not given.is_dir():
        raise CheckpointFileNotFoundError(
            f"checkpointer.checkpoint_dir {given} does not exist or is not a directory. {download_hint(given)}"
        )
    ckpt, saved = resolve_checkpoint_dir(given)
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
        })
    declared.update({
        "rope_base": ("rope_theta", rope),
        "norm_eps": ("rms_norm_eps", None if eps is None else float(eps)),
        "rope_scaling": ("rope_scaling", kind),
        "tie_word_embeddings": ("tie_word_embeddings", bool(config.get("tie_word_embeddings", False))),
    })
    return {"path": None if path is None else str(path), "format": "hf", "declared": declared,
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
    if k is not None and getattr(dims, "num_heads", 0) and dims.embed_dim % dims.num_heads == 0:
        head_dim = dims.embed_dim // dims.num_heads
        if "embed_dim" not in found or found["embed_dim"] == dims.embed_dim:
            found["num_kv_heads"] = int(k.shape[0]) // head_dim
    out = []
    for q, field_name in fields.items():
        want = getattr(dims, q, None)
        if want is not None and q in found and found[q] != want:
            out.append(f"{field_name}={want} but the weight files hold {found[q]}")
    return out


def _validate_against_json(sd: dict[str, torch.Tensor], dims: Any, mt: ModelType, *, json_path: Path,
                           fields: Mapping[str, str], source: Path, key_files: dict[str, str]) -> None:
    try:
        validate_state_dict(mt.expected_shapes(dims), sd, source=str(source), key_files=key_files)
    except CheckpointError as err:
        clash = _config_vs_weights(sd, dims, fields)
        if not clash:
            raise
        raise CheckpointError(
            f"{json_path} does not describe the weights beside it: it declares {'; '.join(clash)}. "
            f"Restore the {json_path.name} that came with these weights (download it again: "
            f"{download_hint(source).removeprefix('Download it with ').rstrip('.')}), or point "
            f"checkpointer.checkpoint_dir at the directory these settings belong to."
        ) from None


_HF_FIELDS = {"num_layers": "num_hidden_layers", "embed_dim": "hidden_size", "vocab_size": "vocab_size",
              "intermediate_dim": "intermediate_size", "num_kv_heads": "num_key_value_heads"}
_META_FIELDS = {"num_layers": "n_layers", "embed_dim": "dim", "vocab_size": "vocab_size",
                "intermediate_dim": "multiple_of/ffn_dim_multiplier (FFN width)", "num_kv_heads": "n_kv_heads"}


def read_hf_model(
    checkpoint_dir: Path, files: Sequence[Path], mt: ModelType, key_files: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Read HF weight files shard by shard into one tunekit-named, validated state dict."""
    config = read_hf_config(checkpoint_dir, mt)
    try:
        dims = mt.hf_config_dims(config)
    except ConversionError as err:
        raise CheckpointError(f"{checkpoint_dir / 'config.json'}: {err}") from None
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
    if config.get("tie_word_embeddings") and "tok_embeddings.weight" in sd:
        if "output.weight" not in sd:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        elif not (sd["output.weight"].shape == sd["tok_embeddings.weight"].shape
                  and torch.equal(sd["output.weight"], sd["tok_embeddings.weight"])):
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
        self._s = s
        self.resume_from_checkpoint = bool(resume_from_checkpoint)
        self.recipe_path, self.adapter_path = s.recipe_path, s.adapter_path
        self.checkpoint_dir, self.output_dir, self.checkpoint_files = s.checkpoint_dir, s.output_dir, s.files
        self.keep_last_n = keep_last_n
        self.max_shard_bytes = parse_size(max_shard_size)
        self.format = "safetensors" if any(f.suffix == ".safetensors" for f in s.files) else "bin"
        self.config = read_hf_config(s.checkpoint_dir, s.model_type)
        try:
            d = s.model_type.hf_config_dims(self.config)
        except ConversionError as err:
            raise CheckpointError(f"{s.checkpoint_dir / 'config.json'}: {err}") from None
        self._heads = (d.num_heads, d.num_kv_heads, d.embed_dim)
        #: what config.json says beyond shapes; the recipes check the built model against it
        self.model_settings = hf_model_settings(self.config, s.model_type, s.checkpoint_dir / "config.json")

    def load_checkpoint(self) -> dict[str, Any]:
        """Read the weights (and, when resuming, adapter + training state).

        Returns:
            ``{"model": sd}`` in tunekit names, plus ``"adapter"``, ``"optimizer"``,
            ``"lr_scheduler"``, ``"recipe_state"``... when resuming.
        """
        s = self._s
        out: dict[str, Any] = {"model": read_hf_model(s.checkpoint_dir, s.files, s.model_type, s.key_files)}
        out.update(_load_training_files(s.adapter_path, s.recipe_path))
        return out

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
        s, name = self._s, _dir_name(epoch, step)
        model = state["model"]
        _clean_stale(self.output_dir)
        marker = {"epoch": epoch, "step": step, "intermediate": intermediate_checkpoint, "format": f"hf-{self.format}"}
        with atomic_checkpoint_dir(self.output_dir, name, marker) as tmp:
            mdir = tmp / MODEL_SUBDIR
            mdir.mkdir()
            write_hf_weights(model, mdir, s.model_type, self._heads, fmt=self.format,
                             max_shard_bytes=self.max_shard_bytes, name=name)
            _copy_aux(s.checkpoint_dir, mdir, _HF_AUX)
            merged = _save_common(state, tmp, s.model_type, self._heads, s.checkpoint_dir)
            _write_info(tmp, fmt="hf", epoch=epoch, step=step, merged=merged, info=info)
        _prune(self.output_dir, self.keep_last_n)
        return self.output_dir / name


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
    params = read_meta_params(checkpoint_dir, mt)
    try:
        dims = mt.meta_params_dims(params)
    except ConversionError as err:
        raise CheckpointError(f"{checkpoint_dir / 'params.json'}: {err}") from None
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
        self._s = s
        self.resume_from_checkpoint = bool(resume_from_checkpoint)
        self.recipe_path, self.adapter_path = s.recipe_path, s.adapter_path
        self.checkpoint_dir, self.output_dir, self.checkpoint_files = s.checkpoint_dir, s.output_dir, s.files
        self.keep_last_n = keep_last_n
        self.params = read_meta_params(s.checkpoint_dir, s.model_type)
        try:
            d = s.model_type.meta_params_dims(self.params)
        except ConversionError as err:
            raise CheckpointError(f"{s.checkpoint_dir / 'params.json'}: {err}") from None
        self._heads = (d.num_heads, d.num_kv_heads, d.embed_dim)
        self.model_settings = meta_model_settings(self.params, s.model_type, s.checkpoint_dir / "params.json")
        self.model_parallel_size = check_model_parallel_size(
            len(s.files) if model_parallel_size is None else model_parallel_size, d,
            given=model_parallel_size is not None, source=s.checkpoint_dir / "params.json")

    def load_checkpoint(self) -> dict[str, Any]:
        """Read the weights (and, when resuming, adapter + training state); see the HF checkpointer."""
        s = self._s
        out: dict[str, Any] = {"model": read_meta_model(s.checkpoint_dir, s.files, s.model_type, s.key_files)}
        out.update(_load_training_files(s.adapter_path, s.recipe_path))
        return out

    def save_checkpoint(
        self, state: dict[str, Any], epoch: int, intermediate_checkpoint: bool = False, step: int | None = None,
        *, info: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``state`` to ``output_dir/epoch_{epoch}/`` (or ``step_{step}/``); see the HF checkpointer."""
        s, name = self._s, _dir_name(epoch, step)
        _clean_stale(self.output_dir)
        marker = {"epoch": epoch, "step": step, "intermediate": intermediate_checkpoint, "format": "meta"}
        with atomic_checkpoint_dir(self.output_dir, name, marker) as tmp:
            try:
                meta = s.model_type.tunekit_to_meta(state["model"])
            except ConversionError as err:
                raise CheckpointError(f"Cannot save {name}: {err}") from None
            mdir = tmp / MODEL_SUBDIR
            mdir.mkdir()
            write_meta_weights(meta, self.model_parallel_size, s.model_type, mdir, name)
            del meta
            _copy_aux(s.checkpoint_dir, mdir, _META_AUX)
            merged = _save_common(state, tmp, s.model_type, self._heads, s.checkpoint_dir)
            _write_info(tmp, fmt="meta", epoch=epoch, step=step, merged=merged, info=info)
        _prune(self.output_dir, self.keep_last_n)
        return self.output_dir / name
