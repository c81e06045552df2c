"""`lora_finetune` recipe entrypoint: `python -m recipes.lora_finetune [overrides]` or `tunekit run lora_finetune`.

Composes conf/lora_finetune.yaml, validates it (schema rules and component signatures) and hands it to
the training package. Config mistakes exit with status 1 and one paragraph on stderr.
"""

from omegaconf import DictConfig

from tunekit.config import print_config, recipe_main


@recipe_main("lora_finetune")
def main(cfg: DictConfig) -> None:
    """Run the `lora_finetune` recipe on a validated config."""
    import tunekit.training as training  # lazy: torch is only imported when a run starts

    run = getattr(training, "lora_finetune", None)
    if run is None:
        # TODO(recipes issue): tunekit.training.lora_finetune(cfg) lands with the training work; until
        # then the recipe composes, validates and prints the resolved config.
        print_config(cfg)
        return
    run(cfg)


if __name__ == "__main__":
    main()
