"""Running lm-evaluation-harness tasks on a :class:`TunekitLM`, and writing what they give.

Tasks are harness task names (``hellaswag``, ``arc_easy``: their data from the Hub, or from
the data sets cache when offline) or local task files: a harness task YAML (``task:``,
``dataset_path: json``, ``dataset_kwargs.data_files``, ``doc_to_text`` ...) whose relative
``data_files`` are read relative to the YAML file itself. Results go to ``results.json``
(metrics per task, sample counts, settings), ``results.md`` (a table) and
``samples/<task>.jsonl`` (every request with its log-likelihoods or generated text).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunekit.evaluation._errors import EvaluationError

__all__ = ["check_tasks", "flat_metrics", "load_task_specs", "results_table", "run_tasks", "write_results"]

_TASK_FILE_HINT = ("A local task is a harness task YAML, e.g. `task: my_task`, `dataset_path: json`, "
                   "`dataset_kwargs: {data_files: {test: my_data.jsonl}}`, `test_split: test`, "
                   "`output_type: multiple_choice`, `doc_to_text`, `doc_to_target`, `doc_to_choice`, "
                   "`metric_list: [{metric: acc}]` (docs/recipes.md, \"Evaluating\").")


def _is_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec


def _resolve_data_files(files: Any, base: Path, where: str) -> Any:
    """``data_files`` with relative paths made relative to the task file; each file must exist."""
    if isinstance(files, Mapping):
        return {k: _resolve_data_files(v, base, f"{where}.{k}") for k, v in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve_data_files(v, base, where) for v in files]
    p = Path(str(files)).expanduser()
    p = p if p.is_absolute() else base / p
    if not any(ch in str(p) for ch in "*?[") and not p.exists():
        raise EvaluationError(f"{where}={files!r}: no such file ({p}). Relative paths in a task file are read "
                              "relative to the task file; fix the path or put the data file there.")
    return str(p)


def _light_yaml(path: Path, seen: frozenset[Path] = frozenset()) -> Any:
    """A task YAML as data without importing the harness: ``include:`` merged (the file's own keys
    win), ``!function`` tags kept as text. The harness reads the file again to run it."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, tag, node: f"!{tag} {getattr(node, 'value', '')}")
    path = path.resolve()
    if path in seen:
        raise ValueError(f"include cycle at {path}")
    with path.open("rb") as f:
        cfg = yaml.load(f, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(cfg, dict) or "include" not in cfg:
        return cfg
    merged: dict[str, Any] = {}
    includes = cfg.pop("include")
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise ValueError(f"its include {inc!r} is not a file ({inc_path})")
        included = _light_yaml(inc_path, seen | {path})
        merged.update(included if isinstance(included, dict) else {})
    return {**merged, **cfg}


def _task_file_spec(spec: str, where: str, *, light: bool = False) -> dict[str, Any]:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise EvaluationError(f"{where}: no such task file. Give a harness task name (e.g. hellaswag) or the "
                              f"path of a task YAML file. {_TASK_FILE_HINT}")
    try:
        if light:
            cfg = _light_yaml(path)
        else:
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(path)
    except Exception as err:  # noqa: BLE001 - a YAML error, a missing include or !function target
        raise EvaluationError(f"{where}: cannot read the task file {path}: {' '.join(str(err).split())}. "
                              f"{_TASK_FILE_HINT}") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("task"), str):
        raise EvaluationError(f"{where}: {path} has no `task:` name (a harness task YAML starts with "
                              f"`task: <name>`). {_TASK_FILE_HINT}")
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, Mapping) and "data_files" in kwargs:
        cfg["dataset_kwargs"] = {**kwargs, "data_files": _resolve_data_files(
            kwargs["data_files"], path.parent, f"`dataset_kwargs.data_files` of {path}")}
    _check_task_data(cfg, path)
    return cfg


