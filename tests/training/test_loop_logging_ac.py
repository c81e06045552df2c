"""Interval-mean loss logging (and its exact resume), the activation-checkpointing policy."""

from __future__ import annotations

import pytest
from _training_helpers import FakeCheckpointer, make_run, run_train

from tunekit.run.settings import train_settings
from tunekit.training.activation_checkpointing import is_checkpointed


class Recorder:
    def __init__(self) -> None:
        self.logged: dict[int, float] = {}

    def log_dict(self, metrics, step):
        if "loss" in metrics:
            self.logged[step] = metrics["loss"]


class CountingLoss:
    """Wraps the loss and records each micro-batch's (loss_sum, tokens)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, model, batch):
        loss_sum, n = self.inner(model, batch)
        if model.training:
            self.calls.append((loss_sum.item(), n.item()))
        return loss_sum, n


def test_logged_loss_is_the_token_weighted_mean_of_the_interval():
    # 2 epochs x 6 steps, log every 4: records at 4, 8 and the forced last step 12.
    parts = make_run(dropout=0.0, settings_kw={"log_every_n_steps": 4, "gradient_accumulation_steps": 1})
    parts["loss_fn"] = CountingLoss(parts["loss_fn"])
    rec = Recorder()
    result = run_train(parts, metric_logger=rec)
    calls = parts["loss_fn"].calls
    assert len(calls) == len(result.step_losses) == 12  # one micro-batch per step
    assert sorted(rec.logged) == [4, 8, 12]
    for end in (4, 8, 12):
        chunk = calls[end - 4:end]
        expected = sum(s for s, _ in chunk) / sum(n for _, n in chunk)
        assert rec.logged[end] == pytest.approx(expected, rel=1e-6)
        assert rec.logged[end] != result.step_losses[end - 1]  # not just the last step
    # per-step losses are still per step
    assert result.step_losses[0] == pytest.approx(calls[0][0] / calls[0][1], rel=1e-6)


def test_one_step_interval_logs_exactly_the_step_loss():
    parts = make_run(settings_kw={"epochs": 1, "max_steps_per_epoch": 4})
    rec = Recorder()
    result = run_train(parts, metric_logger=rec)
    assert [rec.logged[s] for s in range(1, 5)] == result.step_losses  # bit for bit


@pytest.mark.parametrize("name", ["step_5", "epoch_0"])
def test_resume_inside_a_log_interval_logs_the_uninterrupted_values(name):
    # log every 4, checkpoint every step: step_5 (and epoch_0 = step 6) lie inside 5..8.
    kw = {"settings_kw": {"log_every_n_steps": 4, "save_every_n_steps": 1}}
    ckpt, full_log = FakeCheckpointer(), Recorder()
    full = run_train(make_run(**kw), checkpointer=ckpt, metric_logger=full_log)
    state = ckpt.load_checkpoint(name)
    assert state["recipe_state"]["log_interval"]["tokens"] > 0
    resumed_log = Recorder()
    resumed = run_train(make_run(**kw), resume_state=state, metric_logger=resumed_log)
    assert resumed.step_losses == full.step_losses[resumed.start_step:]
    assert resumed_log.logged == {s: v for s, v in full_log.logged.items() if s > resumed.start_step}


def test_ac_policy_selective_reaches_the_layers_and_is_validated():
    parts = make_run(dropout=0.0, settings_kw={"epochs": 1, "max_steps_per_epoch": 2,
                                               "activation_checkpointing": True,
                                               "ac_policy": "selective", "ac_every_k_layers": 2})
    ref = make_run(dropout=0.0, settings_kw={"epochs": 1, "max_steps_per_epoch": 2})
    result, expected = run_train(parts), run_train(ref)
    layers = parts["model"].layers
    assert [is_checkpointed(layer) for layer in layers] == [True, False]
    assert layers[0]._tunekit_save_matmuls is True
    assert result.step_losses == pytest.approx(expected.step_losses, rel=1e-6)
    assert any("ac_policy" in p for p in train_settings(ac_policy="some").problems())


def test_sharded_model_must_carry_the_requested_ac_and_compile():
    from tunekit.training.prepare import _sharded_wrapping_problems

    parts = make_run()
    settings = train_settings(activation_checkpointing=True, compile=True)
    problems = _sharded_wrapping_problems(parts["model"], settings)
    assert len(problems) == 2 and "shard_model" in problems[0] and "shard_model" in problems[1]
    from tunekit.training.activation_checkpointing import apply_activation_checkpointing

    apply_activation_checkpointing(parts["model"])
    for layer in parts["model"].layers:
        layer._tunekit_compiled = True  # what compile_model marks
    assert _sharded_wrapping_problems(parts["model"], settings) == []
