"""Bad performance settings (attention, MFU peak, fused loss, int8 generation, FP8 base weights):
one paragraph naming the setting and the fix, exit 1, no traceback, nothing written as a checkpoint.

The config-level cases share one ``tunekit validate`` call (it reports every problem at once);
the device-level ones (valid settings this CPU cannot run) fail at setup, before any training step.
"""

from __future__ import annotations

import pytest
from _harness import FAST, assert_user_error, run_recipe, run_tunekit


@pytest.fixture(scope="module")
def bad_train_settings():
    return run_tunekit("validate", "lora_finetune", "attention=dense", "mfu_peak_tflops=-5",
                       "loss=fused_linear_cross_entropy", "loss.num_chunks=0", "fp8_base=maybe")


def test_unknown_attention_kernel(bad_train_settings) -> None:
    assert_user_error(bad_train_settings, "`attention`='dense'", "must be one of: auto, sdpa, flex, varlen")


def test_non_positive_mfu_peak(bad_train_settings) -> None:
    assert_user_error(bad_train_settings, "`mfu_peak_tflops`=-5.0", "must be > 0")


def test_fused_loss_with_zero_chunks(bad_train_settings) -> None:
    assert_user_error(bad_train_settings, "`loss.num_chunks`=0", "FusedLinearCrossEntropyLoss",
                      "the default is `loss.num_chunks=8`")


def test_fp8_base_not_a_bool(bad_train_settings) -> None:
    assert_user_error(bad_train_settings, "`fp8_base=maybe`", "expects a value of type bool")


def test_unknown_generation_quantization() -> None:
    proc = run_tunekit("validate", "generate", "quantize=int4")
    assert_user_error(proc, "`quantize`='int4'", "must be one of: int8")


def test_fp8_base_and_flex_attention_on_the_cpu(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = run_recipe("lora_finetune", run_dir, *FAST, "device=cpu", "packed=true", "fp8_base=true",
                      "attention=flex")
    text = assert_user_error(proc, "`fp8_base`", "needs an NVIDIA Hopper GPU", "set fp8_base=false",
                             "`attention`", "attention=flex trains only on CUDA", "set attention=auto")
    assert "Traceback" not in text
    assert not [p for p in run_dir.rglob("*") if p.name in ("COMPLETE", "checkpoint.json")]  # nothing saved


def test_fp8_base_on_full_fine_tuning() -> None:
    proc = run_tunekit("validate", "full_finetune", "fp8_base=true")
    assert_user_error(proc, "`fp8_base`=true", "frozen base weights of a LoRA run", "set fp8_base=false")
