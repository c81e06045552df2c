"""torchtune's config vocabulary in tunekit's terms (torch-free).

Two users: ``tunekit import-torchtune`` (:func:`translate`: a torchtune recipe config -> a tunekit
primary config, with every setting it could not carry over and why), and the "did you mean"
paragraphs of :mod:`tunekit.config.errors` (:func:`torchtune_key_hint`,
:func:`torchtune_option_hint`), so a torchtune key typed on tunekit's command line is answered
with tunekit's own key. ``docs/migrating-from-torchtune.md`` has the tables for people.

QLoRA (``qlora_*`` builders, ``quantize_base``), activation offloading, the optimizer in backward and
8-bit / paged / CPU-offload AdamW (:mod:`tunekit.config._torchtune_optim`) carry over; a pair tunekit
refuses (the optimizer in backward with accumulation or clipping, ...) keeps the optimizer steps as
configured and leaves the memory saver out, named with why, so the written config validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml

from tunekit.config._torchtune_optim import NEAR_OPTIMIZERS, OPTIMIZERS, translate_optimizer

__all__ = ["TORCHTUNE_KEYS", "Translation", "TorchtuneConfigError", "torchtune_key_hint", "torchtune_option_hint",
           "translate"]


class TorchtuneConfigError(ValueError):
    """A torchtune config that cannot be translated at all (one paragraph: key, value, why)."""


#: torchtune key (dotted path) -> (tunekit override or None when there is none, explanation).
TORCHTUNE_KEYS: dict[str, tuple[str | None, str]] = {
    "resume_from_checkpoint": ("resume=auto", "continues from the run's newest complete checkpoint "
                               "(`resume=RUN/epoch_N` picks one); no recipe_checkpoint/adapter_checkpoint needed"),
    "model.lora_rank": ("lora.rank=8", "LoRA settings live under `lora`, not `model`"),
    "model.lora_alpha": ("lora.alpha=16", "LoRA settings live under `lora`, not `model`"),
    "model.lora_dropout": ("lora.dropout=0.05", "LoRA settings live under `lora`, not `model`"),
    "model.lora_attn_modules": ("lora.targets=[q_proj,v_proj]", "one list `lora.targets` names every adapted "
                                "linear: q_proj k_proj v_proj output_proj w1 w2 w3 output"),
    "model.apply_lora_to_mlp": ("lora.targets=[q_proj,v_proj,w1,w2,w3]", "add w1 w2 w3 to `lora.targets`"),
    "model.apply_lora_to_output": ("lora.targets=[q_proj,v_proj,output]", "add output to `lora.targets`"),
    "model.use_dora": ("lora.use_dora=true", "LoRA settings live under `lora`, not `model`"),
    "model.quantize_base": ("lora.quantize_base=nf4", "QLoRA as torchtune's qlora_* builders: the frozen base "
                            "linears in 4-bit NormalFloat, blocks of 64 with double-quantized scales, on "
                            "lora_finetune, one GPU or FSDP2; needs pip install \"tunekit[qlora]\""),
    "enable_activation_checkpointing": ("activation_checkpointing=true", "tunekit's name for the same switch"),
    "enable_activation_offloading": ("activation_offloading=true", "saved activations in pinned CPU memory, "
                                     "copies overlapped on CUDA streams; use it with activation_checkpointing=true"),
    "optimizer_in_bwd": ("optimizer_in_backward=true", "each parameter is stepped and its gradient freed during "
                         "backward; one process only, and refused with gradient_accumulation_steps>1 or "
                         "clip_grad_norm, as torchtune's recipes refuse them"),
    "fsdp.cpu_offload": (None, "tunekit's FSDP2 keeps the sharded weights, gradients and optimizer states on the "
                         "GPUs; lora.quantize_base=nf4 or optimizer=adamw8bit lower the memory instead"),
    "fsdp_cpu_offload": (None, "tunekit's FSDP2 keeps the sharded weights, gradients and optimizer states on the "
                         "GPUs; lora.quantize_base=nf4 or optimizer=adamw8bit lower the memory instead"),
    "custom_sharded_layers": (None, "tunekit's FSDP2 units are fixed: one per decoder layer, and the root "
                              "(embeddings, final norm, output) as one more"),
    "fsdp_reshard_after_forward": (None, "tunekit's FSDP2 always frees the gathered weights after each layer's "
                                   "forward (ZeRO-3)"),
    "tokenizer.max_seq_len": ("max_seq_len=2048", "one top-level `max_seq_len` truncates (and packs) every sample"),
    "dataset.max_seq_len": ("max_seq_len=2048", "one top-level `max_seq_len` truncates (and packs) every sample"),
    "dataset.packed": ("packed=true", "packing is a top-level switch"),
    "dataset.train_on_input": ("train_on_input=true", "a top-level switch (tunekit's default is false, "
                               "torchtune's Alpaca default true)"),
    "run_val_every_n_steps": ("eval_every_n_steps=100", "tunekit's name; validation rows come from "
                              "`dataset.val_fraction`"),
    "log_peak_memory_stats": (None, "peak memory is logged on CUDA at every log step, always"),
    "save_adapter_weights_only": (None, "a LoRA checkpoint always holds the merged model/ and the adapter/ "
                                  "(PEFT) beside it"),
    "shuffle": (None, "the training data is always shuffled (by seed and epoch, resumable mid-epoch)"),
    "profiler": (None, "no built-in profiler; wrap the recipe with torch.profiler in a copied recipe "
                 "(`tunekit cp lora_finetune.py my_recipe.py`)"),
    "mixed_precision": (None, "int8 mixed-precision training is not implemented; dtype=bf16 is the fast path"),
    "checkpointer.output_dir": ("output_dir=/path/to/run", "a run writes into its own output_dir (the Hydra "
                                "run directory by default); the checkpointer's output_dir follows it"),
}
# torchtune key -> {its value: tunekit's value} where the two take different kinds of value
_HINT_VALUES = {"model.quantize_base": {"true": "nf4", "1": "nf4", "false": "null", "0": "null"}}
# torchtune's model-builder arguments typed at the top level (``lora_rank=8``): named by their bare name too
_LOOSE = {key.rsplit(".", 1)[-1]: key for key in TORCHTUNE_KEYS if key.startswith("model.")}

# torchtune component (last dotted part) -> tunekit group option
_LOSSES = {"CrossEntropyLoss": "cross_entropy", "CEWithChunkedOutputLoss": "chunked_cross_entropy"}
_LOGGERS = {"DiskLogger": "jsonl", "StdoutLogger": "stdout", "TensorBoardLogger": "tensorboard",
            "WandBLogger": "wandb"}
_CHECKPOINTERS = {"FullModelHFCheckpointer": "hf", "FullModelMetaCheckpointer": "meta"}
_INSTRUCT = ("alpaca_dataset", "alpaca_cleaned_dataset", "instruct_dataset")
_CHAT = ("chat_dataset", "slimorca_dataset")
_SIZE_SUFFIX = re.compile(r"_(base|instruct)$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_FILE_SUFFIXES = {"json", "jsonl", "yaml", "yml", "csv", "tsv", "txt", "parquet", "arrow", "pt", "pth", "bin",
                  "safetensors", "model", "gguf"}


def _last(component: Any) -> str:
    return str(component).rsplit(".", 1)[-1]


def torchtune_key_hint(full_key: str, value: str | None = None) -> str | None:
    """A sentence for a torchtune key used on tunekit (``model.lora_rank`` -> ``lora.rank``), or None.

    Args:
        value: the value the user gave (from ``key=value``), used in the suggested override.
    """
    key = full_key.lstrip("+~")
    name = key if key in TORCHTUNE_KEYS else _LOOSE.get(key)
    if name is None:
        return None
    override, why = TORCHTUNE_KEYS[name]
    if override is None:
        return f"`{name}` is a torchtune setting with no tunekit equivalent: {why}."
    if name == "resume_from_checkpoint" and value is not None and value.strip().lower() in ("false", "0", "no"):
        return f"`{name}` is torchtune's key; tunekit starts a fresh run unless `resume=auto|DIR` is set: drop it."
    simple = value is not None and not any(c in value for c in "[]{},") and not override.endswith("]")
    if simple and name in _HINT_VALUES:  # torchtune's boolean -> tunekit's value (True -> nf4)
        mapped = _HINT_VALUES[name].get(str(value).strip().lower())
        override = f"{override.split('=', 1)[0]}={mapped}" if mapped else override
    elif simple and not override.startswith("resume="):
        value = value.lower() if value.lower() in ("true", "false") else value  # torchtune's YAML writes True
        override = f"{override.split('=', 1)[0]}={value}"
    return f"`{name}` is torchtune's key; in tunekit write `{override}` ({why})."


def torchtune_option_hint(group: str, option: str) -> str | None:
    """For ``optimizer=torch.optim.AdamW`` (a component path where tunekit's groups take an option
    name): the option it corresponds to, or how to set the component."""
    if not _DOTTED.match(option) or option.rsplit(".", 1)[-1].lower() in _FILE_SUFFIXES:
        return None  # not a pkg.Class path (`dataset=data.json` is a file given as an option)
    known = {"optimizer": OPTIMIZERS, "loss": _LOSSES,
             "metric_logger": _LOGGERS, "checkpointer": _CHECKPOINTERS}.get(group, {})
    match = known.get(option) or known.get(_last(option))
    if group == "model":
        match = _model_option(option, None)
    if match:
        qlora = " with lora.quantize_base=nf4 (QLoRA)" if _last(option).startswith("qlora_") else ""
        return (f"`{group}` is a config group choosing a shipped option by name, not a component path: "
                f"`{group}={match}`{qlora} is tunekit's option for {option}.")
    near = NEAR_OPTIMIZERS.get(option) if group == "optimizer" else None
    closest = f" tunekit's closest option is `optimizer={near[0]}` ({near[1]})." if near else ""
    return (f"`{group}` is a config group choosing a shipped option by name (torchtune's `{group}=pkg.Class` "
            f"shorthand sets its `_component_`): keep an option and set the component, "
            f"`{group}._component_={option}`.{closest}")


def _model_option(component: str, options: set[str] | None) -> str | None:
    name = _SIZE_SUFFIX.sub("", _last(component).removeprefix("qlora_").removeprefix("lora_"))
    if options is None or name in options:
        return name
    return None


# ---------------------------------------------------------------------------------- translate
@dataclass
class Translation:
    """A translated config: ``recipe``, the YAML ``text``, and the settings left behind."""

    recipe: str
    config: dict[str, Any]
    defaults: dict[str, str]
    not_carried: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    target: str = "THIS.yaml"  # the file it is written to, named in the header

    @property
    def text(self) -> str:
        head = [f"# tunekit {self.recipe} config translated from torchtune's {self.source} by "
                "`tunekit import-torchtune`.", f"# Check it with `tunekit validate {self.target}`; run it with "
                f"`tunekit run {self.target}`."]
        if self.not_carried:
            head.append("# Not carried over (no tunekit equivalent, or a different behaviour):")
            head += [f"#   {key}: {why}" for key, why in self.not_carried]
        if self.notes:
            head.append("# Notes:")
            head += [f"#   {note}" for note in self.notes]
        defaults = [f"{self.recipe}_schema", *({g: o} for g, o in self.defaults.items()), "_self_"]
        body = yaml.safe_dump({"defaults": defaults}, sort_keys=False, default_flow_style=False)
        body += "\n" + yaml.safe_dump(self.config, sort_keys=False, default_flow_style=None, width=110)
        return "\n".join(head) + "\n" + body


class _Reader:
    """Walks a torchtune config, remembering which keys were looked at."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seen: set[str] = set()

    def get(self, dotted: str, default: Any = None) -> Any:
        self.seen.add(dotted)
        node: Any = self.cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def unseen(self) -> list[str]:
        out = []
        for key, value in self.cfg.items():
            if isinstance(value, dict):
                out += [f"{key}.{k}" for k in value if f"{key}.{k}" not in self.seen and key not in self.seen]
            elif key not in self.seen:
                out.append(key)
        return out


