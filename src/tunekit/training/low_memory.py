"""Lower-memory training: the optimizer step in backward, activation offloading, 8-bit AdamW.

- :class:`OptimizerInBackward`: one inner optimizer per parameter, stepped by a
  post-accumulate-grad hook as soon as that parameter's gradient is ready, and the gradient
  freed at once: at most one parameter's gradient is alive instead of all of them (a 7B full
  fine-tune saves its 13.5 GiB of bf16 gradients). It is a ``torch.optim.Optimizer`` for the
  loop, the lr schedule and checkpoints (its ``state_dict`` has the layout of one optimizer with
  a group per parameter), and ``step()`` does nothing. The loop's division of the gradients by
  the step's token count happens inside the hook: :meth:`OptimizerInBackward.wrap_loss` records
  the count when the loss is computed, before backward. Gradient accumulation and clipping need
  every gradient at once and are refused.
- :class:`OffloadActivations`: saved-tensor hooks that move what autograd keeps for backward
  (with activation checkpointing: each layer's input) to pinned CPU memory on a side CUDA stream
  during forward and bring it back on another stream in backward; :func:`offload_activations`
  wraps the loss function with it. Off CUDA the tensors are kept as they are (``force_copy``
  round-trips them through a CPU copy, to test the path).
- :func:`adamw8bit`: torchao's blockwise 8-bit AdamW (``optimizer=adamw8bit``); :func:`adamw4bit`,
  its 4-bit sibling (``optimizer=adamw4bit``).
- :func:`adamw_cpu_offload`: AdamW whose states and step live in host memory (torchao's
  ``CPUOffloadOptimizer``, ``optimizer=adamw_cpu_offload``): each gradient is copied to pinned
  host memory on a side CUDA stream as soon as it is ready and freed on the GPU, so the GPU holds
  the weights and activations only. The loss is pre-scaled by the step's token count
  (:func:`prescaled_loss`) because the loop's division of the gradients finds them gone.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from tunekit.distributed import all_reduce_sum, get_world_size, is_distributed
from tunekit.modules.peft import quiet_torchao_import
from tunekit.training.metric_logging import MissingExtraError
from tunekit.training.settings import SettingUnsupportedHere

__all__ = ["OffloadActivations", "OptimizerInBackward", "adamw4bit", "adamw8bit", "adamw_cpu_offload",
           "low_memory_setup", "offload_activations", "prescaled_loss"]

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _torchao_adamw(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """torchao's low-bit AdamW ``name`` (``AdamW8bit``, ``AdamW4bit``) over ``params``."""
    option = name.lower()
    try:
        with quiet_torchao_import():
            import torchao.optim
    except ImportError as err:
        raise MissingExtraError(
            f"optimizer={option} is torchao's {name}, but torchao is not installed ({err}). Install it "
            "with: pip install \"tunekit[qlora]\" (or choose optimizer=adamw)."
        ) from None
    return getattr(torchao.optim, name)(params, **kwargs)


def adamw8bit(params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 0.01, block_size: int = 256,
              bf16_stochastic_round: bool = False) -> torch.optim.Optimizer:
    """AdamW with both moments stored in 8 bits, blockwise-quantized (torchao's ``AdamW8bit``).

    Tensors under 4096 elements (norms, biases) keep fp32 states, as in torchao. 2 bytes of
    state per parameter instead of 8: a 7B model's AdamW state drops from 50 to 12.6 GiB.

    Raises:
        MissingExtraError: torchao (the ``qlora`` extra) is not installed.
    """
    return _torchao_adamw("AdamW8bit", params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                          block_size=block_size, bf16_stochastic_round=bf16_stochastic_round)


