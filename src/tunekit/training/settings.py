"""The training loop's settings and the step arithmetic derived from them."""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.modules.attention import ATTENTION_IMPLS
from tunekit.training.precision import get_dtype

__all__ = ["AC_POLICIES", "SettingUnsupportedHere", "TrainSettings", "num_training_steps", "steps_per_epoch"]


class SettingUnsupportedHere(ValueError):
    """A valid setting that this device or model cannot run (e.g. ``fp8_base=true`` on the CPU);
    the message names the setting, why, and what to set instead (shown as one paragraph)."""

AC_POLICIES = ("full", "selective")


@dataclass(kw_only=True)
class TrainSettings:
    """Loop settings, every one required: their defaults live in one place, the recipe schema
    (``tunekit.config.schemas``); ``tunekit.run.train_settings`` fills them from a config.

    Attributes:
        epochs: passes over the training data.
        max_steps_per_epoch: cap on optimizer steps per epoch (None: the whole epoch).
        gradient_accumulation_steps: micro-batches per optimizer step; the gradient is the
            token-weighted mean over all of them (4 x 2 == 8 x 1).
        clip_grad_norm: max total gradient norm (None: no clipping; the norm is still logged).
        log_every_n_steps: metrics (and the NaN check) every N optimizer steps.
        save_every_n_steps: a step checkpoint every N steps (None: only at epoch ends).
        eval_every_n_steps: validation loss every N steps (None: only at the end).
        max_eval_batches: cap on validation batches per evaluation (None: all).
        device: "auto", "cpu", "cuda", "cuda:N".
        dtype: "fp32" or "bf16" (the model and optimizer state are cast to it).
        compile: torch.compile each decoder layer and the loss.
        activation_checkpointing: checkpoint decoder layers.
        ac_policy: with activation_checkpointing: ``"full"`` recomputes the whole layer in
            backward, ``"selective"`` keeps the matmul outputs and recomputes only the cheap
            pointwise ops (``apply_activation_checkpointing(save_matmuls=True)``).
        ac_every_k_layers: with activation_checkpointing, checkpoint every k-th layer only.
        seed: seeds python/numpy/torch at the start of a fresh run.
        handle_signals: SIGTERM/SIGINT finish the step, save a step checkpoint and return.
        attention: how packed rows (``doc_ids`` batches) attend: ``auto`` (flash varlen on CUDA
            in bf16/fp16, flex attention on other CUDA runs, the dense mask elsewhere), ``sdpa``
            (dense ``[b, s, s]`` mask), ``flex`` or ``varlen`` (``TransformerDecoder.set_attention``).
        fp8_base: LoRA only, Hopper GPUs: the frozen base weights' forward and input-gradient
            GEMMs in FP8 with row-wise scales (``training.fp8``); opt-in, numerics differ.
        mfu_peak_tflops: the device's peak dense TFLOP/s for the logged MFU (None: the known
            GPUs' table in ``training.throughput``; no MFU on other devices).
    """

    epochs: int
    max_steps_per_epoch: int | None
    gradient_accumulation_steps: int
    clip_grad_norm: float | None
    log_every_n_steps: int
    save_every_n_steps: int | None
    eval_every_n_steps: int | None
    max_eval_batches: int | None
    device: str
    dtype: str
    compile: bool
    activation_checkpointing: bool
    ac_policy: str
    ac_every_k_layers: int
    seed: int
    handle_signals: bool
    attention: str = "auto"
    fp8_base: bool = False
    mfu_peak_tflops: float | None = None

    def problems(self) -> list[str]:
        """Every invalid value, one message each (empty when valid)."""
        out = []
        positive = ("epochs", "gradient_accumulation_steps", "log_every_n_steps", "ac_every_k_layers")
        for name in positive:
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps_per_epoch", "save_every_n_steps", "eval_every_n_steps", "max_eval_batches"):
            v = getattr(self, name)
            if v is not None and v < 1:
                out.append(f"{name} must be >= 1 or null, got {v}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            out.append(f"clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        if self.attention not in ATTENTION_IMPLS:
            out.append(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {self.attention!r}")
        if self.mfu_peak_tflops is not None and not self.mfu_peak_tflops > 0:
            out.append(f"mfu_peak_tflops must be > 0 or null, got {self.mfu_peak_tflops}")
        if self.ac_policy not in AC_POLICIES:
            out.append(f"ac_policy must be one of {', '.join(AC_POLICIES)}, got {self.ac_policy!r}")
        try:
            get_dtype(self.dtype)
        except ValueError as err:
            out.append(str(err))
        return out



def steps_per_epoch(num_batches: int, settings: TrainSettings) -> int:
    """Optimizer steps per epoch: whole accumulation groups, capped by max_steps_per_epoch."""
    steps = num_batches // max(1, settings.gradient_accumulation_steps)  # validated in train
    if settings.max_steps_per_epoch is not None:
        steps = min(steps, settings.max_steps_per_epoch)
    return steps


def num_training_steps(num_batches: int, settings: TrainSettings) -> int:
    """Optimizer steps of the whole run (what lr schedules take as num_training_steps)."""
    return settings.epochs * steps_per_epoch(num_batches, settings)
