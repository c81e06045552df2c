"""The loop keeps no gradient alive past its optimizer step (a whole model's worth on a 7B run)."""

from __future__ import annotations

import gc
import weakref

from tests.training._training_helpers import make_run, run_train


def test_no_gradient_survives_the_step() -> None:
    parts = make_run(dropout=0.0, settings_kw={"epochs": 1, "max_steps_per_epoch": 3})
    refs: list[weakref.ref] = []
    for p in parts["model"].parameters():
        p.register_post_accumulate_grad_hook(lambda p: refs.append(weakref.ref(p.grad)))
    alive_after_step: list[int] = []

    def on_step_end(step: int) -> None:
        gc.collect()
        alive_after_step.append(sum(r() is not None for r in refs))
        refs.clear()

    run_train(parts, on_step_end=on_step_end)
    n_params = sum(1 for _ in parts["model"].parameters())
    assert n_params > 0
    # Every step produced gradients, and none of them is referenced once the step is over.
    assert alive_after_step == [0, 0, 0]