def _split_file(cfg: Mapping[str, Any]) -> Path | None:
    """The local JSON/JSONL file the task scores (its ``test_split``, else ``validation_split``), if any."""
    kwargs = cfg.get("dataset_kwargs")
    if cfg.get("dataset_path") != "json" or not isinstance(kwargs, Mapping) or "field" in kwargs:
        return None
    files = kwargs.get("data_files")
    split = cfg.get("test_split") or cfg.get("validation_split")
    if isinstance(files, Mapping):
        files = files.get(split)
    if isinstance(files, (list, tuple)):
        files = files[0] if len(files) == 1 else None
    if not isinstance(files, str) or any(ch in files for ch in "*?[") or not files.endswith((".json", ".jsonl")):
        return None
    return Path(files)


def _task_records(data: Path, path: Path) -> list[Any]:
    """The records of a task's local JSON list / JSONL file; a bad line is one paragraph."""
    text = data.read_text(encoding="utf-8-sig")
    if data.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvaluationError(f"The data file {data} of task file {path} is not valid JSON ({e.msg} at line "
                                  f"{e.lineno}, column {e.colno}); fix that line.") from None
        return rows if isinstance(rows, list) else []
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvaluationError(
                    f"The data file {data} of task file {path}, line {n}: not valid JSON ({e.msg} at column "
                    f"{e.colno}). A .jsonl file holds one complete JSON object per line; fix or delete that "
                    f"line.") from None
    return rows


def _check_task_data(cfg: dict[str, Any], path: Path) -> None:
    """Refuse what the harness would only find while scoring (a traceback) or would score silently
    wrong: a template naming a field the local data does not have (``{{quesion}}``), a
    ``doc_to_target: lable`` that is no field (the harness takes it as the literal text "lable"),
    multiple choice without ``doc_to_choice``, a data file that is not valid JSON."""
    if cfg.get("output_type") == "multiple_choice" and "doc_to_choice" not in cfg:
        raise EvaluationError(
            f"Task file {path}: `output_type: multiple_choice` needs `doc_to_choice`, the answer options of a "
            f"row: a field holding a list (`doc_to_choice: choices`), a template giving one, or a literal "
            f"list (`doc_to_choice: [\"yes\", \"no\"]`). Add it, or use `output_type: generate_until`.")
    data = _split_file(cfg)
    if data is None or not data.is_file() or cfg.get("process_docs"):  # process_docs may add fields
        return
    rows = _task_records(data, path)
    first = next((r for r in rows if isinstance(r, Mapping)), None)
    if first is None:
        raise EvaluationError(f"The data file {data} of task file {path} holds no records ({{...}} objects): "
                              f"a task scores one JSON object per row. Point `dataset_kwargs.data_files` at the "
                              f"task's data.")
    import jinja2
    from jinja2 import meta

    have = {str(k) for r in rows if isinstance(r, Mapping) for k in r}  # a field of some records is a field
    fields = sorted(have)
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        value = cfg.get(key)
        if not isinstance(value, str) or value.startswith("!function"):
            continue
        if "{{" in value or "{%" in value:
            try:
                names = meta.find_undeclared_variables(jinja2.Environment().parse(value))
            except jinja2.TemplateSyntaxError as e:
                raise EvaluationError(
                    f"Task file {path}: `{key}: {value}` is not a valid Jinja template ({e.message}); fix the "
                    f"template, e.g. `{key}: \"{{{{{fields[0]}}}}}\"`.") from None
            unknown = sorted(n for n in names if n not in have)
        else:
            unknown = [value] if key != "doc_to_text" and value.isidentifier() and value not in have else []
        if unknown:
            raise EvaluationError(
                f"Task file {path}: `{key}: {value}` names {', '.join(repr(u) for u in unknown)}, which is not a "
                f"field of its data {data} (its records have {fields}). Use one of those fields (e.g. "
                f"`{key}: {_guess(unknown[0], fields, key)}`); the harness would otherwise "
                f"{'stop with a template error' if '{' in value else 'score the literal text ' + repr(value)}.")


