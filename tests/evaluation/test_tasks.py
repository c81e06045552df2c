"""Task specs (harness names, local task files) and the results files, without running a model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from _eval_helpers import write_task  # noqa: E402

from tunekit.evaluation import (  # noqa: E402
    EvaluationError,
    check_tasks,
    flat_metrics,
    load_task_specs,
    results_table,
    write_results,
)

RESULTS = {
    "results": {"tiny_mc": {"alias": "tiny_mc", "acc,none": 0.6, "acc_stderr,none": 0.2449, "sample_len": 5,
                            "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}},
    "n-samples": {"tiny_mc": {"original": 5, "effective": 5}},
    "samples": {"tiny_mc": [{"doc_id": 0, "target": 0, "arguments": [["Q", " a"]], "resps": [[[-1.5, True]]],
                             "filtered_resps": [[-1.5, True]], "acc": 1.0}]},
    "perplexity": {"source": "notes.txt", "loss": 2.0, "perplexity": 7.389, "tokens": 10, "documents": 1,
                   "windows": 1},
}


class _FakeManager:
    """Stands in for the harness's full task index (building it reads thousands of YAML files)."""

    def __init__(self, include_defaults=True, **_):
        self.all_tasks = ["arc_easy", "arc_challenge", "hellaswag", "hellaswag_vi"] if include_defaults else []


def test_a_misspelt_harness_task_is_refused_with_close_matches(monkeypatch):
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", _FakeManager)
    specs, _ = load_task_specs(["hellaswag", "arc_easy"])
    assert specs == ["hellaswag", "arc_easy"]
    with pytest.raises(EvaluationError) as err:
        load_task_specs(["arc_easy", "helaswag"], key="eval_tasks")
    text = str(err.value)
    assert "`eval_tasks[1]`='helaswag'" in text and "did you mean: hellaswag" in text and "task YAML" in text


@pytest.mark.parametrize("check", [load_task_specs, check_tasks], ids=["harness-loader", "early-check"])
def test_a_task_file_reads_its_data_beside_it_and_names_what_is_wrong(tmp_path, monkeypatch, check):
    task = write_task(tmp_path / "tasks")
    (tmp_path / "tasks" / "child.yaml").write_text(
        "include: tiny_mc.yaml\ntask: child\nprocess_docs: !function utils.process\n")
    monkeypatch.chdir(tmp_path)  # relative to the YAML, not to the working directory
    if check is load_task_specs:
        (spec,), _ = load_task_specs([str(task)])
        assert spec["task"] == "tiny_mc"
        assert spec["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "tasks" / "data" / "tiny_mc.jsonl")
    else:  # include merged, !function left to the harness; nothing to refuse
        assert check_tasks([str(task), str(tmp_path / "tasks" / "child.yaml")]) is None
    (tmp_path / "tasks" / "data" / "tiny_mc.jsonl").unlink()
    with pytest.raises(EvaluationError, match=r"data_files.*\.test='data/tiny_mc.jsonl': no such file"):
        check([str(task)])
    (tmp_path / "notask.yaml").write_text("dataset_path: json\n")
    with pytest.raises(EvaluationError, match="`tasks\\[0\\]`='notask.yaml'.*has no `task:` name"):
        check(["notask.yaml"])
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    with pytest.raises(EvaluationError, match="cannot read the task file"):
        check(["broken.yaml"])


def test_results_table_metrics_for_the_logger_and_files_never_overwritten(tmp_path):
    table = results_table(RESULTS)
    assert "| tiny_mc | acc | 0.6000 | 0.2449 | 5 |" in table
    assert "| tiny_mc | exact_match (strict-match) | 0.2500 | - | 5 |" in table
    assert "| perplexity (notes.txt) | perplexity | 7.3890 |" in table and "sample_len" not in table
    assert flat_metrics(RESULTS) == {"eval/tiny_mc/acc": 0.6, "eval/tiny_mc/exact_match,strict-match": 0.25,
                                     "eval/perplexity/loss": 2.0, "eval/perplexity/perplexity": 7.389,
                                     "eval/perplexity/tokens": 10.0, "eval/perplexity/documents": 1.0,
                                     "eval/perplexity/windows": 1.0}
    first = write_results(RESULTS, tmp_path, info={"weights": "w"})
    saved = first.read_bytes()
    second = write_results(RESULTS, tmp_path, info={"weights": "w2"})
    assert first.name == "results.json" and second.name == "results_2.json" and first.read_bytes() == saved
    record = json.loads(first.read_text())
    assert record["evaluated"] == {"weights": "w"} and record["results"]["tiny_mc"]["acc,none"] == 0.6
    (sample,) = map(json.loads, (tmp_path / "samples" / "tiny_mc.jsonl").read_text().splitlines())
    assert sample["resps"] == [[[-1.5, True]]] and sample["acc"] == 1.0
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results_2.json", "results.md",
                                                    "results_2.md", "samples"}
    (tmp_path / "results_3.md").write_text("the user's notes")  # the pair moves on together, nothing replaced
    third = write_results(RESULTS, tmp_path, info={"weights": "w3"})
    assert third.name == "results_4.json" and (tmp_path / "results_4.md").is_file()
    assert (tmp_path / "results_3.md").read_text() == "the user's notes"


@pytest.mark.parametrize("edit,words", [
    (("{{question}}", "Q: {{quesion}}"), ["`doc_to_text: Q: {{quesion}}` names 'quesion'", "stop with a template error",
                                          "`doc_to_text: \"{{question}}\"`"]),
    (("doc_to_target: label", "doc_to_target: lable"), ["`doc_to_target: lable` names 'lable'",
                                                        "score the literal text 'lable'", "`doc_to_target: label`"]),
    (("doc_to_choice: choices\n", ""), ["`output_type: multiple_choice` needs `doc_to_choice`",
                                        "doc_to_choice: choices"]),
    (("{{question}}", "{{question"), ["is not a valid Jinja template"]),
], ids=["template-typo", "target-not-a-field", "no-choices", "broken-template"])
def test_a_task_file_that_the_harness_would_score_wrongly_or_crash_on_is_refused(tmp_path, edit, words):
    task = write_task(tmp_path)
    task.write_text(task.read_text().replace(*edit))
    with pytest.raises(EvaluationError) as err:
        check_tasks([str(task)])
    text = str(err.value)
    assert f"Task file {task.resolve()}" in text or f"Task file {task}" in text
    assert all(w in text for w in words), text


def test_a_task_data_file_with_a_bad_json_line_is_named_and_good_templates_pass(tmp_path):
    task = write_task(tmp_path)
    task.write_text(task.read_text().replace('"{{question}}"', '"Q: {{question}} {% for c in choices %}{{c}}'
                                             '{% endfor %}"'))
    assert check_tasks([str(task)]) is None  # loop variables and real fields are fine
    data = tmp_path / "data" / "tiny_mc.jsonl"
    data.write_text(data.read_text() + '{"question": \n')
    with pytest.raises(EvaluationError, match=r"tiny_mc.jsonl of task file .*, line 6: not valid JSON"):
        check_tasks([str(task)])


def test_tasks_without_the_harness_installed_are_refused_before_training(tmp_path, monkeypatch):
    import importlib.util

    task = write_task(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(EvaluationError) as err:  # was: the run trained, then failed at its end
        check_tasks([str(task)], "eval_tasks")
    assert "`eval_tasks`=[" in str(err.value) and 'pip install "tunekit[eval]"' in str(err.value)
