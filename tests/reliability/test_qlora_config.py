"""Bad input of the QLoRA / low-memory class: every case through ``tunekit validate`` (no
training), as a user types it: exit status 1, no traceback, the key named and the fix."""

from __future__ import annotations

import pytest

from tests.reliability._harness import assert_user_error, run_tunekit


@pytest.mark.parametrize(
    ("recipe", "overrides", "needles"),
    [
        # an NF4 typo: the key, the value and the one valid choice
        ("lora_finetune", ["lora.quantize_base=nf8"], ["`lora.quantize_base`='nf8'", "must be one of: nf4"]),
        # merge_base: the two meanings offered
        ("lora_finetune", ["lora.quantize_base=nf4", "lora.merge_base=both"],
         ["`lora.merge_base`='both'", "dequantized, original"]),
        # optimizer in backward cannot accumulate: the keys and what to do instead
        ("full_finetune", ["optimizer_in_backward=true", "gradient_accumulation_steps=4"],
         ["`optimizer_in_backward`=true", "`gradient_accumulation_steps`=4", "raise batch_size instead",
          "optimizer_in_backward=false"]),
        # ... nor clip (the norm needs every gradient of the step)
        ("lora_finetune", ["optimizer_in_backward=true", "clip_grad_norm=1.0"],
         ["`clip_grad_norm`=1.0", "clip_grad_norm=null"]),
        # a per-module rank for a module LoRA does not adapt (PEFT's HF name): the key and what works
        ("lora_finetune", ["+lora.rank_pattern={lm_head:4}"],
         ["`lora.rank_pattern.lm_head`", "matches no module of `lora.targets`", "layers.3.attn.q_proj"]),
        # the 8-bit optimizer's own keys are checked against its signature
        ("full_finetune", ["optimizer=adamw8bit", "+optimizer.paged=true"], ["optimizer", "paged"]),
    ],
    ids=["quantize_base_typo", "merge_base_unknown", "in_bwd_with_accumulation", "in_bwd_with_clipping",
         "rank_pattern_reaches_nothing", "adamw8bit_unknown_key"],
)
def test_refused_before_training(recipe, overrides, needles):
    proc = run_tunekit("validate", recipe, *overrides, "--no-build")
    text = assert_user_error(proc, *needles)
    if "optimizer_in_backward=true" in overrides:  # only the setting that clashes is named
        other = "clip_grad_norm" if "gradient_accumulation_steps=4" in overrides else "gradient_accumulation_steps"
        assert f"`{other}`=" not in text and "None" not in text