def adamw4bit(params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 0.01, block_size: int = 128,
              bf16_stochastic_round: bool = False) -> torch.optim.Optimizer:
    """AdamW with both moments stored in 4 bits (torchao's ``AdamW4bit``: blockwise scales, the
    second moment on a linear map with zero excluded, as in "Memory Efficient Optimizers with
    4-bit States", Li et al. 2023).

    1 byte of state per parameter instead of 8: a 7B model's AdamW state drops from 50 to 6.3
    GiB, which with bf16 weights (12.6 GiB), ``optimizer_in_backward`` and activation
    checkpointing is what brings a 7B full fine-tune under 24 GB without host memory. Tensors
    under 4096 elements keep fp32 states. Converges close to 8-bit AdamW (test: it tracks fp32
    AdamW on a small problem), but it is further from fp32: compare loss curves before relying on it.

    Raises:
        MissingExtraError: torchao (the ``qlora`` extra) is not installed.
    """
    return _torchao_adamw("AdamW4bit", params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                          block_size=block_size, bf16_stochastic_round=bf16_stochastic_round)


def adamw_cpu_offload(params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                      eps: float = 1e-8, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW with its states and its step in host memory (torchao's ``CPUOffloadOptimizer``, fused
    CPU AdamW), gradients moved to pinned host memory as soon as they are ready and freed on the GPU.

    The GPU keeps only the weights and the activations (a 7B full fine-tune: 12.6 GiB of bf16
    weights instead of weights + gradients + states). The host holds a copy of the weights and the
    states in the parameters' dtype. One process and one GPU; gradient accumulation and clipping
    need the gradients on the GPU and are refused by ``tunekit validate``.

    Raises:
        SettingUnsupportedHere: no CUDA GPU, or several processes.
        MissingExtraError: torchao is not installed.
    """
    if not torch.cuda.is_available():
        raise SettingUnsupportedHere(
            "optimizer=adamw_cpu_offload keeps AdamW's states in host memory and copies each gradient there on "
            "a side CUDA stream, so it needs a CUDA GPU, and this machine has none: choose optimizer=adamw (or "
            "optimizer=adamw8bit) here")
    if is_distributed():
        raise SettingUnsupportedHere(
            "optimizer=adamw_cpu_offload runs in one process on one GPU (each rank would keep a full host copy "
            "and FSDP2 shards the weights already): choose optimizer=adamw or optimizer=adamw8bit under torchrun")
    try:
        with quiet_torchao_import():
            from torchao.optim import CPUOffloadOptimizer
    except ImportError as err:
        raise MissingExtraError(
            f"optimizer=adamw_cpu_offload is torchao's CPUOffloadOptimizer, but torchao is not installed ({err}). "
            "Install it with: pip install \"tunekit[qlora]\" (or choose optimizer=adamw)."
        ) from None
    # minimal_size=0: every parameter goes to the host, so no gradient stays on the GPU for the
    # loop to scale a second time (the loss is pre-scaled instead: prescaled_loss).
    optimizer = CPUOffloadOptimizer(list(params), torch.optim.AdamW, offload_gradients=True, minimal_size=0,
                                    lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    optimizer.tunekit_prescale_loss = True
    return optimizer


def prescaled_loss(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` whose backward gives gradients already divided by the step's token count
    (times the world size, as the loop does), while the returned value stays the token sum the
    loop logs. For optimizers that take the gradients away during backward."""

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, ...]:
        loss_sum, tokens, *metric_sums = loss_fn(model, batch)  # an objective's metric sums pass through
        total = tokens.detach().clone()
        all_reduce_sum(total)
        scaled = loss_sum * (get_world_size() / total.clamp(min=1).float())
        return scaled + (loss_sum - scaled).detach(), tokens, *metric_sums

    return loss


