"""lora_finetune and full_finetune through their real entrypoints (subprocesses, tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _recipe_helpers import FAST, result, run_recipe, step_losses, val_losses

from tests.checkpointing._ckpt_helpers import meta_split_dim, split_meta

ASSETS = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2"


def _first_batch_loss_with_transformers(batch_size: int, max_seq_len: int) -> float:
    """The first step's loss computed independently: HF's Llama on the recipe's first batch.

    A fresh LoRA adapter is a no-op (B = 0), so LoRA and full fine-tuning both start from the
    base model's loss on the first batch the seeded sampler picks.
    """
    transformers = pytest.importorskip("transformers")
    from tunekit.data import InstructDataset, padded_collate
    from tunekit.tokenizers import SentencePieceTokenizer
    from tunekit.training import StatefulSampler

    tok = SentencePieceTokenizer(ASSETS / "hf" / "tokenizer.model")
    data = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "data" / "sort_letters.json"
    ds = InstructDataset(tok, str(data), template="llama2_chat", max_seq_len=max_seq_len, split="train")  # the default
    order = StatefulSampler(len(ds), shuffle=True, seed=0, rank=0, world_size=1).epoch_indices()
    batch = padded_collate([ds[i] for i in order[:batch_size]], pad_id=tok.pad_id)
    model = transformers.LlamaForCausalLM.from_pretrained(str(ASSETS / "hf"), dtype=torch.float32)
    with torch.no_grad():
        logits = model(batch["tokens"]).logits.float()
    labels = batch["labels"]
    total = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                              ignore_index=-100, reduction="sum")
    return (total / (labels != -100).sum()).item()


def test_lora_first_step_loss_matches_transformers_and_loss_falls(tmp_path):
    run = tmp_path / "lora"
    run_recipe("lora_finetune", run, *FAST, "max_steps_per_epoch=12", "optimizer.lr=3e-3",
               "lr_scheduler.num_warmup_steps=2", "eval_every_n_steps=1", "max_eval_batches=12")
    losses = step_losses(run)
    assert sorted(losses) == list(range(1, 13))
    expected = _first_batch_loss_with_transformers(batch_size=4, max_seq_len=256)
    assert losses[1] == pytest.approx(expected, rel=1e-4)
    val = val_losses(run)  # per-batch losses are noisy; the held-out loss is not
    assert sorted(val) == list(range(1, 13))
    assert val[12] < val[1] - 0.5 and val[12] < val[6] < val[1], val
    res = result(run)
    assert res["global_step"] == 12 and res["final_val_loss"] is not None and not res["interrupted"]


def test_lora_run_writes_hf_checkpoint_peft_adapter_and_run_records(lora_run):
    ckpt = lora_run / "epoch_0"
    for name in ("COMPLETE", "checkpoint.json", "model/config.json", "model/model.safetensors.index.json",
                 "model/tokenizer.model", "state/adapter_0.pt", "state/recipe_state.pt",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (ckpt / name).is_file(), name
    assert list((ckpt / "model").glob("model-*.safetensors"))
    info = json.loads((lora_run / "run_info.json").read_text())
    assert info["recipe"] == "lora_finetune" and "max_steps_per_epoch=5" in info["overrides"]
    assert info["versions"]["torch"] and info["versions"]["hydra-core"]
    resolved = (lora_run / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "max_steps_per_epoch: 5" in resolved
    assert (lora_run / "logs" / "metrics.jsonl").is_file()


def test_full_finetune_meta_in_meta_out_equals_hf(tmp_path):
    """The same weights in Meta and HF format give the same losses; Meta input -> Meta output."""
    hf, meta = tmp_path / "hf", tmp_path / "meta"
    run_recipe("full_finetune", hf, *FAST)
    run_recipe("full_finetune", meta, *FAST, "checkpointer=meta")
    a, b = step_losses(hf), step_losses(meta)
    assert sorted(a) == [1, 2, 3]
    for s in a:
        assert a[s] == pytest.approx(b[s], abs=1e-5)
    out = meta / "epoch_0" / "model"
    assert (out / "consolidated.00.pth").is_file() and (out / "params.json").is_file()
    assert not list(out.glob("*.safetensors")) and not (meta / "epoch_0" / "state" / "adapter_0.pt").exists()
    assert list((hf / "epoch_0" / "model").glob("model-*.safetensors"))

    # The same weights as Meta ships 13B: two model-parallel files in, two out, same training.
    mp_in, mp = tmp_path / "meta_mp_in", tmp_path / "meta_mp"
    mp_in.mkdir()
    for name in ("params.json", "tokenizer.model"):
        (mp_in / name).write_bytes((ASSETS / "meta" / name).read_bytes())
    full = torch.load(ASSETS / "meta" / "consolidated.00.pth", weights_only=True)
    for i, part in enumerate(split_meta(full, 2)):
        torch.save(part, mp_in / f"consolidated.{i:02d}.pth")
    run_recipe("full_finetune", mp, *FAST, "checkpointer=meta", f"checkpointer.checkpoint_dir={mp_in}")
    c = step_losses(mp)
    assert sorted(c) == [1, 2, 3] and all(c[s] == pytest.approx(b[s], abs=1e-6) for s in b)
    files = sorted((mp / "epoch_0" / "model").glob("consolidated.*.pth"))
    assert [f.name for f in files] == ["consolidated.00.pth", "consolidated.01.pth"]
    one = torch.load(out / "consolidated.00.pth", weights_only=True)
    parts = [torch.load(f, weights_only=True) for f in files]
    for k, w in one.items():
        dim = meta_split_dim(k)
        got = parts[0][k] if dim is None else torch.cat([p[k] for p in parts], dim=dim)
        torch.testing.assert_close(got, w, rtol=0, atol=1e-6)


def test_meta_model_parallel_size_that_splits_heads_is_refused(tmp_path):
    proc = run_recipe("full_finetune", tmp_path / "run", *FAST, "checkpointer=meta",
                      "checkpointer.model_parallel_size=3", check=False)
    assert proc.returncode == 1
    assert "model_parallel_size (3) must divide n_heads=4, n_kv_heads=2, dim=128" in proc.stderr
    assert "Set checkpointer.model_parallel_size to a divisor" in proc.stderr


def test_gradient_accumulation_equivalence(tmp_path):
    """batch 4 x accumulation 2 gives the same per-step losses as batch 8 x 1."""
    a, b = tmp_path / "4x2", tmp_path / "8x1"
    common = [*FAST, "optimizer.lr=1e-3"]
    run_recipe("full_finetune", a, *common, "batch_size=4", "gradient_accumulation_steps=2")
    run_recipe("full_finetune", b, *common, "batch_size=8", "gradient_accumulation_steps=1")
    la, lb = step_losses(a), step_losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3]
    for s in la:
        assert abs(la[s] - lb[s]) < 1e-5, (s, la[s], lb[s])


def test_packed_lora_runs_and_learns(tmp_path):
    run = tmp_path / "packed"
    run_recipe("lora_finetune", run, *FAST, "packed=true", "batch_size=2", "max_steps_per_epoch=6",
               "optimizer.lr=3e-3", "lr_scheduler.num_warmup_steps=2", "eval_every_n_steps=3")
    losses = step_losses(run)
    assert sorted(losses) == list(range(1, 7))
    assert all(v == v for v in losses.values())  # finite
    val = val_losses(run)
    assert val[6] < val[3]
    assert result(run)["final_val_loss"] == val[6]
