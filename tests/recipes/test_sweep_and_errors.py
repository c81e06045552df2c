"""The README's default command, a -m sweep with its summary, and bad-input errors."""

from __future__ import annotations

import json

from _recipe_helpers import FAST, result, run_recipe, step_losses


def test_readme_default_command(tmp_path):
    """`python -m recipes.lora_finetune` exactly as the README says (only the run dir moved)."""
    run = tmp_path / "default"
    proc = run_recipe("lora_finetune", run)
    losses = step_losses(run)
    steps = sorted(losses)
    assert len(steps) >= 8
    head = sum(losses[s] for s in steps[:3]) / 3
    tail = sum(losses[s] for s in steps[-3:]) / 3
    assert tail < head - 1.0, losses
    res = result(run)
    assert res["final_val_loss"] < 3.5 and not res["interrupted"]
    last = run / f"epoch_{res['checkpoints'][-1][0]}"
    for name in ("COMPLETE", "checkpoint.json", "model/config.json", "state/adapter_0.pt",
                 "adapter/adapter_config.json"):
        assert (last / name).is_file(), name
    assert "done in" in proc.stdout and "loss" in proc.stderr  # summary line + tqdm bar


def test_sweep_runs_four_jobs_and_writes_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_recipe("lora_finetune", None, "-m", "optimizer.lr=1e-4,3e-4", "lora.rank=4,8",
                      *FAST, "max_steps_per_epoch=2", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        assert (job / "epoch_0" / "COMPLETE").is_file() and (job / "logs" / "metrics.jsonl").is_file()
        assert result(job)["global_step"] == 2
    summary = json.loads((sweep / "summary.json").read_text())
    assert len(summary) == 4 and all(r["status"] == "ok" for r in summary)
    combos = {(next(o for o in r["overrides"] if o.startswith("optimizer.lr=")),
               next(o for o in r["overrides"] if o.startswith("lora.rank="))) for r in summary}
    assert combos == {(f"optimizer.lr={lr}", f"lora.rank={r}") for lr in ("0.0001", "0.0003") for r in (4, 8)}
    for r in summary:
        assert r["final_val_loss"] == result(sweep / r["job"])["final_val_loss"] is not None
        assert r["final_train_loss"] is not None
    assert "(best)" in (sweep / "summary.md").read_text()
    assert "sweep summary of 4 job(s)" in proc.stdout


def _assert_one_paragraph(proc, *needles):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr[-2000:]


def test_bad_inputs_give_one_paragraph_errors(tmp_path):
    missing = tmp_path / "nope.json"
    _assert_one_paragraph(
        run_recipe("lora_finetune", tmp_path / "a", *FAST, "dataset=alpaca", f"dataset.source={missing}",
                   check=False),
        str(missing), "does not exist")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}] * 10))
    _assert_one_paragraph(
        run_recipe("full_finetune", tmp_path / "b", *FAST, "dataset=alpaca", f"dataset.source={bad}",
                   check=False),
        str(bad), "record 2", "output")

    _assert_one_paragraph(
        run_recipe("lora_finetune", tmp_path / "c", *FAST, f"checkpointer.checkpoint_dir={tmp_path / 'w'}",
                   check=False),
        str(tmp_path / "w"), "does not exist")

    empty = tmp_path / "empty_run"
    empty.mkdir()
    _assert_one_paragraph(
        run_recipe("lora_finetune", tmp_path / "d", *FAST, f"resume={empty}", check=False),
        str(empty), "no complete")


def test_checkpoint_rope_theta_must_match_the_model(tmp_path):
    """A checkpoint whose config.json declares another RoPE base is refused (before training)
    by lora_finetune and generate; the component builder with that base then trains on it."""
    import shutil
    from pathlib import Path

    ckpt = tmp_path / "rope1e6"
    shutil.copytree(Path(__file__).resolve().parents[2] / "src/tunekit/assets/tiny_llama2/hf", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["rope_theta"] = 1000000.0
    (ckpt / "config.json").write_text(json.dumps(config))
    fix = "model.rope_base=1000000.0"
    _assert_one_paragraph(
        run_recipe("lora_finetune", tmp_path / "a", *FAST, f"checkpointer.checkpoint_dir={ckpt}", check=False),
        str(ckpt), "declares rope_theta=1000000.0 where the chosen model builds RoPE base=10000.0", fix)
    _assert_one_paragraph(
        run_recipe("generate", None, f"checkpoint={ckpt}", "max_new_tokens=2", check=False),
        str(ckpt), "declares rope_theta=1000000.0", fix)

    run = tmp_path / "b"
    run_recipe("lora_finetune", run, *FAST, "max_steps_per_epoch=1", f"checkpointer.checkpoint_dir={ckpt}",
               "model._component_=tunekit.models.llama2.llama2", "+model.vocab_size=512", "+model.num_layers=4",
               "+model.num_heads=4", "+model.num_kv_heads=2", "+model.embed_dim=128",
               "+model.intermediate_dim=352", "+model.max_seq_len=512", "+model.rope_base=1000000.0")
    assert sorted(step_losses(run)) == [1]