class OptimizerInBackward(torch.optim.Optimizer):
    """Steps each parameter inside backward, as soon as its gradient is accumulated.

    Args:
        params: the trainable parameters.
        optimizer_factory: ``factory([param]) -> optimizer`` (the recipe's partial optimizer).
        gradient_accumulation_steps, clip_grad_norm: the run's; refused unless 1 / None.

    Use the loss through :meth:`wrap_loss` (the hooks divide each gradient by the step's token
    count, all ranks). ``param_groups`` are the inner optimizers' own group dicts, so an lr
    schedule built on this optimizer drives every inner one.

    Raises:
        ValueError: gradient accumulation, clipping or several ranks (each needs all gradients
            of a step at once); no trainable parameter.
    """

    def __init__(self, params: Iterable[nn.Parameter], optimizer_factory: Callable[[list], torch.optim.Optimizer],
                 *, gradient_accumulation_steps: int = 1, clip_grad_norm: float | None = None) -> None:
        params = [p for p in params if p.requires_grad]
        problems = []
        if gradient_accumulation_steps != 1:
            problems.append(f"gradient_accumulation_steps={gradient_accumulation_steps} (each micro-batch's "
                            "gradient would step the optimizer; use a larger batch_size instead)")
        if clip_grad_norm is not None:
            problems.append(f"clip_grad_norm={clip_grad_norm} (the norm needs every gradient of the step, "
                            "but each is applied and freed as soon as it is ready; unset clip_grad_norm)")
        if is_distributed():
            problems.append(f"{get_world_size()} ranks (sharded training reduces gradients after backward; "
                            "run on one process, or set optimizer_in_backward=false)")
        if not params:
            problems.append("no trainable parameter")
        if problems:
            raise ValueError("optimizer_in_backward=true cannot run with " + "; ".join(problems))
        self._params = params
        self._inner = [optimizer_factory([p]) for p in params]
        super().__init__(params, dict(self._inner[0].defaults))
        self.param_groups = [opt.param_groups[0] for opt in self._inner]
        self._scale: torch.Tensor | None = None
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(opt)) for p, opt in zip(params, self._inner)]

    def _hook(self, opt: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def step(param: torch.Tensor) -> None:
            if param.grad is None:
                return
            if self._scale is not None:
                param.grad.mul_(self._scale)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def wrap_loss(self, loss_fn: LossFn) -> LossFn:
        """``loss_fn`` that also records ``world_size / tokens`` for the hooks (before backward)."""

        def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, ...]:
            out = loss_fn(model, batch)  # (loss_sum, tokens) or an objective's (..., metric_sums)
            total = out[1].detach().clone()
            all_reduce_sum(total)
            self._scale = get_world_size() / total.clamp(min=1).float()
            return out

        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Nothing left to do: every parameter was stepped in backward."""
        return None if closure is None else closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """One optimizer's layout: parameter ``i``'s state under ``i``, one group per parameter."""
        state, groups = {}, []
        for i, opt in enumerate(self._inner):
            sd = opt.state_dict()
            if 0 in sd["state"]:
                state[i] = sd["state"][0]
            groups.append({**sd["param_groups"][0], "params": [i]})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        groups = state_dict["param_groups"]
        if len(groups) != len(self._inner):
            raise ValueError(f"optimizer state has {len(groups)} parameter groups, this optimizer-in-backward "
                             f"{len(self._inner)} (one per trainable parameter)")
        for i, (opt, group) in enumerate(zip(self._inner, groups)):
            inner_state = {0: state_dict["state"][i]} if i in state_dict["state"] else {}
            opt.load_state_dict({"state": inner_state, "param_groups": [{**group, "params": [0]}]})
        self.param_groups = [opt.param_groups[0] for opt in self._inner]

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class OffloadActivations(torch.autograd.graph.saved_tensors_hooks):
    """Keep what autograd saves for backward in CPU memory instead of the accelerator's.

    Forward: each saved CUDA tensor of at least ``min_bytes`` that is not a parameter is copied
    into pinned host memory on a side stream (the compute stream goes on; the tensor's memory is
    released once the copy is done). Backward: it is copied back on a second stream, which the
    compute stream waits for. Parameters (and views of them) stay where they are.

    Args:
        model: its parameters are never offloaded.
        min_bytes: smaller tensors stay (the copies would cost more than they save).
        use_streams: overlap the copies with compute (CUDA); False copies on the compute stream.
        force_copy: also round-trip CPU tensors through a copy (tests the path off CUDA).
    """

    def __init__(self, model: nn.Module | None = None, *, min_bytes: int = 1 << 20, use_streams: bool = True,
                 force_copy: bool = False) -> None:
        self.min_bytes, self.force_copy = min_bytes, force_copy
        params = [] if model is None else list(model.parameters())
        self._params = {p.untyped_storage().data_ptr() for p in params
                        if p.device.type != "meta" and type(p) in (torch.Tensor, nn.Parameter)}
        cuda = torch.cuda.is_available()
        self._d2h = torch.cuda.Stream() if cuda and use_streams else None
        self._h2d = torch.cuda.Stream() if cuda and use_streams else None
        self.offloaded_bytes = 0
        super().__init__(self._pack, self._unpack)

    def _keep(self, t: torch.Tensor) -> bool:
        if type(t) not in (torch.Tensor, nn.Parameter) or isinstance(t, nn.Parameter):
            return True
        if t.device.type != "cuda" and not self.force_copy:
            return True
        if t.numel() * t.element_size() < self.min_bytes:
            return True
        return t.untyped_storage().data_ptr() in self._params

    def _pack(self, t: torch.Tensor) -> Any:
        if self._keep(t):
            return t
        self.offloaded_bytes += t.numel() * t.element_size()
        if t.device.type != "cuda":
            return ("copy", t.device, t.detach().to("cpu", copy=True))
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        if self._d2h is None:
            host.copy_(t)
            return ("cuda", t.device, host, None)
        self._d2h.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(self._d2h):
            host.copy_(t, non_blocking=True)
            t.record_stream(self._d2h)  # its memory is reused only after the copy
        event = self._d2h.record_event()
        return ("cuda", t.device, host, event)

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        if packed[0] == "copy":
            return packed[2].to(packed[1])
        _, device, host, event = packed
        if self._h2d is None:
            return host.to(device)
        compute = torch.cuda.current_stream(device)
        self._h2d.wait_event(event)
        with torch.cuda.stream(self._h2d):
            out = host.to(device, non_blocking=True)
        compute.wait_stream(self._h2d)
        out.record_stream(compute)
        return out


def offload_activations(loss_fn: LossFn, model: nn.Module | None = None, **kwargs: Any) -> LossFn:
    """``loss_fn`` whose forward keeps its saved activations in CPU memory (:class:`OffloadActivations`).

    On top of activation checkpointing only each checkpointed layer's input (and the loss's
    own tensors) is saved, so that is what moves; the recompute in backward brings it back.
    """
    hooks = OffloadActivations(model, **kwargs)

    def loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with hooks:
            return loss_fn(m, batch)

    loss.offload = hooks  # type: ignore[attr-defined]
    return loss


def low_memory_setup(model: nn.Module, optimizer_factory: Callable[[list], torch.optim.Optimizer], loss_fn: LossFn, *,
                     gradient_accumulation_steps: int, clip_grad_norm: float | None, optimizer_in_backward: bool,
                     activation_offloading: bool) -> tuple[torch.optim.Optimizer, LossFn]:
    """The optimizer over ``model``'s trainable parameters and the loss the loop calls, with the
    run's memory savers: ``optimizer_in_backward`` (:class:`OptimizerInBackward`) and
    ``activation_offloading`` (:func:`offload_activations`). Both off: ``factory(params)``, ``loss_fn``.

    Raises:
        ValueError: optimizer in backward with accumulation, clipping or several ranks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer_in_backward:
        optimizer: torch.optim.Optimizer = OptimizerInBackward(
            params, optimizer_factory, gradient_accumulation_steps=gradient_accumulation_steps,
            clip_grad_norm=clip_grad_norm)
        loss_fn = optimizer.wrap_loss(loss_fn)
    else:
        optimizer = optimizer_factory(params)
        if getattr(optimizer, "tunekit_prescale_loss", False):
            loss_fn = prescaled_loss(loss_fn)
    if activation_offloading:
        loss_fn = offload_activations(loss_fn, model)
    return optimizer, loss_fn
