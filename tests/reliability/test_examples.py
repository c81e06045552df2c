"""Bad input of the `examples` class (held-out rows answered before and after training).

Every case goes through a real entry point and stops before training: exit status 1, no
traceback, the key and value named, and the fix.
"""

from __future__ import annotations

import pytest

from tests.reliability._harness import assert_user_error, run_recipe, run_tunekit, snapshot


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        # every out-of-range value at once
        (["examples.show=-1", "examples.score=-3", "examples.max_new_tokens=0"],
         ["(3 problems)", "`examples.show`=-1: must be >= 0", "`examples.score`=-3: must be >= 0",
          "`examples.max_new_tokens`=0: must be >= 1"]),
        (["examples.shw=3"], ["unknown key `examples.shw`", "Did you mean: show?",
                              "show, score, max_new_tokens"]),
        # examples on (the default task's) but nothing held out to answer
        (["dataset.val_fraction=0"], ["examples.show=4 examples.score=64", "`dataset.val_fraction`=0",
                                      "dataset.val_fraction=0.1", "examples.show=0 examples.score=0"]),
    ],
)
def test_bad_examples_settings_are_refused_by_validate(overrides, needles):
    assert_user_error(run_tunekit("validate", "lora_finetune", *overrides, "--no-build"), *needles)


def test_examples_without_held_out_rows_stop_the_recipe_before_it_writes(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_recipe("full_finetune", run_dir, "dataset.val_fraction=0")
    assert_user_error(proc, "examples.show=4 examples.score=64", "dataset.val_fraction=0.1",
                      "examples.show=0 examples.score=0")
    written = snapshot(run_dir)
    assert not [f for f in written if f.startswith("epoch_") or f in ("config_resolved.yaml", "result.json")], written
