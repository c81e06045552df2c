import os
import signal

import pytest
import torch
from _training_helpers import FakeCheckpointer, TinyLM, make_run, run_train

from tunekit.run.settings import train_settings
from tunekit.training import NonFiniteLossError, steps_per_epoch
from tunekit.training.data_loading import StatefulSampler


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trains_logs_saves_and_evaluates():
    parts = make_run(settings_kw={"eval_every_n_steps": 4, "save_every_n_steps": 5})
    ckpt, logged = FakeCheckpointer(), []

    class Logger:
        def log_dict(self, metrics, step):
            logged.append((step, dict(metrics)))

    result = run_train(parts, checkpointer=ckpt, metric_logger=Logger())
    spe = steps_per_epoch(len(parts["train_loader"]), parts["settings"])
    assert spe == 6 and result.global_step == 12 and len(result.step_losses) == 12
    assert result.step_losses[-1] < result.step_losses[0]
    # epoch checkpoints 0 and 1 (last is final), step checkpoints at 5 and 10
    assert ckpt.calls == [(0, True, 5), (0, True, None), (1, True, 10), (1, False, None)]
    state = ckpt.saved["step_5"]
    assert set(state) == {"model", "optimizer", "lr_scheduler", "recipe_state"}
    rs = state["recipe_state"]
    assert (rs["epoch"], rs["step_in_epoch"], rs["global_step"]) == (0, 5, 5)
    assert rs["sampler"]["start_index"] == 5 * 4 and rs["sampler"]["epoch"] == 0
    assert ckpt.saved["epoch_0"]["recipe_state"]["epoch"] == 1
    assert ckpt.saved["epoch_0"]["recipe_state"]["step_in_epoch"] == 0
    # metrics every step, val at 4, 8, 12 (the end coincides: no second evaluation)
    train_steps = [s for s, m in logged if "loss" in m]
    assert train_steps == list(range(1, 13))
    assert {"loss", "lr", "grad_norm", "tokens_per_second", "epoch"} <= set(logged[0][1])
    assert [s for s, m in logged if "val_loss" in m] == [4, 8, 12]
    assert result.final_val_loss == result.val_losses[-1][1]


def test_gradient_accumulation_matches_big_batch():
    # 4 micro-batches of 2 == 1 batch of 8 (no dropout, SGD so the step is linear in grads)
    kw = {"epochs": 1, "max_steps_per_epoch": 2}
    a = make_run(batch_size=8, dropout=0.0, settings_kw={**kw, "gradient_accumulation_steps": 1})
    b = make_run(batch_size=2, dropout=0.0, settings_kw={**kw, "gradient_accumulation_steps": 4})
    ra, rb = run_train(a), run_train(b)
    assert ra.step_losses == pytest.approx(rb.step_losses, rel=1e-6, abs=1e-6)
    pa, pb = _params(a["model"]), _params(b["model"])
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)


def _resume_run(ckpt, name, **kw):
    parts = make_run(**kw)
    return run_train(parts, resume_state=ckpt.load_checkpoint(name)), parts


@pytest.mark.parametrize("name", ["step_3", "epoch_0", "step_8"])
def test_resume_reproduces_uninterrupted_losses(name):
    kw = {"settings_kw": {"save_every_n_steps": 1, "eval_every_n_steps": 3}}
    parts, ckpt = make_run(**kw), FakeCheckpointer()
    full = run_train(parts, checkpointer=ckpt)
    k = ckpt.saved[name]["recipe_state"]["global_step"]
    resumed, rparts = _resume_run(ckpt, name, seed=0, **kw)
    assert resumed.start_step == k
    assert resumed.step_losses == full.step_losses[k:]  # bit-exact
    assert resumed.final_val_loss == full.final_val_loss
    for key, v in _params(parts["model"]).items():
        assert torch.equal(v, rparts["model"].state_dict()[key]), key


def test_resume_lora_adapter_only():
    peft = pytest.importorskip("tunekit.modules.peft")
    from tunekit.modules.peft import LoRALinear, LoRASpec

    def model():
        torch.manual_seed(0)
        m = TinyLM(dropout=0.1, output=LoRALinear(16, 37, rank=4, alpha=8.0))
        peft.set_trainable_params(m)
        return m

    spec = LoRASpec(rank=4, alpha=8.0, targets=["output"])
    kw = {"settings_kw": {"save_every_n_steps": 4}}
    ckpt = FakeCheckpointer()
    full = run_train(make_run(model=model(), **kw), checkpointer=ckpt, adapter_config=spec)
    state = ckpt.saved["step_4"]
    assert set(state) == {"model", "adapter", "adapter_config", "optimizer", "lr_scheduler", "recipe_state"}
    assert all("lora" in k for k in state["adapter"]) and not any("lora" in k for k in state["model"])
    assert state["adapter_config"]["rank"] == 4
    resumed = run_train(make_run(model=model(), **kw), resume_state=ckpt.load_checkpoint("step_4"),
                        adapter_config=spec)
    assert resumed.step_losses == full.step_losses[4:]


