"""recipes.generate through its real entrypoint: base model, output dirs, base + adapter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAST = ["epochs=1", "max_steps_per_epoch=4", "batch_size=4", "metric_logger.also_stdout=false",
        "optimizer.lr=3e-3", "examples.show=0", "examples.score=0"]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _to_flat_layout(epoch: Path, flat: Path) -> None:
    """A copy of a current-layout epoch dir in the older flat layout (everything side by side)."""
    shutil.copytree(epoch, flat)
    for sub in ("model", "state"):
        for f in (flat / sub).iterdir():
            f.rename(flat / f.name)
        (flat / sub).rmdir()
    (flat / "checkpoint.json").unlink()


def _text(proc: subprocess.CompletedProcess, prompt: str) -> str:
    out = proc.stdout.strip()
    assert out.startswith(prompt), out
    return out[len(prompt):]


def test_generate_defaults_to_the_bundled_base_model(tmp_path):
    proc = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g'}", "max_new_tokens=16")
    assert _text(proc, "Tell me a short story about a llama.").strip()
    assert "tokens/s" in proc.stderr and "tiny_llama2/hf" in proc.stderr


def test_generate_from_outputs_and_base_plus_adapter(tmp_path):
    lora, meta = tmp_path / "lora", tmp_path / "meta"
    _run("recipes.lora_finetune", f"hydra.run.dir={lora}", *FAST)
    _run("recipes.full_finetune", f"hydra.run.dir={meta}", *FAST, "checkpointer=meta")
    prompt = "Name a color."
    common = ["template=alpaca", f"prompt={prompt}", "temperature=0", "max_new_tokens=12"]

    merged = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g1'}", f"checkpoint={lora}", *common)
    assert "tokens/s" in merged.stderr and str(lora / "epoch_0") in merged.stderr
    adapter = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g2'}", f"adapter={lora / 'epoch_0'}", *common)
    peft_only = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g3'}",
                     f"adapter={lora / 'epoch_0' / 'adapter'}", *common)
    # Greedy: merged weights, base + tunekit adapter and base + PEFT adapter say the same thing.
    assert _text(merged, prompt) == _text(adapter, prompt) == _text(peft_only, prompt)
    assert "reached max_new_tokens=12" in merged.stderr or "stopped at </s> (EOS, id 2)" in merged.stderr

    # The older flat checkpoint layout (weights, adapter_0.pt, recipe_state.pt side by side) reads the same.
    assert str(lora / "epoch_0" / "model") in merged.stderr
    flat = tmp_path / "flat"
    _to_flat_layout(lora / "epoch_0", flat / "epoch_0")
    old_merged = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g5'}", f"checkpoint={flat}", *common)
    old_adapter = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g6'}", f"adapter={flat / 'epoch_0'}",
                       *common)
    assert _text(old_merged, prompt) == _text(old_adapter, prompt) == _text(merged, prompt)
    assert str(flat / "epoch_0") in old_merged.stderr

    meta_out = _run("recipes.generate", f"hydra.run.dir={tmp_path / 'g4'}", f"checkpoint={meta / 'epoch_0'}",
                    "checkpointer=meta", "chat=true", "system_prompt=Be brief.", "prompt=Hi", "max_new_tokens=8")
    assert "tokens/s" in meta_out.stderr and str(meta / "epoch_0") in meta_out.stderr


def test_generate_with_compile_runs_and_prints_tokens_per_second(tmp_path):
    # Greedy, 24-token default prompt + 40 new tokens: the shapes of test_compiled_generation.py
    # (which checks compiled == eager token for token); inductor's on-disk cache serves them.
    proc = _run("recipes.generate", f"hydra.run.dir={tmp_path}", "compile=true", "temperature=0",
                "max_new_tokens=40")
    assert _text(proc, "Tell me a short story about a llama.").strip()
    assert "tokens/s" in proc.stderr and "decode step compiled (default)" in proc.stderr
