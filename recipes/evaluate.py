"""Evaluation: `python -m recipes.evaluate [overrides]` (or `tunekit run evaluate`).

What is evaluated (the same choices as `recipes.generate`):

- `checkpoint=<dir>`: a fine-tuning run (its newest complete checkpoint), an `epoch_N/` /
  `step_N/` directory or its `model/`, or any HF / Meta model directory;
- else the base model the `checkpointer` group points at (the bundled tiny model by default);
- plus `adapter=<dir>`: a LoRA adapter merged on top of base weights (refused on a checkpoint
  that already holds it).

How:

- `tasks=[hellaswag,arc_easy]` or `tasks=[path/to/my_task.yaml]`: lm-evaluation-harness tasks
  (the `eval` extra) scored through tunekit's model and KV-cached generation
  (`tunekit.evaluation.TunekitLM`), batched (`batch_size`), with `num_fewshot` and `limit`;
- `perplexity.source=<file.txt|file.jsonl|dataset>`: built-in perplexity of a text file, a file
  of `{"text": ...}` records, or the `dataset` group's `perplexity.split` (targets only, as the
  validation loss), in windows of `max_length` (default: the model's context) advancing by
  `perplexity.stride`.

Writes `results.json`, `results.md` (a table, also printed) and `samples/<task>.jsonl` into the
run directory (`outputs/evaluate/<time>/`, or `output_dir=`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from tunekit.config import instantiate, recipe_main

RECIPE = "evaluate"


@recipe_main("evaluate")
def main(cfg: DictConfig) -> float | None:
    """Run the `evaluate` recipe; returns the perplexity (else the first task's first metric)."""
    from tunekit.run.errors import user_errors  # lazy: torch loads only when a run starts

    with user_errors():
        return run(cfg)


def load_model(cfg: DictConfig):
    """The model to evaluate (eval mode, on `device` in `dtype`) and a description of its weights."""
    from tunekit.run.model import build_inference_model, find_inference_weights, load_inference_weights

    weights = find_inference_weights(checkpoint=cfg.checkpoint, adapter=cfg.adapter, checkpointer=cfg.checkpointer,
                                     output_dir=cfg.output_dir, device=cfg.device, dtype=cfg.dtype)
    model = load_inference_weights(build_inference_model(cfg.model, weights), weights)
    info = {"weights": str(weights.source), "adapter": None if cfg.adapter is None else str(cfg.adapter),
            "model": str(cfg.model.get("_component_") or cfg.model.get("_target_")), "dtype": cfg.dtype,
            "device": str(weights.device)}
    return model, info


def _perplexity_documents(cfg: DictConfig, tokenizer):
    """`(tokens, labels)` per document of `perplexity.source` (None: no perplexity asked)."""
    from tunekit.evaluation import read_texts, text_documents

    source = cfg.perplexity.source
    if source is None:
        return None, None
    if source == "dataset":
        ds = instantiate(cfg.dataset)(tokenizer, split=cfg.perplexity.split)
        docs = [(s["tokens"], s["labels"]) for s in (ds[i] for i in range(len(ds)))]
        return docs, f"dataset {getattr(ds, 'source', cfg.dataset.get('source'))} ({cfg.perplexity.split} split)"
    return text_documents(tokenizer, read_texts(source, text_field=cfg.perplexity.text_field)), str(source)


def _check_output_dir(cfg: DictConfig) -> None:
    """Results never go into a fine-tuning run's own directory (a run never writes into another's)."""
    from pathlib import Path

    from tunekit.checkpointing import list_checkpoints
    from tunekit.config import ConfigError

    out = Path(cfg.output_dir)
    held = [p.name for p in list_checkpoints(out)] if out.is_dir() else []
    if held or (out / "logs" / "metrics.jsonl").is_file():
        what = ", ".join(held[:3]) or "logs/metrics.jsonl"
        raise ConfigError(
            f"`output_dir`={str(out)!r} is a fine-tuning run's directory ({what}); "
            f"evaluation results do not go into another run's directory. To evaluate that run, pass "
            f"checkpoint={out} and leave output_dir unset (results go to outputs/evaluate/<time>/), "
            "or choose an empty output_dir. Nothing was written.")


def run(cfg: DictConfig) -> float | None:
    """Load the weights, score the tasks and/or the perplexity, write and print the results."""
    from omegaconf import OmegaConf

    from tunekit.evaluation import evaluate_model, results_table
    from tunekit.run.model import check_tokenizer_fits

    _check_output_dir(cfg)
    tokenizer = instantiate(cfg.tokenizer)
    documents, described = _perplexity_documents(cfg, tokenizer)  # bad files fail before loading weights
    if cfg.tasks:
        from tunekit.evaluation import check_tasks

        check_tasks(list(cfg.tasks))  # unknown task names / bad task files fail before loading weights
    model, info = load_model(cfg)
    note = check_tokenizer_fits(tokenizer, model)
    if note:
        print(f"tunekit {RECIPE}: {note}", file=sys.stderr)
    info.update(tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                perplexity=OmegaConf.to_container(cfg.perplexity, resolve=True))
    results = evaluate_model(
        model, tokenizer, output_dir=cfg.output_dir, info=info, tasks=list(cfg.tasks),
        num_fewshot=cfg.num_fewshot, limit=cfg.limit, batch_size=cfg.batch_size, max_length=cfg.max_length,
        max_gen_toks=cfg.max_gen_toks, seed=cfg.seed, perplexity_documents=documents,
        perplexity_source=described, stride=cfg.perplexity.stride)
    print(results_table(results), end="", flush=True)
    samples = "; per-sample: samples/" if results.get("samples") else ""
    print(f"tunekit {RECIPE}: results in {results['path']} (table: {Path(results['path']).with_suffix('.md').name}"
          f"{samples})", file=sys.stderr, flush=True)
    if "perplexity" in results:
        return results["perplexity"]["perplexity"]
    for metrics in results.get("results", {}).values():
        for key, value in metrics.items():
            if isinstance(value, float) and "_stderr" not in key:
                return value
    return None


if __name__ == "__main__":
    main()