def _guess(name: str, fields: list[str], key: str) -> str:
    from tunekit.config.errors import close_matches

    hits = close_matches(name, fields)
    pick = hits[0] if hits else fields[0]
    return f"\"{{{{{pick}}}}}\"" if key == "doc_to_text" else pick


def check_tasks(tasks: Sequence[str], key: str = "tasks") -> None:
    """Refuse unusable ``tasks`` before any weight is read or step is trained: task files are read
    and their data files found without importing the harness; names are looked up in the
    harness's task index (building it imports lm_eval and reads its task YAML files)."""
    import importlib.util

    if tasks and importlib.util.find_spec("lm_eval") is None:  # before training, not after it
        raise EvaluationError(
            f"`{key}`={[str(t) for t in tasks]} needs lm-evaluation-harness, which is not installed. Install it "
            f"with: pip install \"tunekit[eval]\" (or drop `{key}`; perplexity needs no extra).")
    names = [str(t) for t in tasks if not _is_path(str(t))]
    for i, spec in enumerate(tasks):
        if _is_path(str(spec)):
            _task_file_spec(str(spec), f"`{key}[{i}]`={str(spec)!r}", light=True)
    if names:
        load_task_specs(tasks, key)


def load_task_specs(tasks: Sequence[str], key: str = "tasks") -> tuple[list[Any], Any]:
    """The harness specs for ``tasks`` (names stay names, files become config dicts) and a
    ``TaskManager`` that knows them; unknown names are refused with close matches.

    Args:
        tasks: harness task names and/or task YAML paths.
        key: the config key they come from, for the messages (``tasks``, ``eval_tasks``).
    """
    from lm_eval.tasks import TaskManager

    from tunekit.config.errors import close_matches

    specs: list[Any] = []
    names = []
    for i, spec in enumerate(tasks):
        if _is_path(str(spec)):
            specs.append(_task_file_spec(str(spec), f"`{key}[{i}]`={str(spec)!r}"))
        else:
            specs.append(str(spec))
            names.append((i, str(spec)))
    manager = TaskManager(include_defaults=bool(names))
    known = set(manager.all_tasks)
    for i, name in names:
        if name not in known:
            hits = close_matches(name, sorted(known))
            raise EvaluationError(
                f"`{key}[{i}]`={name!r}: not a task of lm-evaluation-harness"
                f"{' (did you mean: ' + ', '.join(hits) + '?)' if hits else ''}. Give a harness task name "
                f"(`lm-eval ls tasks` lists them) or the path of a local task YAML file. {_TASK_FILE_HINT}")
    return specs, manager


def run_tasks(lm: Any, tasks: Sequence[str], *, num_fewshot: int | None = None, limit: float | None = None,
              seed: int = 0, key: str = "tasks") -> dict[str, Any]:
    """Evaluate ``lm`` on ``tasks`` with the harness; returns its results dict (``results``,
    ``samples``, ``n-samples``, ``configs``, ``versions``...)."""
    import lm_eval

    specs, manager = load_task_specs(tasks, key)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    try:
        import datasets

        datasets.disable_progress_bars()  # the task's data are local files: no bars per split
    except ImportError:
        pass
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=specs, task_manager=manager, num_fewshot=num_fewshot, limit=limit,
            log_samples=True, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed)
    except (ConnectionError, OSError) as err:
        raise EvaluationError(
            f"`{key}`={list(tasks)}: the harness could not load a task's data ({' '.join(str(err).split())}). "
            "Harness tasks read their data set from the Hugging Face Hub, or from the local data sets cache "
            "(HF_DATASETS_CACHE) when offline: download it once on a machine with internet, or use a local "
            f"task file. {_TASK_FILE_HINT}") from err
    if out is None:  # not rank 0 of a distributed harness run
        return {}
    return out


