"""``export_gguf``: a model directory, checkpoint or run as one GGUF file llama.cpp runs as it is.

What llama.cpp expects, family by family (its ``convert_hf_to_gguf.py`` is the reference):

* ``llama`` architecture for Llama 2, Llama 3.x and Mistral. llama.cpp applies RoPE to
  *interleaved* pairs for it, so q/k rows are stored in Meta's interleaved order: HF's
  rotate-half rows permuted per head (``permute_from_hf``, which is also the order tunekit keeps
  internally). Llama 3.1/3.2 RoPE scaling is stored as ``rope_freqs.weight``: one divisor per
  frequency pair (``head_dim / 2`` floats), 1 for the short wavelengths, ``factor`` for the long
  ones and the smooth interpolation between - the same scaling tunekit's model applies
  (``Llama3RopeScaling``), written as unscaled / scaled inverse frequency.
* ``qwen2`` (q/k/v biases) and ``qwen3`` (per-head q/k RMSNorm): llama.cpp uses rotate-half
  ("NeoX") RoPE for them, so the HF row order is kept.

Tensor names are gguf-py's ``TENSOR_NAMES``; 1-D tensors (norms, biases, ``rope_freqs``) are
always F32, as llama.cpp writes them. ``q8_0`` needs rows that are multiples of 32; a matrix
whose rows are not is written F16 (llama.cpp's converter does the same).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunekit.checkpointing import checkpoint_format, find_weights_dir
from tunekit.export._gguf_vocab import GGUFVocab, VocabError, pad_vocab, read_vocab
from tunekit.generation import (
    check_adapter_not_merged,
    load_adapter,
    merge_adapter,
    resolve_checkpoint,
    weights_checkpointer,
)
from tunekit.models import MODEL_TYPES, ModelType, get_model_type, permute_from_hf
from tunekit.modules import Llama3RopeScaling

__all__ = ["GGUF_DTYPES", "GGUFExport", "GGUFExportError", "export_gguf", "gguf_architecture", "gguf_tensor_name",
           "llama3_rope_factors"]

#: ``--dtype`` choices: the type of the 2-D weights (1-D tensors stay F32).
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
# HF ``model_type`` -> llama.cpp architecture.
_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_INTERLEAVED = {"llama"}  # architectures whose q/k rows llama.cpp wants in interleaved order


class GGUFExportError(ValueError):
    """A user-caused export problem: one paragraph naming the file or option and the fix."""


@dataclass
class GGUFExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    architecture: str
    model_type: str
    weights_dir: Path
    dtype: str
    tensors: int
    vocab_size: int
    context_length: int
    notes: list[str] = field(default_factory=list)


def gguf_architecture(mt: ModelType) -> str:
    """llama.cpp's architecture name for a family (raises for one it has no rules for here)."""
    arch = _ARCH.get(mt.hf_model_type)
    if arch is None:
        supported = sorted(n for n, m in MODEL_TYPES.items() if m.hf_model_type in _ARCH)
        raise GGUFExportError(
            f"model_type {mt.name} ({mt.display_name}) has no GGUF layout in tunekit export; families it "
            f"writes: {', '.join(supported)}. Use llama.cpp's convert_hf_to_gguf.py on an HF-format copy "
            f"(`tunekit convert SRC DIR --to hf`)."
        )
    return arch


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError:
        raise GGUFExportError(
            "GGUF export needs the `gguf` package (llama.cpp's reader/writer library): "
            "`pip install gguf` (or `pip install tunekit[gguf]`), then run the command again."
        ) from None
    return gguf


# ---------------------------------------------------------------------------- reading the model
def _rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("rope_scaling", "rope_parameters"):
        value = config.get(key)
        if isinstance(value, dict) and (value.get("rope_type") or value.get("type")) not in (None, "default"):
            return value
    return None


