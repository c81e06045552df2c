"""Loss curves as pictures: a run's PNGs, runs overlaid, a sweep's comparison, matplotlib missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.reliability._harness import assert_unchanged, snapshot
from tunekit.cli import plot as plot_cli
from tunekit.reporting import (
    COMPARISON_FILE,
    PlotError,
    SweepPlots,
    plot_run,
    plots_after_run,
    read_metrics,
    require_matplotlib,
)

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _run(root: Path, name: str, *, steps: int = 6, lr: float = 3e-4, resumed: bool = False) -> Path:
    """A run directory with the records the metric logger writes (a resumed run repeats steps)."""
    run = root / name
    (run / "logs").mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        lines.append({"step": s, "loss": 5.0 - 0.3 * s, "lr": lr * s / steps, "grad_norm": 1.0 + s,
                      "tokens_per_second": 900.0 + s, "epoch": 0})
        if s % 3 == 0:
            lines.append({"step": s, "val_loss": 5.2 - 0.2 * s})
    if resumed:  # resumed from step 3: steps 4.. logged again, the later values win
        lines += [{"step": 4, "loss": 1.0, "lr": lr, "grad_norm": 2.0, "tokens_per_second": 1.0, "epoch": 0}]
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


def test_a_run_gets_one_png_per_metric_from_its_metrics_file(tmp_path):
    run = _run(tmp_path, "run", resumed=True)
    series = read_metrics(run)
    assert [s for s, _ in series["loss"]] == [1, 2, 3, 4, 5, 6]
    assert dict(series["loss"])[4] == 1.0  # the resumed run's record of step 4 wins
    assert series["val_loss"] == [(3, pytest.approx(4.6)), (6, pytest.approx(4.0))]
    assert "epoch" in series and "step" not in series
    written = plot_run(run)
    assert sorted(p.name for p in written) == ["grad_norm.png", "loss.png", "lr.png", "tokens_per_second.png"]
    assert all(_is_png(p) and p.parent == run / "plots" for p in written)
    assert not list((run / "plots").glob("*.tmp"))
    assert "plots of loss" in plots_after_run(run)


def test_a_run_killed_mid_line_plots_what_it_logged_and_a_bad_line_is_named(tmp_path):
    run = _run(tmp_path, "run")
    with open(run / "logs" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    assert read_metrics(run)["loss"][-1][0] == 6
    bad = _run(tmp_path, "bad")
    text = (bad / "logs" / "metrics.jsonl").read_text().splitlines()
    (bad / "logs" / "metrics.jsonl").write_text("\n".join([text[0], "not json", *text[1:]]) + "\n")
    with pytest.raises(PlotError, match="line 2 is not JSON"):
        read_metrics(bad)
    with pytest.raises(PlotError, match="no logs/metrics.jsonl"):
        read_metrics(tmp_path)
    assert plots_after_run(tmp_path).startswith("no plots:")  # a recipe is never failed by its plots


def test_tunekit_plot_overlays_runs_and_keeps_an_existing_file(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", steps=4, lr=1e-4)
    out = tmp_path / "cmp.png"
    assert plot_cli.main([str(a), str(b), "-o", str(out), "--labels", "lr 3e-4", "lr 1e-4"]) == 0
    assert _is_png(out)
    before = snapshot(tmp_path)
    assert plot_cli.main([str(a), str(b), "-o", str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert_unchanged(before, tmp_path)
    assert plot_cli.main([str(a), str(b), "-o", str(out), "--force", "--labels", "only one"]) == 1
    assert "one label per run" in capsys.readouterr().err
    assert plot_cli.main([str(a), str(tmp_path / "nope")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_a_sweep_writes_its_comparison_next_to_summary_md(tmp_path, capsys):
    from omegaconf import OmegaConf

    from tunekit.config.callbacks import summarize_sweep

    sweep = tmp_path / "sweep"
    for job, lr in (("0", 1e-4), ("1", 3e-4)):
        d = _run(sweep, job, lr=lr)
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that failed before training: left out
    summarize_sweep(sweep)
    SweepPlots().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "summary.md").is_file() and _is_png(sweep / COMPARISON_FILE)
    assert f"sweep comparison plot in {sweep / COMPARISON_FILE}" in capsys.readouterr().out
    (sweep / COMPARISON_FILE).unlink()
    SweepPlots().on_multirun_end(OmegaConf.create({"plots": False, "hydra": {"sweep": {"dir": str(sweep)}}}))
    assert not (sweep / COMPARISON_FILE).exists()  # plots=false for the sweep: no picture
    assert plot_cli.main([str(sweep), "-o", str(tmp_path / "again.png")]) == 0  # a sweep dir: its jobs
    assert _is_png(tmp_path / "again.png")


def test_without_matplotlib_the_message_names_the_extra_and_nothing_fails(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    run = _run(tmp_path, "run")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` raises ImportError
    with pytest.raises(PlotError, match=r'pip install "tunekit\[plot\]"'):
        require_matplotlib()
    note = plots_after_run(run)
    assert note.startswith("no plots:") and "tunekit[plot]" in note and "training never needs it" in note
    assert plot_cli.main([str(run)]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "tunekit[plot]" in err and "Traceback" not in err
    SweepPlots().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert "no sweep comparison plot" in capsys.readouterr().out
    assert not (run / "plots").exists()


def test_runs_of_the_same_name_get_distinct_labels_and_steps_are_whole_numbers(tmp_path):
    runs = [str(_run(tmp_path / "a", "run", steps=3)), str(_run(tmp_path / "b", "run", steps=3))]
    expanded, labels = plot_cli._expand(runs)
    assert expanded == runs and labels == ["a/run", "b/run"]  # not "run" twice in the legend
    from matplotlib.figure import Figure

    from tunekit.reporting.plots import _finish

    ax = Figure().add_subplot(1, 1, 1)
    ax.plot([1, 2, 3], [3.0, 2.0, 1.0], label="loss")
    _finish(ax, "loss", False, [3.0, 2.0, 1.0])
    assert all(float(t).is_integer() for t in ax.get_xticks())  # no "1.5" step ticks
