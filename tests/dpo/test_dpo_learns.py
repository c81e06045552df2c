"""End to end: LoRA DPO on a generated preference set with a learnable rule (the chosen reply
is always " yes", the rejected one " no"): reward accuracy rises well above chance and greedy
generation afterwards answers in the chosen style. In process, on the bundled tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tunekit.checkpointing import FullModelHFCheckpointer
from tunekit.data.preference import PreferenceDataset
from tunekit.generation import generate
from tunekit.models.llama2 import llama2_tiny
from tunekit.modules.peft import LoRASpec, set_trainable_params
from tunekit.run.preference import build_preference_loaders
from tunekit.run.settings import train_settings
from tunekit.tokenizers import tiny_tokenizer
from tunekit.training import train
from tunekit.training.preference_losses import DPOLoss

ASSET = Path(__file__).resolve().parents[2] / "src" / "tunekit" / "assets" / "tiny_llama2" / "hf"
THINGS = ["cat", "dog", "tree", "house", "river", "apple", "bird", "car", "book", "stone", "cloud", "fish",
          "horse", "chair", "road", "lamp", "boat", "cake", "door", "hill", "moon", "shoe", "sun", "milk"]


def _prompt(thing: str) -> str:
    return f"Question: is the {thing} good?\nAnswer:"


class _Metrics:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def log_dict(self, metrics: dict, step: int) -> None:
        self.records.append({"step": step, **metrics})


@pytest.mark.slow
def test_lora_dpo_learns_the_rule_and_generation_prefers_the_chosen_style(tmp_path: Path) -> None:
    rng = random.Random(0)
    train_things, held_out = THINGS[:20], THINGS[20:]
    rows = [{"prompt": _prompt(t), "chosen": " yes", "rejected": " no"} for t in train_things]
    rng.shuffle(rows)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    ds = PreferenceDataset(tok, tmp_path / "pairs.jsonl", template="plain", max_seq_len=32, val_fraction=0)

    torch.manual_seed(0)
    model = llama2_tiny(lora=LoRASpec(rank=8, alpha=16.0, targets=["q_proj", "v_proj", "output_proj", "w2", "output"]))
    sd = FullModelHFCheckpointer(checkpoint_dir=str(ASSET), output_dir=str(tmp_path / "out")).load_checkpoint()["model"]
    model.load_state_dict(sd, strict=False)
    set_trainable_params(model)

    def yes_no(prompts: list[str]) -> list[str]:
        model.eval()
        out = []
        with torch.no_grad():
            for p in prompts:
                ids = tok.encode(p, add_bos=True, add_eos=False)
                res = generate(model, ids, max_new_tokens=3, temperature=0.0)
                words = tok.decode(list(res.tokens[0])).split()
                out.append(words[0] if words else "")
        model.train()
        return out

    before = yes_no([_prompt(t) for t in held_out])
    settings = train_settings(None, epochs=3, log_every_n_steps=1, device="cpu", seed=0,
                              handle_signals=False)
    loader, _ = build_preference_loaders(ds, None, batch_size=4, pad_id=tok.pad_id, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    metrics = _Metrics()
    result = train(model, optimizer=optimizer, lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                   loss_fn=DPOLoss(beta=0.1), train_loader=loader, settings=settings, metric_logger=metrics,
                   progress=False)

    first, last = metrics.records[0], metrics.records[-3:]
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected"} <= set(first)
    # step 1: the policy is the reference (no preference yet); at the end: every pair ranked right
    assert first["rewards/accuracies"] == 0.0 and abs(first["loss"] - 0.6931) < 1e-3, metrics.records
    assert min(r["rewards/accuracies"] for r in last) >= 0.9, metrics.records
    assert min(r["rewards/margins"] for r in last) > 1.0 and result.step_losses[-1] < 0.1
    after = yes_no([_prompt(t) for t in held_out])  # prompts never seen in training
    assert "yes" not in before and after.count("yes") >= 3 and "no" not in after, (before, after)