def checkpoint_files(value: Any, where: str) -> list[str]:
    """torchtune's ``checkpoint_files``: a list, or ``{filename_format, max_filename}``
    (``model-{}-of-{}.safetensors`` with ``"00004"`` -> ``model-00001-of-00004.safetensors`` ...)."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict) and "filename_format" in value and "max_filename" in value:
        fmt, last = str(value["filename_format"]), str(value["max_filename"])
        if not last.isdigit() or fmt.count("{}") != 2:
            raise TorchtuneConfigError(
                f"`{where}`: filename_format {fmt!r} with max_filename {last!r} is not torchtune's form "
                f"(a format with two {{}} and a zero-padded number such as \"00004\"); list the files instead.")
        return [fmt.format(str(i).zfill(len(last)), last) for i in range(1, int(last) + 1)]
    raise TorchtuneConfigError(f"`{where}` is {value!r}: expected a list of file names or "
                               f"{{filename_format: ..., max_filename: ...}}.")


def _model(r: _Reader, out: Translation, models: set[str]) -> None:
    component = r.get("model._component_")
    if not component:
        raise TorchtuneConfigError("the config has no `model._component_`, so it is not a torchtune recipe config "
                                   "(expected e.g. `model: {_component_: torchtune.models.llama2.lora_llama2_7b}`).")
    option = _model_option(str(component), models)
    if option is None:
        raise TorchtuneConfigError(
            f"`model._component_`={component}: tunekit has no such model (options: {', '.join(sorted(models))}). "
            f"Pick the closest with `model=<option>` in a config of your own (`tunekit cp lora_finetune my.yaml`).")
    out.defaults["model"] = option
    if option == "mistral_7b":
        out.notes.append("tunekit's mistral_7b is Mistral 7B v0.3 (vocabulary 32768); torchtune's is v0.1 (32000): "
                         "point checkpointer.checkpoint_dir at v0.3 weights")
    qlora = _last(component).startswith("qlora_") or bool(r.get("model.quantize_base"))
    if out.recipe != "lora_finetune":
        if qlora:
            out.not_carried.append(("model.quantize_base: True", "QLoRA's 4-bit base is a LoRA setting (a "
                                    "lora_*/qlora_* builder, tunekit's lora_finetune); full fine-tuning trains "
                                    "every weight in dtype"))
        return
    targets = list(r.get("model.lora_attn_modules") or ["q_proj", "v_proj"])
    if r.get("model.apply_lora_to_mlp"):
        targets += ["w1", "w2", "w3"]
    if r.get("model.apply_lora_to_output"):
        targets.append("output")
    node: dict[str, Any] = {"targets": targets}
    pairs = (("lora_rank", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"), ("use_dora", "use_dora"))
    for tt, tk in pairs:
        value = r.get(f"model.{tt}")
        if value is not None:
            node[tk] = float(value) if tk == "alpha" else value
    if qlora:
        node["quantize_base"] = "nf4"
        node["merge_base"] = "dequantized"
        out.notes.append("QLoRA became lora.quantize_base=nf4 (torchao's NF4 as torchtune's: blocks of 64, "
                         "double-quantized scales; pip install \"tunekit[qlora]\"); lora.merge_base=dequantized adds "
                         "the adapter to the dequantized NF4 base in the saved model, as torchtune's merge does "
                         "(`original`: to the checkpoint's own bf16 base, as PEFT does)")
    out.config["lora"] = node


def _checkpointer(r: _Reader, out: Translation) -> None:
    component = r.get("checkpointer._component_")
    option = _CHECKPOINTERS.get(_last(component)) if component else "hf"
    if option is None:
        raise TorchtuneConfigError(
            f"`checkpointer._component_`={component}: tunekit reads HF (FullModelHFCheckpointer) and Meta "
            f"(FullModelMetaCheckpointer) checkpoints; convert torchtune-format weights to HF first.")
    out.defaults["checkpointer"] = option
    node: dict[str, Any] = {}
    if r.get("checkpointer.checkpoint_dir") is not None:
        node["checkpoint_dir"] = str(r.get("checkpointer.checkpoint_dir")).rstrip("/") or "/"
    files = r.get("checkpointer.checkpoint_files")
    if files is not None:
        node["checkpoint_files"] = checkpoint_files(files, "checkpointer.checkpoint_files")
    if r.get("checkpointer.model_type") is not None:
        node["model_type"] = str(r.get("checkpointer.model_type"))
    for key in ("adapter_checkpoint", "recipe_checkpoint"):
        r.get(f"checkpointer.{key}")
    r.get("checkpointer.output_dir")
    if r.get("checkpointer.resume_from_checkpoint") or r.get("resume_from_checkpoint"):
        out.config["resume"] = "auto"
        out.notes.append("resume_from_checkpoint: True became resume=auto (the newest complete checkpoint of "
                         "this run's output directory)")
    if node:
        out.config["checkpointer"] = node


def _tokenizer(r: _Reader, out: Translation) -> None:
    component = _last(r.get("tokenizer._component_") or "")
    path = r.get("tokenizer.path")
    ckpt = out.config.get("checkpointer", {}).get("checkpoint_dir")
    beside = path is None or ckpt is None or str(PurePosixPath(str(path)).parent).rstrip("/") in (
        ckpt, f"{ckpt}/original")
    if component in ("llama2_tokenizer", "llama3_tokenizer") and not beside:
        out.defaults["tokenizer"] = component.removesuffix("_tokenizer")
        out.config["tokenizer"] = {"path": str(path)}
    else:
        out.defaults["tokenizer"] = "auto"
        if not beside:
            out.not_carried.append(("tokenizer.path", f"{path}: tokenizer=auto reads the tokenizer shipped with "
                                    "the checkpoint (set tokenizer=hf tokenizer.path=... for another one)"))
    for key in ("max_seq_len",):
        value = r.get(f"tokenizer.{key}")
        if value is not None:
            out.config["max_seq_len"] = int(value)
        elif f"tokenizer.{key}" in _keys(r.cfg):
            out.notes.append("tokenizer.max_seq_len: null (torchtune: no truncation) has no tunekit equivalent; "
                             "max_seq_len keeps tunekit's default of 512 tokens: raise it to your longest sample")
    for key in ("merges_file", "special_tokens_path"):  # the tokenizer's other files: read with it
        r.get(f"tokenizer.{key}")
    if r.get("tokenizer.prompt_template") is not None:
        out.not_carried.append(("tokenizer.prompt_template", "templates are a data set setting "
                                "(dataset.template: alpaca | llama2_chat | model)"))


def _keys(cfg: dict[str, Any]) -> set[str]:
    return {f"{k}.{kk}" for k, v in cfg.items() if isinstance(v, dict) for kk in v} | set(cfg)


def _dataset(r: _Reader, out: Translation) -> None:
    spec = r.cfg.get("dataset")
    r.seen.add("dataset")
    if isinstance(spec, list):
        out.not_carried.append(("dataset", "a list of data sets (concatenated) is not supported: merge them into "
                                "one JSON/JSONL file"))
        spec = spec[0] if spec and isinstance(spec[0], dict) else {}
    spec = spec if isinstance(spec, dict) else {}
    name = _last(spec.get("_component_", "alpaca_dataset"))
    instruct = name in _INSTRUCT
    out.defaults["dataset"] = "alpaca" if instruct or name not in _CHAT else "chat"
    node: dict[str, Any] = {}
    source = spec.get("source")
    files = spec.get("data_files")
    if source in ("json", "csv", "parquet") and files:
        node["source"] = str(files[0] if isinstance(files, list) else files)
    else:
        hub = source or {"alpaca_dataset": "tatsu-lab/alpaca", "alpaca_cleaned_dataset": "yahma/alpaca-cleaned",
                         "slimorca_dataset": "Open-Orca/SlimOrca-Dedup"}.get(name, name)
        out.not_carried.append((f"dataset._component_={spec.get('_component_', name)}",
                                f"tunekit reads local JSON/JSONL files, not Hub data sets: save {hub} as JSON "
                                f"and set dataset.source=/path/to/data.json"))
    if name not in _INSTRUCT + _CHAT:
        out.not_carried.append(("dataset", f"{name} has no tunekit counterpart; the Alpaca format "
                                "(instruction/input/output) was assumed"))
    train_on_input = spec.get("train_on_input", True if instruct else False)
    out.config["train_on_input"] = bool(train_on_input)
    if instruct and "train_on_input" not in spec:
        out.notes.append("train_on_input: true is torchtune's Alpaca default (tunekit's is false: loss on the "
                         "response only); written explicitly so the run trains the same way")
    if "packed" in spec:
        out.config["packed"] = bool(spec["packed"])
    if "max_seq_len" in spec and spec["max_seq_len"] is not None and "max_seq_len" not in out.config:
        out.config["max_seq_len"] = int(spec["max_seq_len"])
    if spec.get("split", "train") != "train":
        out.not_carried.append((f"dataset.split={spec['split']}", "tunekit splits one file itself "
                                "(dataset.val_fraction)"))
    node["val_fraction"] = 0.0
    out.notes.append("dataset.val_fraction: 0.0 trains on every row as torchtune does; tunekit's default holds "
                     "out 10% for a validation loss")
    for key in sorted(set(spec) - {"_component_", "source", "data_files", "train_on_input", "packed",
                                   "max_seq_len", "split", "column_map"}):
        out.not_carried.append((f"dataset.{key}", "no tunekit equivalent"))
    out.config["dataset"] = node


def _optimizer(r: _Reader, out: Translation) -> None:
    r.seen.add("optimizer")
    done = translate_optimizer(r.cfg.get("optimizer") or {})
    out.defaults["optimizer"] = done.option
    out.not_carried += done.not_carried
    out.notes += done.notes
    if done.node is not None:
        out.config["optimizer"] = done.node


def _scheduler_and_loss(r: _Reader, out: Translation) -> None:
    sched = r.cfg.get("lr_scheduler")
    r.seen.add("lr_scheduler")
    if isinstance(sched, dict) and "cosine" in _last(sched.get("_component_", "")):
        out.defaults["lr_scheduler"] = "cosine"
        out.config["lr_scheduler"] = {"num_warmup_steps": int(sched.get("num_warmup_steps", 0))}
        if float(sched.get("num_cycles", 0.5)) != 0.5:
            out.not_carried.append((f"lr_scheduler.num_cycles={sched['num_cycles']}", "tunekit's cosine is one "
                                    "half cycle (0.5) to zero"))
    else:
        out.defaults["lr_scheduler"] = "constant"
        out.config["lr_scheduler"] = {"num_warmup_steps": 0}
        if isinstance(sched, dict):
            out.not_carried.append((f"lr_scheduler._component_={sched.get('_component_')}", "tunekit has cosine "
                                    "and constant (with warmup); constant was written"))
    loss = r.cfg.get("loss") or {}
    r.seen.add("loss")
    name = _last(loss.get("_component_", "CrossEntropyLoss"))
    if name not in _LOSSES:
        raise TorchtuneConfigError(
            f"`loss._component_`={loss.get('_component_')}: tunekit trains with cross-entropy only (SFT: "
            f"lora_finetune, full_finetune); preference/RL recipes (DPO, PPO, ...) and knowledge distillation "
            f"have no tunekit recipe.")
    out.defaults["loss"] = _LOSSES[name]
    if name == "CEWithChunkedOutputLoss" and "num_output_chunks" in loss:
        out.config["loss"] = {"num_chunks": int(loss["num_output_chunks"])}


def _logger(r: _Reader, out: Translation) -> None:
    spec = r.cfg.get("metric_logger") or {}
    r.seen.add("metric_logger")
    option = _LOGGERS.get(_last(spec.get("_component_", "DiskLogger")))
    if option is None:
        out.defaults["metric_logger"] = "jsonl"
        out.not_carried.append((f"metric_logger._component_={spec.get('_component_')}", "tunekit logs to jsonl, "
                                "stdout, tensorboard or wandb; jsonl was written"))
        return
    out.defaults["metric_logger"] = option
    if option == "wandb" and spec.get("project"):
        out.config["metric_logger"] = {"project": str(spec["project"])}


_SCALARS = {  # torchtune top-level key -> tunekit key (same meaning)
    "batch_size": "batch_size", "epochs": "epochs", "max_steps_per_epoch": "max_steps_per_epoch",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "compile": "compile",
    "clip_grad_norm": "clip_grad_norm", "log_every_n_steps": "log_every_n_steps",
    "enable_activation_checkpointing": "activation_checkpointing", "run_val_every_n_steps": "eval_every_n_steps",
}
_NO_EFFECT = {"shuffle": True, "log_peak_memory_stats": None, "save_adapter_weights_only": False, "profiler": None,
              "mixed_precision": None, "log_level": None}
_FSDP_KEYS = ("fsdp", "fsdp_cpu_offload", "custom_sharded_layers", "fsdp_reshard_after_forward")


def _training(r: _Reader, out: Translation) -> None:
    for tt, tk in _SCALARS.items():
        value = r.get(tt)
        if value is not None or (tt == "max_steps_per_epoch" and tt in r.cfg):
            out.config[tk] = value
    seed = r.get("seed")
    if seed is not None:
        out.config["seed"] = int(seed)
    elif "seed" in r.cfg:
        out.notes.append("seed: null (torchtune draws a random seed) became tunekit's seed 0: runs repeat exactly")
    dtype = r.get("dtype")
    if dtype in ("bf16", "fp32"):
        out.config["dtype"] = dtype
    elif dtype is not None:
        out.not_carried.append((f"dtype={dtype}", "tunekit trains in fp32 or bf16; bf16 was written"))
        out.config["dtype"] = "bf16"
    device = r.get("device")
    if device not in (None, "cuda"):
        out.config["device"] = str(device)
    output_dir = r.get("output_dir")
    if output_dir is not None:
        out.config["hydra"] = {"run": {"dir": str(output_dir)}}
        out.notes.append(f"output_dir {output_dir} became the run directory (hydra.run.dir); tunekit refuses to "
                         f"train into a directory a run already used, so pass hydra.run.dir=... for the next run")
    for key, harmless in _NO_EFFECT.items():
        r.seen.add(key)
        value = r.cfg[key].get("enabled") if isinstance(r.cfg.get(key), dict) else r.cfg.get(key)
        if key not in r.cfg or value in (harmless, None, False) or key not in TORCHTUNE_KEYS:
            continue
        if key == "log_peak_memory_stats":
            out.notes.append(f"{key}: {TORCHTUNE_KEYS[key][1]}")
        else:
            out.not_carried.append((f"{key}: {value}", TORCHTUNE_KEYS[key][1]))


def _fsdp(r: _Reader, out: Translation) -> bool:
    """torchtune's FSDP settings; True when the config has any (it is written for several GPUs)."""
    for key in ("fsdp.cpu_offload", "fsdp_cpu_offload"):
        if r.get(key):
            out.not_carried.append((f"{key}: True", TORCHTUNE_KEYS[key][1]))
    if r.get("custom_sharded_layers"):
        out.not_carried.append((f"custom_sharded_layers: {r.get('custom_sharded_layers')}",
                                TORCHTUNE_KEYS["custom_sharded_layers"][1]))
    if r.get("fsdp_reshard_after_forward") is False:
        out.not_carried.append(("fsdp_reshard_after_forward: False", TORCHTUNE_KEYS["fsdp_reshard_after_forward"][1]))
    if not any(key in r.cfg for key in _FSDP_KEYS):
        return False
    nf4 = out.config.get("lora", {}).get("quantize_base")
    qlora = "; FSDP2 shards the NF4 base too, over 2, 4 or 8 GPUs" if nf4 else ""
    out.notes.append(f"a config for several GPUs (it has FSDP settings): run it with `torchrun --nproc-per-node N -m "
                     f"recipes.{out.recipe} --config-dir DIR --config-name NAME`, DIR/NAME.yaml being this file{qlora}")
    return True