def test_non_finite_loss_stops_without_overwriting():
    class Exploding(TinyLM):
        def forward(self, tokens, **kw):
            out = super().forward(tokens, **kw)
            self.calls = getattr(self, "calls", 0) + 1
            return out * float("nan") if self.calls > 5 else out

    parts = make_run(model=Exploding(), settings_kw={"save_every_n_steps": 2, "log_every_n_steps": 4})
    ckpt = FakeCheckpointer()
    with pytest.raises(NonFiniteLossError) as err:
        run_train(parts, checkpointer=ckpt)
    msg = str(err.value)
    assert "loss is nan at optimizer step 6" in msg and "step_4" in msg and "optimizer.lr" in msg
    assert set(ckpt.saved) == {"step_2", "step_4"}
    assert all(torch.isfinite(v).all() for v in ckpt.saved["step_4"]["model"].values())


def test_sigterm_saves_and_returns():
    parts, ckpt = make_run(), FakeCheckpointer()
    previous = signal.getsignal(signal.SIGTERM)

    def on_step_end(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    result = run_train(parts, checkpointer=ckpt, on_step_end=on_step_end)
    assert result.interrupted and result.global_step == 3 and len(result.step_losses) == 3
    assert result.final_val_loss is None
    assert list(ckpt.saved) == ["step_3"]
    assert ckpt.saved["step_3"]["recipe_state"]["step_in_epoch"] == 3
    assert signal.getsignal(signal.SIGTERM) is previous
    # and the interrupted run resumes to the uninterrupted result
    full = run_train(make_run())
    resumed = run_train(make_run(), resume_state=ckpt.load_checkpoint("step_3"))
    assert result.step_losses + resumed.step_losses == full.step_losses


def test_plain_iterable_loader_resumes_by_skipping():
    parts = make_run(dropout=0.0, settings_kw={"save_every_n_steps": 2, "epochs": 1})
    parts["train_loader"].sampler.set_epoch(0)
    batches = list(parts["train_loader"])
    parts["train_loader"] = batches
    ckpt = FakeCheckpointer()
    full = run_train(parts, checkpointer=ckpt)
    again = make_run(dropout=0.0, settings_kw={"save_every_n_steps": 2, "epochs": 1})
    again["train_loader"] = batches
    resumed = run_train(again, resume_state=ckpt.load_checkpoint("step_2"))
    assert resumed.step_losses == full.step_losses[2:]


def test_invalid_settings_listed_together():
    parts = make_run(settings_kw={"gradient_accumulation_steps": 0, "log_every_n_steps": 0,
                                  "dtype": "fp16"})
    with pytest.raises(ValueError) as err:
        run_train(parts)
    msg = str(err.value)
    assert "gradient_accumulation_steps" in msg and "log_every_n_steps" in msg and "fp16" in msg


def test_activation_checkpointing_same_result():
    a = make_run(dropout=0.0, settings_kw={"epochs": 1, "max_steps_per_epoch": 3})
    b = make_run(dropout=0.0, settings_kw={"epochs": 1, "max_steps_per_epoch": 3,
                                           "activation_checkpointing": True})
    ra, rb = run_train(a), run_train(b)
    assert ra.step_losses == pytest.approx(rb.step_losses, rel=1e-6)
    assert set(a["model"].state_dict()) == set(b["model"].state_dict())


def test_bf16_runs():
    parts = make_run(settings_kw={"epochs": 1, "max_steps_per_epoch": 2, "dtype": "bf16"})
    result = run_train(parts)
    assert all(p.dtype == torch.bfloat16 for p in parts["model"].parameters())
    assert len(result.step_losses) == 2


def test_sampler_is_stateful():
    assert isinstance(make_run()["train_loader"].sampler, StatefulSampler)


def test_settings_defaults_valid():
    assert train_settings().problems() == []


def test_resume_state_checked():
    parts, ckpt = make_run(settings_kw={"save_every_n_steps": 2}), FakeCheckpointer()
    run_train(parts, checkpointer=ckpt)
    with pytest.raises(ValueError, match="lacks"):
        run_train(make_run(), resume_state={"model": {}})
    with pytest.raises(ValueError, match="gradient_accumulation_steps was 1"):
        run_train(make_run(settings_kw={"gradient_accumulation_steps": 2}),
                  resume_state=ckpt.load_checkpoint("step_2"))