def _detect_model_type(d: Path, fmt: str, config: dict[str, Any]) -> ModelType:
    if fmt == "meta":
        if config.get("use_scaled_rope"):
            raise GGUFExportError(
                f"{d / 'params.json'} declares use_scaled_rope=true (Llama 3.1/3.2) but not the scaling's "
                f"factor (8 for Llama 3.1, 32 for 3.2), and GGUF needs it (rope_freqs). Export the HF-format "
                f"files of the same download (the repository's top level, beside original/), whose "
                f"config.json records rope_scaling."
            )
        return get_model_type("LLAMA2")
    hf_type = config.get("model_type")
    candidates = [m for m in MODEL_TYPES.values() if hf_type in (m.hf_model_type, *m.hf_model_types)]
    if not candidates:
        supported = sorted({m.hf_model_type for m in MODEL_TYPES.values()} & set(_ARCH))
        raise GGUFExportError(
            f"{d / 'config.json'} has model_type={hf_type!r}, a family tunekit cannot export to GGUF "
            f"(supported: {', '.join(supported)}). Convert it with llama.cpp's convert_hf_to_gguf.py, "
            f"or pass --model-type if config.json names the family wrongly."
        )
    if len(candidates) > 1:  # llama: Llama 2 and Llama 3 share it; the RoPE scaling tells them apart
        scaled = _rope_scaling(config) is not None
        candidates = [m for m in candidates if bool(m.rope_scaling_types) == scaled] or candidates
    return candidates[0]


@dataclass
class _Model:
    mt: ModelType
    weights_dir: Path
    fmt: str
    config: dict[str, Any]
    dims: Any
    hf_sd: dict[str, torch.Tensor]
    context_length: int
    norm_eps: float
    rope_base: float
    rope_scaling: dict[str, Any] | None


def _read_model(source: str | Path, model_type: str | None, adapter: str | Path | None,
                notes: list[str]) -> _Model:
    given = Path(source).expanduser()
    if not given.exists():
        raise GGUFExportError(
            f"SRC {str(given)!r} does not exist. Give a run directory (its newest complete checkpoint is "
            f"exported), a checkpoint directory (RUN/epoch_N) or an HF/Meta model directory."
        )
    d = find_weights_dir(given, what="SRC")
    fmt = checkpoint_format(d)
    if fmt is None:  # e.g. the newest checkpoint is a sharded step_N (state/dcp/ only, no model/)
        raise GGUFExportError(
            f"SRC {str(given)!r}: {d} holds no HF or Meta weights (a sharded FSDP step checkpoint keeps only "
            f"state/dcp/). Export an epoch checkpoint (RUN/epoch_N), whose model/ holds the full weights."
        )
    found = resolve_checkpoint(d)
    config = _read_config(d, fmt)
    mt = get_model_type(model_type) if model_type is not None else _detect_model_type(d, fmt, config)
    gguf_architecture(mt)
    with tempfile.TemporaryDirectory(prefix="tunekit-export-") as unused:  # the checkpointer never saves
        ckpt = weights_checkpointer(d, model_type=mt.name, output_dir=Path(unused) / "out")
        sd = ckpt.load_checkpoint()["model"]
    config = ckpt.config if fmt == "hf" else ckpt.params
    dims = mt.hf_config_dims(config) if fmt == "hf" else mt.meta_params_dims(config)
    if dims.vocab_size is None:
        dims = type(dims)(**{**dims.__dict__, "vocab_size": sd["tok_embeddings.weight"].shape[0]})
    if adapter is not None:
        check_adapter_not_merged(found, adapter)
        lora, scalings = load_adapter(adapter, model_type=mt.name, num_heads=dims.num_heads,
                                      num_kv_heads=dims.num_kv_heads, embed_dim=dims.embed_dim)
        sd = merge_adapter(sd, lora, scalings, source=f"--adapter {adapter}")
        notes.append(f"merged the LoRA adapter {adapter} into the weights")
    elif found.merged_adapter is not None:
        notes.append("the checkpoint's weights already contain its LoRA adapter (merged when saved)")
    hf_sd = mt.tunekit_to_hf(sd, dims.num_heads, dims.num_kv_heads, dims.embed_dim)
    del sd
    settings = ckpt.model_settings
    if fmt == "hf":
        context = int(config.get("max_position_embeddings") or mt.max_position_embeddings)
    else:
        context = mt.max_position_embeddings
        notes.append(f"params.json does not record the context length; wrote {mt.display_name}'s {context}")
    return _Model(mt, d, fmt, dict(config), dims, hf_sd, context, float(settings["norm_eps"] or 1e-5),
                  float(settings["rope_base"]), _rope_scaling(config) if fmt == "hf" else None)


