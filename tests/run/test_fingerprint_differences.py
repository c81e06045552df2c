"""What a refused resume says differs: only the changed keys of a settings node, and the recipe
of the same kind that saved the checkpoint (a lora_dpo adapter offered to lora_finetune)."""

from __future__ import annotations

from tunekit.run.resume import fingerprint_differences

LORA = {"rank": 8, "alpha": 16.0, "alpha_pattern": {}, "dropout": 0.0, "merge_base": "dequantized",
        "quantize_base": "nf4", "rank_pattern": {}, "targets": ["q_proj", "k_proj", "v_proj", "output_proj"],
        "use_dora": False}


def test_a_settings_node_names_only_the_keys_that_changed():
    saved = {"recipe": "lora_dpo", "lora": LORA}
    (line,) = fingerprint_differences(saved, {"recipe": "lora_dpo", "lora": {**LORA, "quantize_base": None}})
    assert line == "lora: quantize_base=nf4 then, null now (set by the lora.* settings)"
    assert fingerprint_differences(saved, {"recipe": "lora_dpo", "lora": {**LORA}}) == []


def test_another_recipe_of_the_same_kind_is_named_with_the_command_that_resumes_it():
    saved, now = {"recipe": "lora_dpo", "lora": LORA, "seed": 0}, {"recipe": "lora_finetune", "lora": LORA, "seed": 0}
    assert fingerprint_differences(saved, now) == [
        "recipe: lora_dpo then, lora_finetune now (resume it with `python -m recipes.lora_dpo resume=...`)"]
    assert fingerprint_differences(saved, now, accept=["recipe"]) == []
    # the other kind (full vs LoRA) is refused when the files are read, with its own message
    assert not [d for d in fingerprint_differences({"recipe": "full_dpo", "lora": None}, now) if "recipe" in d]
