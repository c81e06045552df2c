"""torchtune's optimizer nodes in tunekit's terms, for :mod:`tunekit.config.torchtune` (torch-free).

torch's AdamW/SGD and torchao's AdamW8bit / CPUOffloadOptimizer have a tunekit option that is the
same optimizer; bitsandbytes' (paged) AdamW variants get the closest one, with what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["NEAR_OPTIMIZERS", "OPTIMIZERS", "OptimizerTranslation", "translate_optimizer"]

_CPU_OFFLOAD = ("torchao.optim.CPUOffloadOptimizer", "torchao.prototype.low_bit_optim.CPUOffloadOptimizer",
                "torchtune.modules.optim.CPUOffloadOptimizer")
#: torchtune's ``optimizer._component_`` -> tunekit's option for the same optimizer
OPTIMIZERS = {"torch.optim.AdamW": "adamw", "torch.optim.SGD": "sgd", "torchao.optim.AdamW8bit": "adamw8bit",
              "torchao.prototype.low_bit_optim.AdamW8bit": "adamw8bit",
              **{name: "adamw_cpu_offload" for name in _CPU_OFFLOAD}}
_PAGED = ("paging is not reproduced: the states stay in GPU memory (optimizer=adamw_cpu_offload keeps AdamW's "
          "states, and its step, in host memory instead")
_BNB_8BIT = ("tunekit's 8-bit AdamW is torchao's (blockwise 8-bit moments, as bitsandbytes'; the rounding differs "
             "slightly)")
_BNB_32BIT = f"torch's AdamW, the same states; {_PAGED}, or optimizer=adamw8bit stores them in 8 bits)"
#: bitsandbytes' optimizers -> (the closest tunekit option, what differs)
NEAR_OPTIMIZERS = {
    "bitsandbytes.optim.PagedAdamW8bit": ("adamw8bit", f"{_BNB_8BIT}; {_PAGED})"),
    "bitsandbytes.optim.AdamW8bit": ("adamw8bit", _BNB_8BIT),
    "bitsandbytes.optim.PagedAdamW": ("adamw", _BNB_32BIT),
    "bitsandbytes.optim.PagedAdamW32bit": ("adamw", _BNB_32BIT),
    "bitsandbytes.optim.AdamW": ("adamw", "torch's AdamW, the same math"),
    "bitsandbytes.optim.AdamW32bit": ("adamw", "torch's AdamW, the same math"),
}
# tunekit option -> the arguments its conf/optimizer/<option>.yaml takes from torchtune's node
_ARGUMENTS = {"adamw": ("lr", "weight_decay", "betas", "eps", "fused"),
              "sgd": ("lr", "weight_decay", "momentum", "dampening", "nesterov"),
              "adamw8bit": ("lr", "weight_decay", "betas", "eps", "block_size", "bf16_stochastic_round"),
              "adamw_cpu_offload": ("lr", "weight_decay", "betas", "eps")}


@dataclass
class OptimizerTranslation:
    """The ``optimizer`` option, its node (None: the option's own values), what was left behind."""

    option: str
    node: dict[str, Any] | None
    not_carried: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def translate_optimizer(spec: dict[str, Any]) -> OptimizerTranslation:
    """tunekit's ``optimizer`` option and node for torchtune's ``optimizer`` node ``spec``.

    Arguments the option takes are passed through; torchtune's run gets its optimizer's own
    defaults where ``spec`` is silent (lr 1e-3 and weight_decay 0.01 for every AdamW, momentum 0
    for SGD), so those are written where tunekit's YAML says otherwise.
    """
    component = str(spec.get("_component_", "torch.optim.AdamW"))
    option = OPTIMIZERS.get(component)
    out = OptimizerTranslation(option or "adamw", None)
    if option is None and component in NEAR_OPTIMIZERS:
        option, why = NEAR_OPTIMIZERS[component]
        out.option = option
        out.notes.append(f"optimizer._component_={component} became optimizer={option}: {why}")
    if option is None:
        out.not_carried.append((f"optimizer._component_={component}", "tunekit ships adamw, adamw8bit, "
                                "adamw_cpu_offload and sgd; AdamW was written (set optimizer._component_ yourself "
                                "if that package is installed)"))
        return out
    node = {k: v for k, v in spec.items() if k in _ARGUMENTS[option]}
    rest = set(spec) - set(node) - {"_component_"}
    if option == "adamw_cpu_offload":
        rest -= _cpu_offload_arguments(spec, out)
    for key in sorted(rest):
        out.not_carried.append((f"optimizer.{key}", f"not an argument tunekit's optimizer={option} takes "
                                f"(conf/optimizer/{option}.yaml lists them)"))
    if option != "sgd" and "lr" not in node:
        node["lr"] = 1e-3
        out.notes.append(f"optimizer.lr is not set: {component}'s default 1e-3 was written")
    if "lr" in node:
        node["lr"] = float(node["lr"])
    if option != "sgd" and "weight_decay" not in node:
        node["weight_decay"] = 0.01
    if option == "sgd" and "momentum" not in node:
        node["momentum"] = 0.0  # tunekit's sgd.yaml says 0.9
    out.node = node
    return out


def _cpu_offload_arguments(spec: dict[str, Any], out: OptimizerTranslation) -> set[str]:
    """The CPUOffloadOptimizer arguments tunekit's adamw_cpu_offload decides itself (torch's AdamW,
    fused CPU steps, gradients offloaded), returned as handled."""
    inner = str(spec.get("optimizer_class", "torch.optim.AdamW"))
    if inner.rsplit(".", 1)[-1] != "AdamW":
        out.not_carried.append((f"optimizer.optimizer_class={inner}", "tunekit's adamw_cpu_offload steps torch's "
                                "AdamW in host memory; AdamW was written"))
    if spec.get("fused") is False:
        out.not_carried.append(("optimizer.fused: False", "adamw_cpu_offload's host step is always torch's fused "
                                "CPU AdamW (the same math, faster)"))
    if not spec.get("offload_gradients", False):
        out.notes.append("optimizer=adamw_cpu_offload also moves each gradient to host memory as soon as it is "
                         "ready (torchao's offload_gradients=True): it needs gradient_accumulation_steps=1 and "
                         "clip_grad_norm=null")
    return {"optimizer_class", "offload_gradients", "fused"}
