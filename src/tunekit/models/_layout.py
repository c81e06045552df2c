"""The Llama weight layout, once: key tables, RoPE row permutation, configs, PEFT names.

Every family whose checkpoints follow Llama's layout (Llama 2/3, Mistral, Qwen2.5, Qwen3, ...)
is one :class:`ModelType` record. The record holds *data* - the table of :class:`Weight` rows
(one per tensor: its tunekit, HF and Meta names, symbolic shape, Meta split dim, RoPE rule),
the HF ``model_type`` / ``architectures``, the defaults written into a fresh ``config.json`` -
and the conversion *methods* every family shares, which read that table. A family states only
what differs from Llama 2 (``ModelType.derive``); nothing here branches on a family's name.

Conventions:

- Layer weights are named after ``layers.{i}.`` (tunekit, Meta) / ``model.layers.{i}.`` (HF);
  global weights by their full name.
- tunekit stores q/k for *interleaved* RoPE (Meta's order); HF stores them for rotate-half
  RoPE. A weight with a ``rope`` rule has its rows (1-D: its entries) permuted between the two
  orders in groups of ``heads`` / ``kv_heads`` / one ``head`` - q and k weights, and the q/k
  biases or per-head q/k norms of later families. The LoRA B rows and DoRA magnitudes of such
  a weight follow the same permutation.
- Every method works key by key on any subset of a state dict (one shard), so a checkpointer
  never holds more than the shard it converts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from tunekit.models._weights import (
    _ADAPTER_RE,
    _HF_LAYER_RE,
    _LAYER_RE,
    _LLAMA2_FFN_RULES,
    _LLAMA2_HF_CONFIG,
    _LLAMA2_TOKENIZER_CONFIG,
    _PEFT_RE,
    LLAMA_PEFT_TARGETS,
    LLAMA_WEIGHTS,
    ConversionError,
    ModelDims,
    Weight,
    _check_rows,
    _permute_rows,
    hf_llama3_scaling,
    meta_llama3_scaling,
    permute_from_hf,
    permute_to_hf,
)

__all__ = [
    "LLAMA_PEFT_TARGETS",
    "LLAMA_WEIGHTS",
    "ConversionError",
    "ModelDims",
    "ModelType",
    "Weight",
    "permute_from_hf",
    "permute_to_hf",
]

StateDict = dict[str, Any]


# --- the record ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelType:
    """One model family: its weight table and the conversions checkpointers use.

    The fields are data (their defaults are Llama 2's); the methods are the same for every
    Llama-layout family. Conversion methods work on any subset of keys (one shard).

    Attributes:
        name: the ``model_type`` string configs use (``MODEL_TYPES`` key), e.g. ``"LLAMA2"``.
        display_name: the family's name in messages, e.g. ``"Llama 2"``.
        hf_model_type / hf_architectures: what a fresh ``config.json`` declares.
        weights: the :class:`Weight` table.
        lora_targets: the linears LoRA may adapt (tunekit names, ``LoRASpec.targets``); their
            PEFT names (:attr:`peft_target_names`) follow from the table.
        hf_config_defaults: the fields a fresh ``config.json`` gets after the sizes, RoPE base
            and norm eps (activation, biases, tied embeddings, special token ids ...).
        tokenizer_config: ``tokenizer_config.json`` for the family's tokenizer (without
            ``model_max_length``).
        rope_theta: RoPE base when an HF config does not say.
        max_position_embeddings: context length when a Meta ``params.json`` does not say.
        meta_ffn_rules: ``(ffn_dim_multiplier, multiple_of)`` pairs tried, in order, when
            writing a ``params.json`` for an FFN width.
        hf_skip / meta_skip: regexes of buffers stored in checkpoints but not weights.
        hf_model_types: the ``config.json`` ``model_type`` values this family's code runs
            (default: ``hf_model_type`` alone).
        rope_scaling_types: the ``rope_scaling`` types the builders implement (``"llama3"``).
        qkv_bias: the q/k/v projections have biases (``attention_bias`` is implied).
        explicit_head_dim: ``head_dim`` may differ from ``hidden_size / num_attention_heads``.
        builder: the family's builder with every size as an argument (named in error messages).
        meta_writes_vocab_size: a fresh ``params.json`` states ``vocab_size`` (Llama 3) instead of
            Llama 2's -1 (read from the tokenizer).
    """

    name: str
    display_name: str
    hf_model_type: str = "llama"
    hf_architectures: tuple[str, ...] = ("LlamaForCausalLM",)
    weights: tuple[Weight, ...] = LLAMA_WEIGHTS
    lora_targets: tuple[str, ...] = tuple(LLAMA_PEFT_TARGETS)
    hf_config_defaults: Mapping[str, Any] = field(default_factory=lambda: _LLAMA2_HF_CONFIG)
    tokenizer_config: Mapping[str, Any] = field(default_factory=lambda: _LLAMA2_TOKENIZER_CONFIG)
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    meta_ffn_rules: tuple[tuple[float | None, int], ...] = _LLAMA2_FFN_RULES
    hf_skip: tuple[str, ...] = (r"(^|\.)rotary_emb\.inv_freq$",)
    meta_skip: tuple[str, ...] = (r"^rope\.freqs$",)
    hf_model_types: tuple[str, ...] = ()
    builder: str = "tunekit.models.llama2.llama2"
    meta_writes_vocab_size: bool = False
    rope_scaling_types: tuple[str, ...] = ()
    qkv_bias: bool = False
    explicit_head_dim: bool = False

    def __hash__(self) -> int:  # the mapping fields are not hashable; a family is its name
        return hash(self.name)

    def __repr__(self) -> str:  # the full table is long; name what identifies the row
        return f"ModelType(name={self.name!r}, display_name={self.display_name!r}, {len(self.weights)} weights)"

    def __post_init__(self) -> None:
        problems = []
        for w in self.weights:
            if w.rope not in (None, "heads", "kv_heads", "head"):
                problems.append(f"{w.tunekit}: rope={w.rope!r} is not heads / kv_heads / head / None")
            bad = [s for s in w.shape if s not in ("v", "e", "f", "q", "kv", "hd")]
            if bad:
                problems.append(f"{w.tunekit}: unknown shape symbols {bad}")
        for attr in ("tunekit", "hf", "meta"):
            names = [(w.per_layer, getattr(w, attr)) for w in self.weights if getattr(w, attr) is not None]
            dup = sorted({n for layer, n in names if names.count((layer, n)) > 1})
            if dup:
                problems.append(f"{attr} names used twice: {dup}")
        targets = {w.tunekit[: -len(".weight")].rpartition(".")[2] for w in self.weights
                   if w.tunekit.endswith(".weight") and len(w.shape) == 2}
        missing = [t for t in self.lora_targets if t not in targets]
        if missing:
            problems.append(f"lora_targets {missing} name no matrix of the table")
        if problems:
            raise ValueError(f"model type {self.name!r}: " + "; ".join(problems))

    # ---- defining a family ---------------------------------------------------------------
    def derive(self, *, name: str, display_name: str, hf_renames: Mapping[str, str] | None = None,
               extra_weights: Sequence[Weight] = (), **changes: Any) -> ModelType:
        """A new family that differs from this one only where told.

        Args:
            name / display_name: the new family's ``model_type`` and display name.
            hf_renames: tunekit name -> the new family's HF name, for tensors HF names differently.
            extra_weights: tensors this family adds (q/k/v biases, per-head q/k norms, ...).
            changes: any other field (``hf_model_type``, ``hf_architectures``,
                ``hf_config_defaults``, ``rope_theta``, ...).

        Raises:
            ValueError: a rename names no tensor of this family.
        """
        renames = dict(hf_renames or {})
        unknown = sorted(set(renames) - {w.tunekit for w in self.weights})
        if unknown:
            raise ValueError(f"hf_renames names tensors {self.display_name} does not have: {unknown}")
        weights = tuple(dataclasses.replace(w, hf=renames[w.tunekit]) if w.tunekit in renames else w
                        for w in self.weights) + tuple(extra_weights)
        return dataclasses.replace(self, name=name, display_name=display_name, weights=weights, **changes)

    # ---- key tables (built once per record) ------------------------------------------------
    @cached_property
    def _tables(self) -> dict[str, dict[tuple[bool, str], Weight]]:
        t: dict[str, dict[tuple[bool, str], Weight]] = {"tunekit": {}, "hf": {}, "meta": {}}
        for w in self.weights:
            for fmt in t:
                n = getattr(w, fmt)
                if n is not None:
                    t[fmt][(w.per_layer, n)] = w
        return t

    @cached_property
    def _skips(self) -> tuple[re.Pattern[str], re.Pattern[str]]:
        return (re.compile("|".join(f"(?:{p})" for p in self.hf_skip) or "(?!)"),
                re.compile("|".join(f"(?:{p})" for p in self.meta_skip) or "(?!)"))

    def _lookup(self, key: str, fmt: str) -> tuple[str | None, Weight | None]:
        """(layer index or None, Weight) of ``key`` in format ``fmt``; (None, None) if unknown."""
        table = self._tables[fmt]
        if (False, key) in table:
            return None, table[(False, key)]
        m = (_HF_LAYER_RE if fmt == "hf" else _LAYER_RE).match(key)
        if m is not None and (True, m.group(2)) in table:
            return m.group(1), table[(True, m.group(2))]
        return None, None

    @staticmethod
    def _name(w: Weight, fmt: str, layer: str | None) -> str:
        n = getattr(w, fmt)
        if not w.per_layer:
            return n
        return f"model.layers.{layer}.{n}" if fmt == "hf" else f"layers.{layer}.{n}"

    def _unknown(self, keys: list[str], source: str, known: str) -> ConversionError:
        shown = ", ".join(sorted(keys)[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
        return ConversionError(
            f"{len(keys)} key(s) in the {source} state dict are not {self.display_name} weights: {shown}. "
            f"Expected names look like {known}; is this checkpoint for another model family "
            f"(model_type) or a differently prefixed export?"
        )

    @cached_property
    def _lora_weights(self) -> dict[str, list[Weight]]:
        """LoRA target -> the matrices it adapts."""
        out: dict[str, list[Weight]] = {}
        for w in self.weights:
            module, _, leaf = w.tunekit.rpartition(".")
            target = module.rpartition(".")[2]
            if leaf == "weight" and len(w.shape) == 2 and target in self.lora_targets:
                out.setdefault(target, []).append(w)
        return out

    @property
    def peft_target_names(self) -> dict[str, str]:
        """tunekit LoRA target -> PEFT/HF module name (``w1`` -> ``gate_proj``), from the table."""
        return {t: ws[0].hf[: -len(".weight")].rpartition(".")[2]
                for t in self.lora_targets for ws in [self._lora_weights[t]]}

    @cached_property
    def _hf_segments(self) -> dict[str, str]:
        # tunekit -> HF module path segments of the LoRA targets ("attn" -> "self_attn",
        # "w1" -> "gate_proj"), for PEFT rank/alpha patterns.
        seg: dict[str, str] = {}
        for ws in self._lora_weights.values():
            for w in ws:
                tk, hf = w.tunekit.split(".")[:-1], w.hf.split(".")[:-1]
                if len(tk) == len(hf):
                    seg.update(zip(tk, hf))
        return seg

    def _rope_heads(self, w: Weight, num_heads: int, num_kv_heads: int) -> int:
        return {"heads": num_heads, "kv_heads": num_kv_heads, "head": 1}[w.rope]

    def _convert(self, sd: Mapping[str, torch.Tensor], src: str, dst: str, heads: tuple[int, int] | None,
                 skip: re.Pattern[str] | None, known: str, source: str) -> StateDict:
        out: StateDict = {}
        unknown: list[str] = []
        nameless: list[str] = []
        permute = permute_from_hf if src == "hf" else permute_to_hf
        for key, t in sd.items():
            if skip is not None and skip.search(key):
                continue
            layer, w = self._lookup(key, src)
            if w is None:
                unknown.append(key)
                continue
            if getattr(w, dst) is None:
                nameless.append(key)
                continue
            if heads is not None and w.rope is not None:
                n = self._rope_heads(w, *heads)
                _check_rows(key, t, n)
                t = _permute_rows(t, n, permute)
            out[self._name(w, dst, layer)] = t
        if unknown:
            raise self._unknown(unknown, source, known)
        if nameless:
            fmt = {"hf": "HF", "meta": "Meta", "tunekit": "tunekit"}[dst]
            raise ConversionError(
                f"{self.display_name} has no {fmt} name for {len(nameless)} key(s): "
                f"{', '.join(sorted(nameless)[:10])}; "
                f"a {self.display_name} checkpoint cannot be written in {fmt} format"
                + (" (keep it in HF format)." if dst == "meta" else ".")
            )
        return out

    # ---- HF <-> tunekit <-> Meta -----------------------------------------------------------
    def hf_to_tunekit(self, sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int,
                      dim: int) -> StateDict:
        """Rename HF keys to tunekit keys and permute RoPE rows (q/k) for interleaved RoPE.

        ``rotary_emb.inv_freq`` buffers are skipped. ``dim`` (``hidden_size``) is not needed:
        head dims come from each weight's rows.

        Raises:
            ConversionError: listing every key that is not one of this family's HF weights.
        """
        del dim
        return self._convert(sd, "hf", "tunekit", (num_heads, num_kv_heads), self._skips[0],
                             "'model.layers.0.self_attn.q_proj.weight'", "HF")

    def tunekit_to_hf(self, sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int,
                      dim: int) -> StateDict:
        """Rename tunekit keys to HF keys and permute RoPE rows back to rotate-half order.

        Raises:
            ConversionError: listing every key that is not one of this family's tunekit weights.
        """
        del dim
        return self._convert(sd, "tunekit", "hf", (num_heads, num_kv_heads), None,
                             "'layers.0.attn.q_proj.weight'", "tunekit")

    def meta_to_tunekit(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Rename Meta keys to tunekit keys (same RoPE order, no permutation); skips ``rope.freqs``."""
        return self._convert(sd, "meta", "tunekit", None, self._skips[1], "'layers.0.attention.wq.weight'", "Meta")

    def tunekit_to_meta(self, sd: Mapping[str, torch.Tensor]) -> StateDict:
        """Rename tunekit keys to Meta keys.

        A whole model with tied embeddings (no ``output.weight``; Llama 3.2 1B/3B) gets
        ``output.weight`` = the embedding: Meta's files store both and its code ties nothing.

        Raises:
            ConversionError: a key that is unknown or has no Meta name in this family.
        """
        if "tok_embeddings.weight" in sd and "norm.scale" in sd and "output.weight" not in sd:
            sd = {**sd, "output.weight": sd["tok_embeddings.weight"]}
        return self._convert(sd, "tunekit", "meta", None, None, "'layers.0.attn.q_proj.weight'", "tunekit")

    def tunekit_to_hf_key(self, key: str) -> str | None:
        """The HF name of one tunekit key, or None if the table does not know it."""
        layer, w = self._lookup(key, "tunekit")
        return None if w is None else self._name(w, "hf", layer)

    def hf_to_tunekit_key(self, key: str) -> str | None:
        """The tunekit name of one HF key, or None if the table does not know it."""
        layer, w = self._lookup(key, "hf")
        return None if w is None else self._name(w, "tunekit", layer)

    def peft_module_name(self, module: str) -> str:
        """The PEFT/HF module path of a tunekit module path (``layers.0.attn.q_proj`` ->
        ``model.layers.0.self_attn.q_proj``); unknown paths come back unchanged."""
        hf = self.tunekit_to_hf_key(f"{module}.weight")
        return module if hf is None else hf[: -len(".weight")]

    def meta_merge_dim(self, key: str) -> int | None:
        """The dim a Meta model-parallel shard splits ``key`` along (None: replicated).

        Raises:
            ConversionError: for a key the table does not know.
        """
        _, w = self._lookup(key, "meta")
        if w is None:
            raise self._unknown([key], "Meta", "'layers.0.attention.wq.weight'")
        return w.split

    # ---- sizes ---------------------------------------------------------------------------
    def hf_config_dims(self, config: Mapping[str, Any]) -> ModelDims:
        """Read the sizes from an HF ``config.json`` dict.

        Raises:
            ConversionError: when a required field is missing.
        """
        missing = [k for k in ("num_hidden_layers", "num_attention_heads", "hidden_size") if k not in config]
        if missing:
            raise ConversionError(f"config.json lacks {', '.join(missing)}")
        heads = int(config["num_attention_heads"])
        return ModelDims(
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            embed_dim=int(config["hidden_size"]),
            vocab_size=config.get("vocab_size"),
            intermediate_dim=config.get("intermediate_size"),
            declared_head_dim=int(config["head_dim"]) if config.get("head_dim") else None,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def meta_params_dims(self, params: Mapping[str, Any]) -> ModelDims:
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
        return ModelDims(
            num_layers=int(params["n_layers"]),
            num_heads=heads,
            num_kv_heads=int(params.get("n_kv_heads") or heads),
            embed_dim=dim,
            vocab_size=int(vocab) if vocab is not None and int(vocab) > 0 else None,
            intermediate_dim=hidden,
        )

    def expected_shapes(self, d: ModelDims) -> dict[str, tuple[int | None, ...]]:
        """tunekit key -> shape for a plain model of these sizes (None: not checked)."""
        hd = d.head_dim
        sizes = {"v": d.vocab_size, "e": d.embed_dim, "f": d.intermediate_dim, "q": d.num_heads * hd,
                 "kv": d.num_kv_heads * hd, "hd": hd}
        shapes: dict[str, tuple[int | None, ...]] = {}
        for w in self.weights:
            if not w.per_layer and not (d.tie_word_embeddings and w.tunekit == "output.weight"):
                shapes[w.tunekit] = tuple(sizes[s] for s in w.shape)
        for i in range(d.num_layers):
            for w in self.weights:
                if w.per_layer:
                    shapes[f"layers.{i}.{w.tunekit}"] = tuple(sizes[s] for s in w.shape)
        return shapes

    # ---- writing configs (cross-format export) ---------------------------------------------
    def rope_theta_of(self, config: Mapping[str, Any]) -> float:
        """RoPE base of an HF ``config.json`` (top-level ``rope_theta``, or transformers 5's
        ``rope_parameters``); the family's default when absent."""
        rp = config.get("rope_parameters") or {}
        return float(config.get("rope_theta") or rp.get("rope_theta") or self.rope_theta)

    def hf_config(self, d: ModelDims, *, norm_eps: float, rope_theta: float, max_position_embeddings: int,
                  dtype: torch.dtype, rope_scaling: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A ``config.json`` for this family's HF class with these sizes (as HF ships it).

        ``rope_scaling``: the four fields of a ``llama3`` scaling (written as HF's ``rope_scaling``).

        Raises:
            ConversionError: when ``d`` lacks the vocabulary or FFN size.
        """
        if d.vocab_size is None or d.intermediate_dim is None:
            raise ConversionError("hf_config needs vocab_size and intermediate_dim")
        config = {
            "architectures": list(self.hf_architectures),
            "model_type": self.hf_model_type,
            "vocab_size": d.vocab_size,
            "hidden_size": d.embed_dim,
            "intermediate_size": d.intermediate_dim,
            "num_hidden_layers": d.num_layers,
            "num_attention_heads": d.num_heads,
            "num_key_value_heads": d.num_kv_heads,
            "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": norm_eps,
            "rope_theta": rope_theta,
            **self.hf_config_defaults,
            "torch_dtype": str(dtype).removeprefix("torch."),
        }
        if d.declared_head_dim is not None or self.explicit_head_dim:
            config["head_dim"] = d.head_dim
        if d.tie_word_embeddings:
            config["tie_word_embeddings"] = True
        if rope_scaling is not None:
            config["rope_scaling"] = hf_llama3_scaling(rope_scaling)
        return config

    def hf_tokenizer_config(self, model_max_length: int) -> dict[str, Any]:
        """``tokenizer_config.json`` for this family's tokenizer."""
        return {**self.tokenizer_config, "model_max_length": model_max_length}

    def meta_params(self, d: ModelDims, *, norm_eps: float, rope_theta: float,
                    rope_scaling: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A Meta ``params.json`` for these sizes, written as Meta ships it.

        ``rope_scaling`` (``llama3``): ``use_scaled_rope: true`` etc. (``_weights.meta_llama3_scaling``).

        ``vocab_size`` is -1 (Meta reads it from the tokenizer); ``n_kv_heads`` and ``rope_theta``
        appear only when they differ from ``n_heads`` and 10000 (Llama 2's reference code rejects
        keys it does not know). The FFN width becomes Meta's ``multiple_of`` /
        ``ffn_dim_multiplier`` rule, chosen so that :meth:`meta_params_dims` gives it back.

        Raises:
            ConversionError: when ``d`` lacks the FFN size.
        """
        if d.intermediate_dim is None:
            raise ConversionError("meta_params needs intermediate_dim")
        params: dict[str, Any] = {"dim": d.embed_dim, "n_layers": d.num_layers, "n_heads": d.num_heads}
        if d.num_kv_heads != d.num_heads:
            params["n_kv_heads"] = d.num_kv_heads
        base = int(2 * 4 * d.embed_dim / 3)
        rules = [*self.meta_ffn_rules, (None, d.intermediate_dim) if base <= d.intermediate_dim
                 else (d.intermediate_dim / base, d.intermediate_dim)]
        for ffn, multiple_of in rules:
            trial = {"dim": d.embed_dim, "n_layers": 1, "n_heads": 1, "multiple_of": multiple_of,
                     "ffn_dim_multiplier": ffn}
            if self.meta_params_dims(trial).intermediate_dim == d.intermediate_dim:
                if ffn is not None:
                    params["ffn_dim_multiplier"] = ffn
                params["multiple_of"] = multiple_of
                break
        else:  # pragma: no cover - the last rule reproduces any width by construction
            raise ConversionError(f"no multiple_of rule gives intermediate_dim={d.intermediate_dim}")
        params["norm_eps"] = norm_eps
        if rope_theta != 10000.0:
            params["rope_theta"] = rope_theta
        params["vocab_size"] = d.vocab_size if self.meta_writes_vocab_size and d.vocab_size else -1
        if rope_scaling is not None:
            params.update(meta_llama3_scaling(rope_scaling))
        return params

    # ---- LoRA adapters <-> PEFT ------------------------------------------------------------
    def adapter_to_peft(self, sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int,
                        dim: int) -> StateDict:
        """Convert a tunekit adapter state dict to PEFT ``adapter_model.safetensors`` names.

        ``layers.0.attn.q_proj.lora_a.weight`` -> ``base_model.model.model.layers.0.self_attn.q_proj
        .lora_A.weight``; DoRA's ``<linear>.lora_magnitude`` -> ``<module>.lora_magnitude_vector
        .weight``. The B matrices (and DoRA magnitudes) of a RoPE-ordered weight (q/k) get the
        weight's row permutation, since their rows are the same output features.

        Raises:
            ConversionError: listing keys that are not LoRA weights of a known linear.
        """
        del dim
        out: StateDict = {}
        unknown: list[str] = []
        for key, t in sd.items():
            m = _ADAPTER_RE.match(key)
            layer, w = self._lookup(f"{m.group(1)}.weight", "tunekit") if m else (None, None)
            if w is None:
                unknown.append(key)
                continue
            rows = m.group(2) == "b" or m.group(3) is not None  # output-feature rows
            if rows and w.rope is not None:
                t = _permute_rows(t, self._rope_heads(w, num_heads, num_kv_heads), permute_to_hf)
            module = self._name(w, "hf", layer)[: -len(".weight")]
            name = "lora_magnitude_vector" if m.group(3) else f"lora_{m.group(2).upper()}"
            out[f"base_model.model.{module}.{name}.weight"] = t.contiguous()
        if unknown:
            raise self._unknown(unknown, "tunekit adapter", "'layers.0.attn.q_proj.lora_a.weight'")
        return out

    def peft_to_adapter(self, sd: Mapping[str, torch.Tensor], num_heads: int, num_kv_heads: int,
                        dim: int) -> StateDict:
        """Inverse of :meth:`adapter_to_peft` (PEFT names -> tunekit adapter names)."""
        del dim
        out: StateDict = {}
        unknown: list[str] = []
        for key, t in sd.items():
            m = _PEFT_RE.match(key)
            layer, w = self._lookup(f"{m.group(1)}.weight", "hf") if m else (None, None)
            if w is None:
                unknown.append(key)
                continue
            rows = m.group(2) == "B" or m.group(3) is not None
            if rows and w.rope is not None:
                t = _permute_rows(t, self._rope_heads(w, num_heads, num_kv_heads), permute_from_hf)
            module = self._name(w, "tunekit", layer)[: -len(".weight")]
            name = "lora_magnitude" if m.group(3) else f"lora_{m.group(2).lower()}.weight"
            out[f"{module}.{name}"] = t
        if unknown:
            raise self._unknown(unknown, "PEFT adapter",
                                "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'")
        return out

    def _pattern_to_hf(self, pattern: str) -> str:
        # rank/alpha patterns name a target ("v_proj") or a module path ("layers.0.attn.q_proj");
        # PEFT matches them as a suffix of the module name, so renaming each segment is enough.
        return ".".join(self._hf_segments.get(part, part) for part in pattern.split("."))

    def peft_config(self, adapter_config: Mapping[str, Any],
                    base_model_name_or_path: str | None = None) -> dict[str, Any]:
        """Build PEFT's ``adapter_config.json`` from a LoRASpec-as-dict.

        Args:
            adapter_config: keys ``rank``, ``alpha``, ``dropout``, ``targets`` and optionally
                ``rank_pattern``, ``alpha_pattern`` (tunekit target names), ``use_dora``.
            base_model_name_or_path: recorded for PEFT; the base model directory.

        Raises:
            ConversionError: for an unknown target name.
        """
        names = self.peft_target_names
        targets = list(adapter_config.get("targets", ["q_proj", "v_proj"]))
        bad = [t for t in targets if t not in names]
        if bad:
            raise ConversionError(
                f"LoRA targets {bad} are not {self.display_name} linears; valid targets: {sorted(names)}"
            )
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": int(adapter_config.get("rank", 8)),
            "lora_alpha": float(adapter_config.get("alpha", 16.0)),
            "lora_dropout": float(adapter_config.get("dropout", 0.0)),
            "target_modules": sorted(names[t] for t in targets),
            "rank_pattern": {self._pattern_to_hf(k): int(v)
                             for k, v in (adapter_config.get("rank_pattern") or {}).items()},
            "alpha_pattern": {self._pattern_to_hf(k): float(v)
                              for k, v in (adapter_config.get("alpha_pattern") or {}).items()},
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": bool(adapter_config.get("use_dora", False)),
        }
