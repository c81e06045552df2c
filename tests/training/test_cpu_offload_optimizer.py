"""optimizer=adamw_cpu_offload: gradients leave the GPU during backward, so the loss is pre-scaled.

On the CPU the offloading optimizer itself cannot run (torchao's CPUOffloadOptimizer needs CUDA);
what can be checked here is the arithmetic the loop relies on, with a stand-in optimizer that
takes every gradient away in a post-accumulate-grad hook exactly as the real one does, and the
refusals. ``test_real_offload_matches_adamw_on_cuda`` runs the real optimizer on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _training_helpers import make_run, run_train

from tunekit.training import num_training_steps
from tunekit.training.low_memory import adamw_cpu_offload, low_memory_setup, prescaled_loss
from tunekit.training.lr_schedulers import cosine_with_warmup
from tunekit.training.settings import SettingUnsupportedHere

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from _harness import assert_user_error, run_tunekit  # noqa: E402

KW = {"epochs": 1, "max_steps_per_epoch": 4, "clip_grad_norm": None}


class _TakesGradients(torch.optim.AdamW):
    """AdamW that moves each gradient away in backward (as CPUOffloadOptimizer with offload_gradients)."""

    tunekit_prescale_loss = True

    def __init__(self, params, **kw):
        params = list(params)
        super().__init__(params, **kw)
        self.taken: dict[torch.Tensor, torch.Tensor] = {}
        for p in params:
            p.register_post_accumulate_grad_hook(self._take)

    def _take(self, p):
        self.taken[p] = p.grad.detach().clone()
        p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        for p, g in self.taken.items():
            p.grad = g
        super().step()
        self.taken.clear()
        self.zero_grad(set_to_none=True)


def test_prescaled_loss_with_gradients_taken_in_backward_equals_the_loops_step():
    ref = make_run(dropout=0.0, settings_kw=KW)
    got = make_run(dropout=0.0, settings_kw=KW)
    opt, loss_fn = low_memory_setup(got["model"], lambda ps: _TakesGradients(ps, lr=1e-2), got["loss_fn"],
                                    gradient_accumulation_steps=1, clip_grad_norm=None,
                                    optimizer_in_backward=False, activation_offloading=False)
    got.update(optimizer=opt, loss_fn=loss_fn,
               lr_scheduler=cosine_with_warmup(opt, 2, num_training_steps(len(got["train_loader"]), got["settings"])))
    r_ref, r_got = run_train(ref), run_train(got)
    assert len(r_got.step_losses) == 4
    assert r_got.step_losses == pytest.approx(r_ref.step_losses, rel=1e-6, abs=1e-7)  # logged value unscaled
    for (n, a), b in zip(ref["model"].named_parameters(), got["model"].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=n)


def test_prescaled_loss_value_is_the_sum_and_gradient_the_mean():
    w = torch.tensor([2.0, -1.0], requires_grad=True)

    def loss_fn(model, batch):
        return (w * batch).sum(), torch.tensor(4)

    value, tokens = prescaled_loss(loss_fn)(None, torch.tensor([1.0, 3.0]))
    value.backward()
    assert float(value.detach()) == pytest.approx(-1.0) and int(tokens) == 4
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 3.0]) / 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_no_cuda_is_refused_in_one_sentence():
    with pytest.raises(SettingUnsupportedHere, match="needs a CUDA GPU.*optimizer=adamw"):
        adamw_cpu_offload([torch.nn.Parameter(torch.zeros(2))])


def test_validate_refuses_accumulation_clipping_and_in_backward():
    proc = run_tunekit("validate", "full_finetune", "optimizer=adamw_cpu_offload", "gradient_accumulation_steps=2")
    assert_user_error(proc, "adamw_cpu_offload", "gradient_accumulation_steps=1 clip_grad_norm=null")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torchao's CPUOffloadOptimizer needs CUDA")
def test_real_offload_matches_adamw_on_cuda():
    settings = {**KW, "device": "cuda"}
    ref = make_run(dropout=0.0, settings_kw=settings)
    got = make_run(dropout=0.0, settings_kw=settings)
    got["model"].cuda()
    opt, loss_fn = low_memory_setup(got["model"], lambda ps: adamw_cpu_offload(ps, lr=1e-2, weight_decay=0.01),
                                    got["loss_fn"], gradient_accumulation_steps=1, clip_grad_norm=None,
                                    optimizer_in_backward=False, activation_offloading=False)
    got.update(optimizer=opt, loss_fn=loss_fn,
               lr_scheduler=cosine_with_warmup(opt, 2, num_training_steps(len(got["train_loader"]), got["settings"])))
    ref["optimizer"] = torch.optim.AdamW([p for p in ref["model"].parameters()], lr=1e-2, weight_decay=0.01)
    ref["lr_scheduler"] = cosine_with_warmup(ref["optimizer"], 2,
                                             num_training_steps(len(ref["train_loader"]), ref["settings"]))
    r_ref, r_got = run_train(ref), run_train(got)
    assert r_got.step_losses == pytest.approx(r_ref.step_losses, rel=1e-4, abs=1e-5)
    for (n, a), b in zip(ref["model"].named_parameters(), got["model"].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)
