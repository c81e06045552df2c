"""One call for the recipes: harness tasks and/or perplexity on a loaded model, results written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunekit.evaluation._harness import run_tasks, write_results
from tunekit.evaluation._perplexity import perplexity
from tunekit.training.metric_logging import MissingExtraError

__all__ = ["evaluate_after_training", "evaluate_model", "make_lm"]


def make_lm(model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None,
            max_gen_toks: int = 256) -> Any:
    """``model`` + ``tokenizer`` as an lm-evaluation-harness ``LM`` (:class:`TunekitLM`).

    Raises:
        MissingExtraError: ``lm_eval`` is not installed (the message names the ``eval`` extra).
    """
    try:
        from tunekit.evaluation._lm import TunekitLM
    except ImportError as err:
        if "lm_eval" not in str(getattr(err, "name", "") or err):
            raise
        raise MissingExtraError(
            f"Evaluating harness tasks needs lm-evaluation-harness, which is not installed ({err}). Install "
            "it with: pip install \"tunekit[eval]\" (perplexity=... needs no extra: leave `tasks` empty "
            "to compute only perplexity).") from err
    return TunekitLM(model, tokenizer, batch_size=batch_size, max_length=max_length, max_gen_toks=max_gen_toks)


def evaluate_model(model: torch.nn.Module, tokenizer: Any, *, output_dir: str | Path, info: Mapping[str, Any],
                   tasks: Sequence[str] = (), num_fewshot: int | None = None, limit: float | None = None,
                   batch_size: int = 8, max_length: int | None = None, max_gen_toks: int = 256, seed: int = 0,
                   perplexity_documents: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
                   perplexity_source: str | None = None, stride: int | None = None,
                   write: bool = True, task_key: str = "tasks") -> dict[str, Any]:
    """Score ``model`` on harness ``tasks`` and/or ``perplexity_documents``; write the results.

    Returns:
        The results (``results`` per task, ``perplexity``, ...) plus ``"path"``: where
        ``results.json`` was written (``write=False``, e.g. ranks other than 0: nothing written).
    """
    was_training = model.training
    model.eval()
    try:
        results: dict[str, Any] = {}
        if tasks:
            lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length, max_gen_toks=max_gen_toks)
            results = dict(run_tasks(lm, tasks, num_fewshot=num_fewshot, limit=limit, seed=seed, key=task_key))
        if perplexity_documents is not None:
            ppl = perplexity(model, perplexity_documents, max_length=max_length, stride=stride,
                             batch_size=batch_size)
            results["perplexity"] = {"source": perplexity_source, **ppl.as_dict()}
    finally:
        model.train(was_training)
    if write:
        results["path"] = str(write_results(results, output_dir, info=info))
    return results


def evaluate_after_training(model: torch.nn.Module, tokenizer: Any, *, tasks: Sequence[str], output_dir: str | Path,
                            metric_logger: Any, step: int, limit: float | None = None, seed: int = 0,
                            rank_zero: bool = True) -> str:
    """The fine-tuning recipes' ``eval_tasks`` hook: score the trained model, write
    ``output_dir/eval/results.{json,md}``, log ``eval/<task>/<metric>`` at ``step`` through
    ``metric_logger``; returns the table to print.

    Every rank runs the forward passes (a sharded model needs them all); rank 0 writes and logs.
    """
    from tunekit.evaluation._harness import flat_metrics, results_table

    results = evaluate_model(model, tokenizer, tasks=tasks, output_dir=Path(output_dir) / "eval", limit=limit,
                             seed=seed, info={"weights": f"{output_dir} (end of training, step {step})",
                                              "tasks": list(tasks), "limit": limit}, write=rank_zero,
                             task_key="eval_tasks")
    if rank_zero and metric_logger is not None:
        metric_logger.log_dict(flat_metrics(results), step=step)
    return results_table(results) + f"(eval_tasks results in {results.get('path', '-')})\n"