def _memory(r: _Reader, out: Translation) -> None:
    """The memory savers (activation offloading, optimizer in backward, CPU-offload AdamW), with the
    pairs tunekit refuses resolved so the written config validates: the optimizer steps stay as
    configured (accumulation, clipping kept) and the saver that cannot run with them is left out."""
    c = out.config
    if r.get("enable_activation_offloading"):
        c["activation_offloading"] = True
        if not c.get("activation_checkpointing"):
            out.notes.append("activation_offloading=true without activation_checkpointing=true moves every saved "
                             "activation to host memory (slow); with it only each layer's input moves")
    several = _fsdp(r, out)
    ga, clip = c.get("gradient_accumulation_steps") or 1, c.get("clip_grad_norm")
    blockers = [f"gradient_accumulation_steps={ga}"] * (ga != 1) + [f"clip_grad_norm={clip}"] * (clip is not None)
    blocked = " and ".join(blockers)
    keeps = (f"the written config keeps {blocked} (the same optimizer steps as torchtune's run); for the memory "
             f"saving set gradient_accumulation_steps=1 (raise batch_size) and clip_grad_norm=null")
    cpu_offload = out.defaults.get("optimizer") == "adamw_cpu_offload"
    if cpu_offload and (blockers or several):
        component = (r.cfg.get("optimizer") or {}).get("_component_")
        out.defaults["optimizer"], cpu_offload = "adamw", False
        why = (f"tunekit's optimizer=adamw_cpu_offload frees each gradient on the GPU during backward, so it refuses "
               f"{blocked}: optimizer=adamw was written; {keeps}, then optimizer=adamw_cpu_offload" if blockers else
               "tunekit's optimizer=adamw_cpu_offload runs in one process on one GPU, and this config is for several "
               "(FSDP settings): optimizer=adamw was written; on one GPU choose optimizer=adamw_cpu_offload")
        out.not_carried.append((f"optimizer._component_={component}", why))
    if not r.get("optimizer_in_bwd"):
        return
    if cpu_offload:
        why = ("optimizer=adamw_cpu_offload already frees each gradient during backward, and tunekit refuses the two "
               "together (torchtune's CPU-offload config sets optimizer_in_bwd: False too)")
    elif blockers:
        why = (f"tunekit refuses optimizer_in_backward=true with {blocked}, both needing every gradient of a step at "
               f"once (torchtune's recipes refuse these pairs too): {keeps}, then optimizer_in_backward=true")
    elif several:
        why = ("tunekit's optimizer_in_backward=true runs in one process, and this config is for several GPUs (FSDP "
               "settings): the optimizer steps after backward; on one GPU add optimizer_in_backward=true")
    else:
        c["optimizer_in_backward"] = True
        out.notes.append("optimizer_in_backward=true runs in one process: under torchrun tunekit refuses it (set "
                         "optimizer_in_backward=false there)")
        return
    out.not_carried.append(("optimizer_in_bwd: True", why))


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def translate(cfg: Any, *, source: str = "config", models: set[str] | None = None,
              hydra: dict[str, Any] | None = None) -> Translation:
    """A tunekit primary config equivalent to torchtune recipe config ``cfg`` (a parsed YAML mapping).

    Args:
        source: the file's name, for the header and messages.
        models: tunekit's model options (``conf/model/*.yaml`` stems); None accepts any name.
        hydra: the shipped primary config's ``hydra:`` node (run/sweep directories, the record that
            keeps tokens off disk, the sweep summary), kept in the translation under its own settings.

    Raises:
        TorchtuneConfigError: nothing sensible can be written (no model, an unknown model, a recipe
            tunekit does not have).
    """
    if not isinstance(cfg, dict):
        raise TorchtuneConfigError(f"{source} holds a {type(cfg).__name__}, not a mapping of settings: it is not a "
                                   f"torchtune recipe config.")
    component = str((cfg.get("model") or {}).get("_component_", "")) if isinstance(cfg.get("model"), dict) else ""
    lora = _last(component).startswith(("lora_", "qlora_"))
    out = Translation(recipe="lora_finetune" if lora else "full_finetune", config={}, defaults={}, source=source)
    r = _Reader(cfg)
    _model(r, out, models if models is not None else {_model_option(component, None) or ""})
    _checkpointer(r, out)
    _tokenizer(r, out)
    _dataset(r, out)
    _optimizer(r, out)
    _scheduler_and_loss(r, out)
    _logger(r, out)
    _training(r, out)
    _memory(r, out)
    for key in r.unseen():
        hint = TORCHTUNE_KEYS.get(key)
        why = hint[1] if hint is not None else "no tunekit equivalent known"
        out.not_carried.append((key, why))
    if hydra:
        out.config["hydra"] = _merged(hydra, out.config.get("hydra", {}))
    if "hydra" in out.config:  # Hydra's own settings last, after the run's
        out.config["hydra"] = out.config.pop("hydra")
    order = ["model", "checkpointer", "tokenizer", "dataset", "optimizer", "lr_scheduler", "loss", "metric_logger"]
    out.defaults = {g: out.defaults[g] for g in order if g in out.defaults}
    return out
