"""Evaluation: lm-evaluation-harness tasks through tunekit's model, and built-in perplexity.

``make_lm`` wraps a ``TransformerDecoder`` + tokenizer as a harness ``LM`` (the ``eval`` extra,
``lm_eval``, is imported only then); ``run_tasks`` scores harness task names or local task
YAML files with it; ``perplexity`` scores text files or data set splits with no harness at all;
``evaluate_model`` does both and writes ``results.json`` / ``results.md`` / ``samples/``.
"""

from tunekit.evaluation._errors import EvaluationError
from tunekit.evaluation._evaluate import evaluate_after_training, evaluate_model, make_lm
from tunekit.evaluation._harness import (
    check_tasks,
    flat_metrics,
    load_task_specs,
    results_table,
    run_tasks,
    write_results,
)
from tunekit.evaluation._perplexity import PerplexityResult, perplexity, read_texts, text_documents

__all__ = [
    "EvaluationError",
    "PerplexityResult",
    "check_tasks",
    "evaluate_after_training",
    "evaluate_model",
    "flat_metrics",
    "load_task_specs",
    "make_lm",
    "perplexity",
    "read_texts",
    "results_table",
    "run_tasks",
    "text_documents",
    "write_results",
]