def _read_config(d: Path, fmt: str) -> dict[str, Any]:
    import json

    name = "config.json" if fmt == "hf" else "params.json"
    try:
        data = json.loads((d / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GGUFExportError(f"{d / name} cannot be read as JSON ({err}); restore the model's {name}.") from None
    if not isinstance(data, dict):
        raise GGUFExportError(f"{d / name} is not a JSON object; restore the model's {name}.")
    return data


# ---------------------------------------------------------------------------- tensors
_HF_TO_GGUF = {  # HF name (layer part) -> gguf MODEL_TENSOR member
    "input_layernorm.weight": ("ATTN_NORM", "weight"),
    "self_attn.q_proj.weight": ("ATTN_Q", "weight"), "self_attn.q_proj.bias": ("ATTN_Q", "bias"),
    "self_attn.k_proj.weight": ("ATTN_K", "weight"), "self_attn.k_proj.bias": ("ATTN_K", "bias"),
    "self_attn.v_proj.weight": ("ATTN_V", "weight"), "self_attn.v_proj.bias": ("ATTN_V", "bias"),
    "self_attn.o_proj.weight": ("ATTN_OUT", "weight"),
    "self_attn.q_norm.weight": ("ATTN_Q_NORM", "weight"), "self_attn.k_norm.weight": ("ATTN_K_NORM", "weight"),
    "post_attention_layernorm.weight": ("FFN_NORM", "weight"),
    "mlp.gate_proj.weight": ("FFN_GATE", "weight"), "mlp.up_proj.weight": ("FFN_UP", "weight"),
    "mlp.down_proj.weight": ("FFN_DOWN", "weight"),
}
_TOP = {"model.embed_tokens.weight": "TOKEN_EMBD", "model.norm.weight": "OUTPUT_NORM", "lm_head.weight": "OUTPUT"}


def gguf_tensor_name(gguf: Any, hf_key: str) -> str | None:
    """The GGUF name of an HF weight (``model.layers.3.self_attn.q_proj.weight`` ->
    ``blk.3.attn_q.weight``); None for a name without one."""
    if hf_key in _TOP:
        return gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, _TOP[hf_key])] + ".weight"
    if not hf_key.startswith("model.layers."):
        return None
    layer, rest = hf_key.removeprefix("model.layers.").split(".", 1)
    if rest not in _HF_TO_GGUF:
        return None
    member, suffix = _HF_TO_GGUF[rest]
    return gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, member)].format(bid=int(layer)) + "." + suffix