def flat_metrics(results: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """``{"eval/<task>/<metric>": value}`` for the numeric metrics (stderr and aliases left out)."""
    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            name = key.replace(",none", "")
            if "_stderr" in name or name == "sample_len" or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            flat[f"{prefix}{task}/{name}"] = float(value)
    for key, value in results.get("perplexity", {}).items():
        if isinstance(value, (int, float)):
            flat[f"{prefix}perplexity/{key}"] = float(value)
    return flat


def results_table(results: Mapping[str, Any]) -> str:
    """A markdown table: one row per task and metric, with the stderr where the harness gives one."""
    lines = ["| task | metric | value | stderr | samples |", "|---|---|---|---|---|"]
    n_samples = results.get("n-samples", {})
    for task, metrics in results.get("results", {}).items():
        count = (n_samples.get(task) or {}).get("effective", metrics.get("sample_len", "-"))
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or name == "sample_len":
                continue
            err = metrics.get(f"{name}_stderr,{filt}")
            err_text = f"{err:.4f}" if isinstance(err, (int, float)) else "-"
            shown = name if filt in ("", "none") else f"{name} ({filt})"
            lines.append(f"| {task} | {shown} | {value:.4f} | {err_text} | {count} |")
    ppl = results.get("perplexity")
    if ppl:
        lines.append(f"| perplexity ({ppl.get('source')}) | perplexity | {ppl['perplexity']:.4f} | - | "
                     f"{ppl['documents']} ({ppl['tokens']} tokens) |")
        lines.append(f"| perplexity ({ppl.get('source')}) | loss | {ppl['loss']:.4f} | - | {ppl['documents']} |")
    return "\n".join(lines) + "\n"


def _jsonable(o: Any) -> Any:
    """numpy scalars as numbers, sets as lists, anything else (functions in task configs) as text."""
    if hasattr(o, "item") and callable(o.item):
        try:
            return o.item()
        except (TypeError, ValueError):
            pass
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _free(path: Path) -> Path:
    """``path``, or ``name_2.ext``, ``name_3.ext``... when it exists (nothing saved is overwritten)."""
    n = 2
    out = path
    while out.exists():
        out = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return out


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_results(results: Mapping[str, Any], out_dir: str | Path, *, info: Mapping[str, Any]) -> Path:
    """Write ``results.json``, ``results.md`` and ``samples/<task>.jsonl`` into ``out_dir``.

    Args:
        results: the harness's results dict (or ``{}``) plus an optional ``perplexity`` entry.
        out_dir: the directory (created); files already there are kept (new names instead).
        info: what was evaluated (weights, adapter, settings), stored under ``"evaluated"``.

    Returns:
        The path of ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"evaluated": dict(info), "results": results.get("results", {}),
              "n-samples": results.get("n-samples", {}), "versions": results.get("versions", {}),
              "n-shot": results.get("n-shot", {}), "perplexity": results.get("perplexity"),
              "configs": results.get("configs", {})}
    json_path, n = out / "results.json", 2
    while json_path.exists() or json_path.with_suffix(".md").exists():  # results_N.json and .md go together
        json_path, n = out / f"results_{n}.json", n + 1
    _atomic(json_path, json.dumps(record, indent=2, default=_jsonable) + "\n")
    _atomic(json_path.with_suffix(".md"), results_table(results))
    for task, samples in (results.get("samples") or {}).items():
        lines = [json.dumps({k: s.get(k) for k in ("doc_id", "target", "arguments", "resps", "filtered_resps")}
                            | {k: v for k, v in s.items() if isinstance(v, (int, float)) and k != "doc_id"},
                            default=_jsonable) for s in samples]
        (out / "samples").mkdir(exist_ok=True)
        _atomic(_free(out / "samples" / f"{task}.jsonl"), "\n".join(lines) + "\n")
    return json_path
