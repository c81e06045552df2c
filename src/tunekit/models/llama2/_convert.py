"""Weight-name conversion for Llama 2: HF <-> tunekit <-> Meta, and LoRA adapters -> PEFT.

Every function here works key by key, so a checkpointer can convert one shard at a time and
never hold more than the shard it is working on. tunekit stores q/k for *interleaved* RoPE
(Meta layout); HF stores them for rotate-half RoPE, so the HF functions permute the rows of
q/k weights (and of the LoRA B matrices of q/k, whose rows are the same output features).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ConversionError",
    "Llama2Dims",
    "MERGE_DIMS",
    "PEFT_TARGET_NAMES",
    "adapter_to_peft",
    "expected_shapes",
    "hf_config",
    "hf_config_dims",
    "hf_tokenizer_config",
    "hf_to_tunekit",
    "hf_to_tunekit_key",
    "meta_merge_dim",
    "meta_params",
    "meta_params_dims",
    "meta_to_tunekit",
    "peft_config",
    "peft_to_adapter",
    "permute_from_hf",
    "permute_to_hf",
    "rope_theta_of",
    "tunekit_to_hf",
    "tunekit_to_hf_key",
    "tunekit_to_meta",
]


class ConversionError(KeyError):
    """A state-dict key that the conversion table does not know, or a key that is missing."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Llama2Dims:
    """The sizes a Llama 2 checkpoint's config declares (None where the config does not say)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    vocab_size: int | None = None
    intermediate_dim: int | None = None

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


# --- key tables ---------------------------------------------------------------------------
# (tunekit suffix within a layer, HF suffix, Meta suffix). Layer keys are "layers.{i}.<suffix>".
_LAYER_KEYS: tuple[tuple[str, str, str], ...] = (
    ("attn.q_proj.weight", "self_attn.q_proj.weight", "attention.wq.weight"),
    ("attn.k_proj.weight", "self_attn.k_proj.weight", "attention.wk.weight"),
    ("attn.v_proj.weight", "self_attn.v_proj.weight", "attention.wv.weight"),
    ("attn.output_proj.weight", "self_attn.o_proj.weight", "attention.wo.weight"),
    ("sa_norm.scale", "input_layernorm.weight", "attention_norm.weight"),
    ("mlp_norm.scale", "post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.w1.weight", "mlp.gate_proj.weight", "feed_forward.w1.weight"),
    ("mlp.w2.weight", "mlp.down_proj.weight", "feed_forward.w2.weight"),
    ("mlp.w3.weight", "mlp.up_proj.weight", "feed_forward.w3.weight"),
)
_GLOBAL_KEYS: tuple[tuple[str, str, str], ...] = (
    ("tok_embeddings.weight", "model.embed_tokens.weight", "tok_embeddings.weight"),
    ("norm.scale", "model.norm.weight", "norm.weight"),
    ("output.weight", "lm_head.weight", "output.weight"),
)
_HF_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_META_SKIP = re.compile(r"^rope\.freqs$")

_TK_TO_HF = {tk: hf for tk, hf, _ in _LAYER_KEYS}
_HF_TO_TK = {hf: tk for tk, hf, _ in _LAYER_KEYS}
_TK_TO_META = {tk: meta for tk, _, meta in _LAYER_KEYS}
_META_TO_TK = {meta: tk for tk, _, meta in _LAYER_KEYS}
_G_TK_TO_HF = {tk: hf for tk, hf, _ in _GLOBAL_KEYS}
_G_HF_TO_TK = {hf: tk for tk, hf, _ in _GLOBAL_KEYS}
_G_TK_TO_META = {tk: meta for tk, _, meta in _GLOBAL_KEYS}
_G_META_TO_TK = {meta: tk for tk, _, meta in _GLOBAL_KEYS}

_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

#: LoRA target names, tunekit -> PEFT/HF module names (architecture.md).
PEFT_TARGET_NAMES: dict[str, str] = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "output_proj": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
    "output": "lm_head",
}

#: Meta model-parallel shards: the dim each weight is split along (None = replicated).
MERGE_DIMS: dict[str, int | None] = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "norm.weight": None,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
}


# --- RoPE permutation ----------------------------------------------------------------------
def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of an HF q/k weight (rotate-half RoPE) for interleaved RoPE.

    Args:
        w: ``[n_heads * head_dim, d]`` (a q/k weight, or the LoRA B of one).
        n_heads: heads for q, kv-heads for k.
    """
    rows, dim = w.shape
    hd = rows // n_heads
    return w.view(n_heads, 2, hd // 2, dim).transpose(1, 2).reshape(rows, dim)


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`permute_from_hf` (interleaved -> rotate-half row order)."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def _check_rows(key: str, w: torch.Tensor, n_heads: int) -> None:
    if w.dim() != 2 or w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise ConversionError(
            f"Key {key!r} has shape {tuple(w.shape)}, which cannot be split into {n_heads} heads of "
            f"an even head dim; check num_attention_heads / num_key_value_heads in the config."
        )


def _unknown(keys: list[str], source: str, known: str) -> ConversionError:
    shown = ", ".join(sorted(keys)[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
    return ConversionError(
        f"{len(keys)} key(s) in the {source} state dict are not Llama 2 weights: {shown}. "
        f"Expected names look like {known}; is this checkpoint for another model family "
        f"(model_type) or a differently prefixed export?"
    )


# --- HF <-> tunekit ------------------------------------------------------------------------
def hf_to_tunekit(
    sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int, dim: int
) -> dict[str, torch.Tensor]:
    """Rename HF keys to tunekit keys and permute q/k for interleaved RoPE.

    Works on any subset of the keys (one shard). ``rotary_emb.inv_freq`` buffers are skipped.

    Args:
        sd: HF-named tensors.
        num_heads: ``num_attention_heads`` from config.json.
        num_kv_heads: ``num_key_value_heads`` (== num_heads without GQA).
        dim: ``hidden_size``.

    Raises:
        ConversionError: listing every key that is not a Llama 2 HF weight.
    """
    del dim  # head_dim is derived from each weight's rows; kept for the table's signature
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        if _HF_SKIP.search(key):
            continue
        if key in _G_HF_TO_TK:
            out[_G_HF_TO_TK[key]] = w
            continue
        m = _HF_LAYER_RE.match(key)
        if m is None or m.group(2) not in _HF_TO_TK:
            unknown.append(key)
            continue
        new = f"layers.{m.group(1)}.{_HF_TO_TK[m.group(2)]}"
        if m.group(2) == "self_attn.q_proj.weight":
            _check_rows(key, w, num_heads)
            w = permute_from_hf(w, num_heads)
        elif m.group(2) == "self_attn.k_proj.weight":
            _check_rows(key, w, num_kv_heads)
            w = permute_from_hf(w, num_kv_heads)
        out[new] = w
    if unknown:
        raise _unknown(unknown, "HF", "'model.layers.0.self_attn.q_proj.weight'")
    return out


def tunekit_to_hf(
    sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int, dim: int
) -> dict[str, torch.Tensor]:
    """Rename tunekit keys to HF keys and permute q/k back to rotate-half order.

    Raises:
        ConversionError: listing every key that is not a tunekit Llama 2 weight.
    """
    del dim
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        if key in _G_TK_TO_HF:
            out[_G_TK_TO_HF[key]] = w
            continue
        m = _LAYER_RE.match(key)
        if m is None or m.group(2) not in _TK_TO_HF:
            unknown.append(key)
            continue
        new = f"model.layers.{m.group(1)}.{_TK_TO_HF[m.group(2)]}"
        if m.group(2) == "attn.q_proj.weight":
            _check_rows(key, w, num_heads)
            w = permute_to_hf(w, num_heads)
        elif m.group(2) == "attn.k_proj.weight":
            _check_rows(key, w, num_kv_heads)
            w = permute_to_hf(w, num_kv_heads)
        out[new] = w
    if unknown:
        raise _unknown(unknown, "tunekit", "'layers.0.attn.q_proj.weight'")
    return out


# --- Meta <-> tunekit ----------------------------------------------------------------------
def meta_to_tunekit(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Meta keys to tunekit keys (same RoPE layout, no permutation); skips ``rope.freqs``."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        if _META_SKIP.match(key):
            continue
        if key in _G_META_TO_TK:
            out[_G_META_TO_TK[key]] = w
            continue
        m = _LAYER_RE.match(key)
        if m is None or m.group(2) not in _META_TO_TK:
            unknown.append(key)
            continue
        out[f"layers.{m.group(1)}.{_META_TO_TK[m.group(2)]}"] = w
    if unknown:
        raise _unknown(unknown, "Meta", "'layers.0.attention.wq.weight'")
    return out


def tunekit_to_meta(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename tunekit keys to Meta keys."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        if key in _G_TK_TO_META:
            out[_G_TK_TO_META[key]] = w
            continue
        m = _LAYER_RE.match(key)
        if m is None or m.group(2) not in _TK_TO_META:
            unknown.append(key)
            continue
        out[f"layers.{m.group(1)}.{_TK_TO_META[m.group(2)]}"] = w
    if unknown:
        raise _unknown(unknown, "tunekit", "'layers.0.attn.q_proj.weight'")
    return out


def meta_merge_dim(key: str) -> int | None:
    """The dim a Meta model-parallel shard splits ``key`` along (None: replicated).

    Raises:
        ConversionError: for a key the table does not know.
    """
    m = _LAYER_RE.match(key)
    suffix = m.group(2) if m else key
    if suffix not in MERGE_DIMS:
        raise _unknown([key], "Meta", "'layers.0.attention.wq.weight'")
    return MERGE_DIMS[suffix]


# --- configs -------------------------------------------------------------------------------
def hf_config_dims(config: Mapping[str, Any]) -> Llama2Dims:
    """Read the sizes from an HF ``config.json`` dict.

    Raises:
        ConversionError: when a required field is missing.
    """
    missing = [k for k in ("num_hidden_layers", "num_attention_heads", "hidden_size") if k not in config]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}")
    heads = int(config["num_attention_heads"])
    return Llama2Dims(
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        embed_dim=int(config["hidden_size"]),
        vocab_size=config.get("vocab_size"),
        intermediate_dim=config.get("intermediate_size"),
    )


def meta_params_dims(params: Mapping[str, Any]) -> Llama2Dims:
    """Read the sizes from a Meta ``params.json`` dict (FFN size from ``multiple_of`` rules).

    Raises:
        ConversionError: when a required field is missing.
    """
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if missing:
        raise ConversionError(f"params.json lacks {', '.join(missing)}")
    dim, heads = int(params["dim"]), int(params["n_heads"])
    hidden = None
    if "multiple_of" in params:
        hidden = int(2 * 4 * dim / 3)
        if params.get("ffn_dim_multiplier") is not None:
            hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
        mult = int(params["multiple_of"])
        hidden = mult * math.ceil(hidden / mult)
    vocab = params.get("vocab_size")
    return Llama2Dims(
        num_layers=int(params["n_layers"]),
        num_heads=heads,
        num_kv_heads=int(params.get("n_kv_heads") or heads),
        embed_dim=dim,
        vocab_size=int(vocab) if vocab is not None and int(vocab) > 0 else None,
        intermediate_dim=hidden,
    )


# --- writing configs (cross-format export) ------------------------------------------------
def rope_theta_of(config: Mapping[str, Any]) -> float:
    """RoPE base of an HF ``config.json`` (top-level ``rope_theta``, or transformers 5's
    ``rope_parameters``); 10000 when absent."""
    rp = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or rp.get("rope_theta") or 10000.0)


def hf_config(d: Llama2Dims, *, norm_eps: float, rope_theta: float, max_position_embeddings: int,
              dtype: torch.dtype) -> dict[str, Any]:
    """An HF ``config.json`` for ``LlamaForCausalLM`` with these sizes (as HF ships Llama 2).

    Raises:
        ConversionError: when ``d`` lacks the vocabulary or FFN size.
    """
    if d.vocab_size is None or d.intermediate_dim is None:
        raise ConversionError("hf_config needs vocab_size and intermediate_dim")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": d.vocab_size,
        "hidden_size": d.embed_dim,
        "intermediate_size": d.intermediate_dim,
        "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_tokenizer_config(model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json`` for Llama 2's SentencePiece ``tokenizer.model`` (BOS, no EOS)."""
    return {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": True,
            "model_max_length": model_max_length}  # fmt: skip


# (ffn_dim_multiplier, multiple_of) pairs tried in order: Meta's for Llama 2 7B/13B and 70B,
# then smaller powers of two (small models), before the exact fallback.
_META_FFN_RULES = ((None, 256), (1.3, 4096), *((None, 2**k) for k in range(7, 2, -1)))


def meta_params(d: Llama2Dims, *, norm_eps: float, rope_theta: float) -> dict[str, Any]:
    """A Meta ``params.json`` for these sizes, written as Meta ships Llama 2.

    ``vocab_size`` is -1 (Meta reads it from the tokenizer); ``n_kv_heads`` and ``rope_theta``
    appear only when they differ from ``n_heads`` and 10000 (Llama 2's reference code rejects
    keys it does not know). The FFN width becomes Meta's ``multiple_of`` /
    ``ffn_dim_multiplier`` rule, chosen so that :func:`meta_params_dims` gives it back.

    Raises:
        ConversionError: when ``d`` lacks the FFN size.
    """
    if d.intermediate_dim is None:
        raise ConversionError("meta_params needs intermediate_dim")
    params: dict[str, Any] = {"dim": d.embed_dim, "n_layers": d.num_layers, "n_heads": d.num_heads}
    if d.num_kv_heads != d.num_heads:
        params["n_kv_heads"] = d.num_kv_heads
    base = int(2 * 4 * d.embed_dim / 3)
    rules = [*_META_FFN_RULES, (None, d.intermediate_dim) if base <= d.intermediate_dim
             else (d.intermediate_dim / base, d.intermediate_dim)]
    for ffn, multiple_of in rules:
        trial = {"dim": d.embed_dim, "n_layers": 1, "n_heads": 1, "multiple_of": multiple_of,
                 "ffn_dim_multiplier": ffn}
        if meta_params_dims(trial).intermediate_dim == d.intermediate_dim:
            if ffn is not None:
                params["ffn_dim_multiplier"] = ffn
            params["multiple_of"] = multiple_of
            break
    else:  # pragma: no cover - the last rule reproduces any width by construction
        raise ConversionError(f"no multiple_of rule gives intermediate_dim={d.intermediate_dim}")
    params["norm_eps"] = norm_eps
    if rope_theta != 10000.0:
        params["rope_theta"] = rope_theta
    params["vocab_size"] = -1
    return params


def expected_shapes(d: Llama2Dims) -> dict[str, tuple[int | None, ...]]:
    """tunekit key -> shape for a plain Llama 2 model of these sizes (None: not checked)."""
    e, hd, v, f = d.embed_dim, d.head_dim, d.vocab_size, d.intermediate_dim
    shapes: dict[str, tuple[int | None, ...]] = {
        "tok_embeddings.weight": (v, e),
        "norm.scale": (e,),
        "output.weight": (v, e),
    }
    for i in range(d.num_layers):
        p = f"layers.{i}."
        shapes[p + "attn.q_proj.weight"] = (d.num_heads * hd, e)
        shapes[p + "attn.k_proj.weight"] = (d.num_kv_heads * hd, e)
        shapes[p + "attn.v_proj.weight"] = (d.num_kv_heads * hd, e)
        shapes[p + "attn.output_proj.weight"] = (e, d.num_heads * hd)
        shapes[p + "sa_norm.scale"] = (e,)
        shapes[p + "mlp_norm.scale"] = (e,)
        shapes[p + "mlp.w1.weight"] = (f, e)
        shapes[p + "mlp.w2.weight"] = (e, f)
        shapes[p + "mlp.w3.weight"] = (f, e)
    return shapes


# --- LoRA adapters <-> PEFT ----------------------------------------------------------------
_ADAPTER_RE = re.compile(r"^(.*)\.lora_(?:([ab])\.weight|(magnitude))$")
_PEFT_RE = re.compile(r"^base_model\.model\.(.*)\.lora_(?:([AB])\.weight|(magnitude)_vector\.weight)$")


def _permute_rows(key: str, w: torch.Tensor, n_heads: int, permute: Any) -> torch.Tensor:
    # B matrices are [rows, rank]; DoRA magnitudes are [rows] and get the same row order.
    if w.dim() == 1:
        return permute(w.unsqueeze(1), n_heads).squeeze(1)
    return permute(w, n_heads)


def adapter_to_peft(
    sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int, dim: int
) -> dict[str, torch.Tensor]:
    """Convert a tunekit adapter state dict to PEFT ``adapter_model.safetensors`` names.

    ``layers.0.attn.q_proj.lora_a.weight`` -> ``base_model.model.model.layers.0.self_attn.q_proj
    .lora_A.weight``; DoRA's ``<linear>.lora_magnitude`` -> ``<module>.lora_magnitude_vector
    .weight``. The B matrices (and DoRA magnitudes) of q/k get the same row permutation as the
    q/k weights, since their rows are the same output features.

    Raises:
        ConversionError: listing keys that are not LoRA weights of a known linear.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        m = _ADAPTER_RE.match(key)
        base_key = f"{m.group(1)}.weight" if m else None
        hf = tunekit_to_hf_key(base_key) if base_key else None
        if m is None or hf is None:
            unknown.append(key)
            continue
        rows = m.group(2) == "b" or m.group(3) is not None  # output-feature rows
        if rows and base_key.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            heads = num_heads if base_key.endswith("attn.q_proj.weight") else num_kv_heads
            w = _permute_rows(key, w, heads, permute_to_hf)
        module = hf[: -len(".weight")]
        name = "lora_magnitude_vector" if m.group(3) else f"lora_{m.group(2).upper()}"
        out[f"base_model.model.{module}.{name}.weight"] = w.contiguous()
    if unknown:
        raise _unknown(unknown, "tunekit adapter", "'layers.0.attn.q_proj.lora_a.weight'")
    return out


def peft_to_adapter(
    sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int, dim: int
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`adapter_to_peft` (PEFT names -> tunekit adapter names)."""
    del dim
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, w in sd.items():
        m = _PEFT_RE.match(key)
        tk = hf_to_tunekit_key(f"{m.group(1)}.weight") if m else None
        if tk is None:
            unknown.append(key)
            continue
        rows = m.group(2) == "B" or m.group(3) is not None
        if rows and tk.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            heads = num_heads if tk.endswith("attn.q_proj.weight") else num_kv_heads
            w = _permute_rows(key, w, heads, permute_from_hf)
        name = "lora_magnitude" if m.group(3) else f"lora_{m.group(2).lower()}.weight"
        out[f"{tk[: -len('.weight')]}.{name}"] = w
    if unknown:
        raise _unknown(unknown, "PEFT adapter", "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'")
    return out


def tunekit_to_hf_key(key: str) -> str | None:
    """The HF name of one tunekit key, or None if the table does not know it."""
    if key in _G_TK_TO_HF:
        return _G_TK_TO_HF[key]
    m = _LAYER_RE.match(key)
    if m is None or m.group(2) not in _TK_TO_HF:
        return None
    return f"model.layers.{m.group(1)}.{_TK_TO_HF[m.group(2)]}"


def hf_to_tunekit_key(key: str) -> str | None:
    """The tunekit name of one HF key, or None if the table does not know it."""
    if key in _G_HF_TO_TK:
        return _G_HF_TO_TK[key]
    m = _HF_LAYER_RE.match(key)
    if m is None or m.group(2) not in _HF_TO_TK:
        return None
    return f"layers.{m.group(1)}.{_HF_TO_TK[m.group(2)]}"


_SEGMENTS = {"attn": "self_attn", **PEFT_TARGET_NAMES}


def _pattern_to_hf(pattern: str) -> str:
    # rank/alpha patterns name a target ("v_proj") or a module path ("layers.0.attn.q_proj");
    # PEFT matches them as a suffix of the module name, so renaming each segment is enough.
    return ".".join(_SEGMENTS.get(part, part) for part in pattern.split("."))


def peft_config(adapter_config: Mapping[str, Any], base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """Build PEFT's ``adapter_config.json`` from a LoRASpec-as-dict.

    Args:
        adapter_config: keys ``rank``, ``alpha``, ``dropout``, ``targets`` and optionally
            ``rank_pattern``, ``alpha_pattern`` (tunekit target names), ``use_dora``.
        base_model_name_or_path: recorded for PEFT; the base model directory.

    Raises:
        ConversionError: for an unknown target name.
    """
    targets = list(adapter_config.get("targets", ["q_proj", "v_proj"]))
    bad = [t for t in targets if t not in PEFT_TARGET_NAMES]
    if bad:
        raise ConversionError(
            f"LoRA targets {bad} are not Llama 2 linears; valid targets: {sorted(PEFT_TARGET_NAMES)}"
        )
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(adapter_config.get("rank", 8)),
        "lora_alpha": float(adapter_config.get("alpha", 16.0)),
        "lora_dropout": float(adapter_config.get("dropout", 0.0)),
        "target_modules": sorted(PEFT_TARGET_NAMES[t] for t in targets),
        "rank_pattern": {_pattern_to_hf(k): int(v) for k, v in (adapter_config.get("rank_pattern") or {}).items()},
        "alpha_pattern": {
            _pattern_to_hf(k): float(v) for k, v in (adapter_config.get("alpha_pattern") or {}).items()
        },
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": bool(adapter_config.get("use_dora", False)),
    }