def llama3_rope_factors(rope_base: float, head_dim: int, scaling: dict[str, Any]) -> torch.Tensor:
    """llama.cpp's ``rope_freqs``: per frequency pair, unscaled / scaled inverse frequency under
    the ``llama3`` scaling (what ggml divides each frequency by)."""
    s = Llama3RopeScaling(
        factor=float(scaling.get("factor", 8.0)), low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
    )
    inv_freq = 1.0 / (rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return (inv_freq / s.apply(inv_freq)).to(torch.float32)


def _encode(gguf: Any, name: str, t: torch.Tensor, dtype: str, fallbacks: list[str]) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for ``writer.add_tensor``; 1-D tensors stay F32."""
    q = gguf.GGMLQuantizationType
    arr = t.detach().to(torch.float32).contiguous().numpy()
    if arr.ndim == 1 or dtype == "f32":
        return arr, None
    if dtype == "q8_0" and arr.shape[-1] % 32 != 0:
        fallbacks.append(name)
        dtype = "f16"
    if dtype == "f16":
        out = arr.astype(np.float16)
        overflow = np.isinf(out) & ~np.isinf(arr)
        if overflow.any():
            raise GGUFExportError(
                f"{name} has values beyond float16's range (largest |value| {float(np.abs(arr).max()):.4g} > "
                f"65504), so --dtype f16 would turn them into infinities. Use --dtype bf16 (same size, "
                f"float32's range) or --dtype f32."
            )
        return out, None
    kind = q.BF16 if dtype == "bf16" else q.Q8_0
    return gguf.quants.quantize(arr, kind), kind


def _tensors(gguf: Any, m: _Model, arch: str) -> list[tuple[str, torch.Tensor]]:
    out = []
    unknown = []
    for key in list(m.hf_sd):
        t = m.hf_sd.pop(key)
        name = gguf_tensor_name(gguf, key)
        if name is None:
            unknown.append(key)
            continue
        if arch in _INTERLEAVED and key.endswith(("q_proj.weight", "k_proj.weight")):
            t = permute_from_hf(t, m.dims.num_heads if "q_proj" in key else m.dims.num_kv_heads)
        out.append((name, t))
    if unknown:
        raise GGUFExportError(f"{m.weights_dir}: weights with no GGUF name ({', '.join(unknown[:4])}); this "
                              f"checkpoint is not a plain {m.mt.display_name} model.")
    if m.rope_scaling is not None:
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                    llama3_rope_factors(m.rope_base, m.dims.head_dim, m.rope_scaling)))
    return out


# ---------------------------------------------------------------------------- metadata
def _add_model_keys(w: Any, gguf: Any, m: _Model, name: str, dtype: str) -> None:
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    d = m.dims
    w.add_name(name)
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(int(d.vocab_size))
    w.add_context_length(int(m.context_length))
    w.add_embedding_length(int(d.embed_dim))
    w.add_block_count(int(d.num_layers))
    w.add_feed_forward_length(int(d.intermediate_dim))
    w.add_head_count(int(d.num_heads))
    w.add_head_count_kv(int(d.num_kv_heads))
    w.add_key_length(int(d.head_dim))
    w.add_value_length(int(d.head_dim))
    w.add_rope_dimension_count(int(d.head_dim))
    w.add_rope_freq_base(float(m.rope_base))
    w.add_layer_norm_rms_eps(float(m.norm_eps))


def _add_vocab_keys(w: Any, v: GGUFVocab) -> None:
    w.add_tokenizer_model(v.model)
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    if v.merges:
        w.add_token_merges(v.merges)
    for value, add in ((v.bos_id, w.add_bos_token_id), (v.eos_id, w.add_eos_token_id),
                       (v.unk_id, w.add_unk_token_id), (v.pad_id, w.add_pad_token_id)):
        if value is not None:
            add(int(value))
    w.add_add_bos_token(bool(v.add_bos))
    w.add_add_eos_token(bool(v.add_eos))
    if v.chat_template:
        w.add_chat_template(v.chat_template)


# ---------------------------------------------------------------------------- destination
def _check_dest(dest: Path, force: bool, weights_dir: Path | None) -> None:
    if dest.suffix.lower() != ".gguf":
        raise GGUFExportError(f"DEST {str(dest)!r} does not end in .gguf; name the file to write, e.g. "
                              f"{dest.with_suffix('.gguf') if dest.suffix else dest / 'model.gguf'}.")
    if dest.is_dir():
        raise GGUFExportError(f"DEST {str(dest)!r} is a directory; give the path of the .gguf file to write, "
                              f"e.g. {dest / 'model.gguf'}.")
    if weights_dir is not None and dest.resolve().parent.is_relative_to(weights_dir.resolve()):
        raise GGUFExportError(f"DEST {str(dest)!r} is inside the model directory {weights_dir}, which holds "
                              f"the model and nothing else; write the .gguf file beside it (e.g. "
                              f"{weights_dir.parent / (weights_dir.name + '.gguf')}).")
    if (dest.exists() or dest.is_symlink()) and not force:
        raise GGUFExportError(f"DEST {str(dest)!r} already exists; export never overwrites a file silently. "
                              f"Pass --force to replace it, or choose a new file name.")
    if not dest.parent.exists():
        raise GGUFExportError(f"DEST's directory {str(dest.parent)!r} does not exist; create it first "
                              f"(mkdir -p {dest.parent}) or choose another path.")


def _write_atomic(dest: Path, write: Callable[[Path], None]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_gguf(source: str | Path, dest: str | Path, *, dtype: str = "f16", adapter: str | Path | None = None,
                model_type: str | None = None, name: str | None = None, force: bool = False) -> GGUFExport:
    """Write the model under ``source`` as one GGUF file llama.cpp loads directly.

    Args:
        source: a run directory (its newest complete checkpoint), a checkpoint directory
            (``RUN/epoch_N``: a LoRA run's ``model/`` already holds the merged weights), or an HF
            or Meta model directory.
        dest: the ``.gguf`` file to write (written under a temporary name, then renamed).
        dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for the matrices; 1-D tensors stay F32.
        adapter: a LoRA adapter (run, checkpoint or PEFT directory) to merge into ``source``.
        model_type: a ``MODEL_TYPES`` key; None detects it from ``config.json``.
        name: ``general.name`` (default: the run or model directory's name).
        force: replace an existing ``dest``.

    Raises:
        GGUFExportError: a bad argument, an unsupported family or tokenizer (naming file and fix).
        CheckpointError: the source's files (missing, unreadable, inconsistent).
    """
    if dtype not in GGUF_DTYPES:
        raise GGUFExportError(f"--dtype {dtype!r} is not a GGUF type export writes; choose one of "
                              f"{', '.join(GGUF_DTYPES)} (f16 is llama.cpp's usual choice; q8_0 halves it "
                              f"again with little loss).")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise GGUFExportError(f"--model-type {model_type!r} is not a tunekit family; choose one of "
                              f"{', '.join(sorted(MODEL_TYPES))}, or omit it to read it from config.json.")
    out = Path(dest).expanduser().absolute()
    _check_dest(out, force, None)
    gguf = _gguf_module()
    notes: list[str] = []
    m = _read_model(source, model_type, adapter, notes)
    _check_dest(out, force, m.weights_dir)
    try:
        vocab = read_vocab(m.weights_dir)
        padded = int(m.dims.vocab_size) - len(vocab.tokens)
        pad_vocab(vocab, int(m.dims.vocab_size))
    except VocabError as err:
        raise GGUFExportError(str(err)) from None
    if padded > 0:
        notes.append(f"the tokenizer has {m.dims.vocab_size - padded} tokens for {m.dims.vocab_size} embedding "
                     f"rows; the rest are written as unused [PAD] tokens, as llama.cpp's converter does")
    arch = gguf_architecture(m.mt)
    tensors = _tensors(gguf, m, arch)
    fallbacks: list[str] = []
    label = name or _default_name(Path(source).expanduser(), m.weights_dir)

    def write(path: Path) -> None:
        w = gguf.GGUFWriter(path, arch)
        _add_model_keys(w, gguf, m, label, dtype)
        _add_vocab_keys(w, vocab)
        while tensors:
            tname, t = tensors.pop(0)
            data, raw = _encode(gguf, tname, t, dtype, fallbacks)
            w.add_tensor(tname, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    count = len(tensors)
    _write_atomic(out, write)
    if fallbacks:
        notes.append(f"{len(fallbacks)} matri{'x' if len(fallbacks) == 1 else 'ces'} with rows not a multiple "
                     f"of 32 written F16 instead of Q8_0 ({', '.join(fallbacks[:3])})")
    return GGUFExport(out, arch, m.mt.name, m.weights_dir, dtype, count, int(m.dims.vocab_size),
                      m.context_length, notes)


def _default_name(given: Path, weights_dir: Path) -> str:
    d = weights_dir.parent if weights_dir.name == "model" else weights_dir
    if d.name.startswith(("epoch_", "step_")):
        return f"{d.parent.name}-{d.name}"
    return d.name or given.name

