"""`full_finetune` recipe entrypoint: `python -m recipes.full_finetune [overrides]` or `tunekit run full_finetune`.

Composes conf/full_finetune.yaml, validates it (schema rules and component signatures) and hands it to
the training package. Config mistakes exit with status 1 and one paragraph on stderr.
"""

from omegaconf import DictConfig

from tunekit.config import print_config, recipe_main


@recipe_main("full_finetune")
def main(cfg: DictConfig) -> None:
    """Run the `full_finetune` recipe on a validated config."""
    import tunekit.training as training  # lazy: torch is only imported when a run starts

    run = getattr(training, "full_finetune", None)
    if run is None:
        # TODO(recipes issue): tunekit.training.full_finetune(cfg) lands with the training work; until
        # then the recipe composes, validates and prints the resolved config.
        print_config(cfg)
        return
    run(cfg)


if __name__ == "__main__":
    main()
