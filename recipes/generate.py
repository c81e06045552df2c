"""`generate` recipe entrypoint: `python -m recipes.generate [overrides]` or `tunekit run generate`.

Composes conf/generate.yaml, validates it (schema rules and component signatures) and hands it to
the training package. Config mistakes exit with status 1 and one paragraph on stderr.
"""

from omegaconf import DictConfig

from tunekit.config import print_config, recipe_main


@recipe_main("generate")
def main(cfg: DictConfig) -> None:
    """Run the `generate` recipe on a validated config."""
    import tunekit.training as training  # lazy: torch is only imported when a run starts

    run = getattr(training, "generate", None)
    if run is None:
        # TODO(recipes issue): tunekit.training.generate(cfg) lands with the training work; until
        # then the recipe composes, validates and prints the resolved config.
        print_config(cfg)
        return
    run(cfg)


if __name__ == "__main__":
    main()
