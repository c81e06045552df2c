"""Bad input to evaluation and plotting: `recipes.evaluate`, `eval_tasks=` and `tunekit plot`.

Each case runs the real entry point and fails before any weight is read (``tunekit validate``,
or the recipe's own checks of task files, text files and the output directory), naming the
key / file / line and the fix; cases that touch saved files check every byte is still there.
"""

from __future__ import annotations

import json
from pathlib import Path

from _harness import FAST, assert_unchanged, assert_user_error, run_recipe, run_tunekit, snapshot

TASK = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: choices
"""


def _task(root: Path, data: str = "data/rows.jsonl", *, name: str = "task.yaml") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(TASK.format(data=data))
    return root / name


def test_validate_evaluate_with_nothing_to_evaluate():
    proc = run_tunekit("validate", "--no-build", "evaluate", "perplexity.source=null")
    assert_user_error(proc, "nothing to evaluate", "`tasks` is empty", "perplexity.source=")


def test_validate_evaluate_names_every_missing_file_and_bad_setting_at_once():
    proc = run_tunekit("validate", "--no-build", "evaluate", "tasks=[no/such/task.yaml]",
                       "perplexity.source=no_such_text.txt", "perplexity.stride=64", "max_length=32")
    assert_user_error(proc, "`tasks[0]`='no/such/task.yaml'", "no such task file", "harness task name",
                      "`perplexity.source`='no_such_text.txt'", "no such file",
                      "`perplexity.stride`=64", "`max_length`=32", "stride <= max_length")


def test_validate_finetune_names_a_missing_eval_task_file():
    proc = run_tunekit("validate", "--no-build", "lora_finetune", "eval_tasks=[my_tasks/missing.yaml]")
    assert_user_error(proc, "`eval_tasks[0]`='my_tasks/missing.yaml'", "no such task file")


def test_task_file_with_a_missing_data_file_names_both_before_loading(tmp_path):
    task = _task(tmp_path / "tasks", data="data/missing.jsonl")
    before = snapshot(tmp_path / "tasks")
    proc = run_recipe("evaluate", tmp_path / "out", f"tasks=[{task}]", "perplexity.source=null")
    assert_user_error(proc, "dataset_kwargs.data_files", "data/missing.jsonl", "no such file",
                      "relative to the task file")
    assert_unchanged(before, tmp_path / "tasks")
    assert not (tmp_path / "out" / "results.json").exists()


def test_finetune_with_a_task_file_without_a_task_name_stops_before_training(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_path: json\noutput_type: multiple_choice\n")
    proc = run_recipe("lora_finetune", tmp_path / "run", *FAST, f"eval_tasks=[{bad}]")
    assert_user_error(proc, "`eval_tasks[0]`", "has no `task:` name", "task: <name>")
    assert not list((tmp_path / "run").glob("epoch_*")) and not (tmp_path / "run" / "logs").exists()


def test_perplexity_file_with_a_record_without_text_names_line_and_field(tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    proc = run_recipe("evaluate", tmp_path / "out", f"perplexity.source={data}")
    assert_user_error(proc, "line 2", "texts.jsonl", "no string field 'text'", "body",
                      "perplexity.text_field=")


def test_results_never_go_into_a_training_runs_directory(tmp_path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / "result.json").write_text("{}\n")
    before = snapshot(run)
    proc = run_recipe("evaluate", None, f"output_dir={run}")
    assert_user_error(proc, f"`output_dir`='{run}'", "fine-tuning run's directory", f"checkpoint={run}",
                      "Nothing was written")
    assert_unchanged(before, run)


def test_plot_of_a_directory_without_metrics_says_where_metrics_come_from(tmp_path):
    (tmp_path / "run").mkdir()
    assert_user_error(run_tunekit("plot", str(tmp_path / "run")), "holds no logs/metrics.jsonl",
                      "metric_logger=jsonl")
    assert_user_error(run_tunekit("plot", str(tmp_path / "gone")), "no such run directory")


def test_plot_keeps_an_existing_output_file(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "logs").mkdir(parents=True)
        (tmp_path / name / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (tmp_path / "mine.png").write_bytes(b"my own picture")
    before = snapshot(tmp_path)
    proc = run_tunekit("plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "mine.png"))
    assert_user_error(proc, "mine.png", "exists; pass --force")
    assert_unchanged(before, tmp_path)


def test_task_template_naming_a_field_the_data_lacks_stops_before_loading(tmp_path):
    # the harness would stop with a jinja traceback mid-run ('quesion' is undefined)
    task = _task(tmp_path / "tasks")
    task.write_text(task.read_text().replace("{{question}}", "{{quesion}}"))
    (tmp_path / "tasks" / "data").mkdir()
    (tmp_path / "tasks" / "data" / "rows.jsonl").write_text(
        json.dumps({"question": "2+2?", "choices": ["4", "5"], "label": 0}) + "\n")
    before = snapshot(tmp_path / "tasks")
    proc = run_recipe("evaluate", tmp_path / "out", f"tasks=[{task}]", "perplexity.source=null")
    assert_user_error(proc, f"Task file {task}", "`doc_to_text: {{quesion}}` names 'quesion'",
                      "['choices', 'label', 'question']", "`doc_to_text: \"{{question}}\"`")
    assert_unchanged(before, tmp_path / "tasks")
    assert not (tmp_path / "out" / "results.json").exists()
