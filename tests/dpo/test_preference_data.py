"""Preference data: the loss mask covers the final reply only, in every layout; truncation and
dropping; the collated [chosen; rejected] layout; and the loop's objective metrics with exact
gradient accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunekit.data import DataFormatError
from tunekit.data.preference import PreferenceDataset, preference_collate
from tunekit.models.llama2 import llama2
from tunekit.run.settings import train_settings
from tunekit.tokenizers import tiny_hf_tokenizer, tiny_tokenizer
from tunekit.training import build_dataloader, train
from tunekit.training.preference_losses import DPOLoss

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3 plus 3?"}]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _target_text(tok, tokens: list[int], labels: list[int], special: bool = False) -> str:
    return tok.decode([t for t in labels if t != -100], skip_special=not special)


@pytest.mark.parametrize("template", ["plain", "alpaca"])
def test_string_prompt_targets_are_the_reply_and_eos(tmp_path, template):
    tok = tiny_tokenizer()
    src = _write(tmp_path / "p.jsonl", [{"prompt": "Name a colour.", "chosen": " Blue sky", "rejected": " A dog"}])
    s = PreferenceDataset(tok, src, template=template, val_fraction=0)[0]
    for side, text in (("chosen", "Blue sky"), ("rejected", "A dog")):
        tokens, labels = s[f"{side}_tokens"], s[f"{side}_labels"]
        assert len(tokens) == len(labels) and labels[-1] == -100
        assert labels[-2] == tok.eos_id and _target_text(tok, tokens, labels).strip() == text
        first = next(i for i, t in enumerate(labels) if t != -100)
        assert labels[first:] == tokens[first + 1:] + [-100]  # shifted: position i predicts i + 1


def test_chat_template_masks_only_the_final_reply(tmp_path):
    tok = tiny_hf_tokenizer()  # ChatML template
    src = _write(tmp_path / "p.jsonl", [{"messages": CONV, "chosen": "6.", "rejected": [{"role": "assistant", "content": "7."}]}])
    s = PreferenceDataset(tok, src, template="model", val_fraction=0)[0]
    assert _target_text(tok, s["chosen_tokens"], s["chosen_labels"], True) == "6.<|im_end|>\n"
    assert _target_text(tok, s["rejected_tokens"], s["rejected_labels"], True) == "7.<|im_end|>\n"  # not "4." too
    n = next(i for i, t in enumerate(s["chosen_labels"]) if t != -100)
    assert s["chosen_tokens"][:n + 1] == s["rejected_tokens"][:n + 1]  # the shared prompt


def test_whole_conversations_share_their_turns_as_the_prompt(tmp_path):
    # torchtune's preference_dataset / TRL's implicit prompt, and UltraFeedback (a string prompt beside)
    # give the same pair as the explicit form
    tok = tiny_hf_tokenizer()
    chosen, rejected = CONV + [{"role": "assistant", "content": "6."}], CONV + [{"role": "assistant", "content": "7."}]
    rows = [{"messages": CONV, "chosen": "6.", "rejected": "7."}, {"chosen": chosen, "rejected": rejected},
            {"prompt": "And 3 plus 3?", "chosen": chosen, "rejected": rejected},
            {"prompt": CONV, "chosen": chosen, "rejected": rejected}]
    ds = PreferenceDataset(tok, _write(tmp_path / "p.jsonl", rows), template="model", val_fraction=0)
    assert len(ds) == 4 and all(ds[i] == ds[0] for i in range(1, 4))
    assert _target_text(tok, ds[1]["rejected_tokens"], ds[1]["rejected_labels"], True) == "7.<|im_end|>\n"


@pytest.mark.parametrize("row, words", [
    ({"chosen": CONV + [{"role": "assistant", "content": "6."}],
      "rejected": CONV[:2] + [{"role": "assistant", "content": "7."}]}, "differ at message 2"),
    ({"chosen": CONV + [{"role": "assistant", "content": "6."}], "rejected": "7."}, "'rejected' is the string"),
    ({"prompt": "What is 5?", "chosen": CONV + [{"role": "assistant", "content": "6."}],
      "rejected": CONV + [{"role": "assistant", "content": "7."}]}, "remove 'prompt'"),
    ({"chosen": CONV + [{"role": "assistant", "content": "6."}],
      "rejected": CONV + [{"role": "assistant", "content": "6."}]}, "same reply"),
], ids=["differ-before-reply", "one-side-whole", "prompt-not-shared", "same-reply"])
def test_whole_conversations_that_do_not_pair_are_named(tmp_path, row, words):
    with pytest.raises(DataFormatError, match="line 1") as err:
        PreferenceDataset(tiny_hf_tokenizer(), _write(tmp_path / "p.jsonl", [row]), template="model", val_fraction=0)
    assert words in str(err.value)


def test_llama2_chat_masks_only_the_final_reply(tmp_path):
    tok = tiny_tokenizer()
    src = _write(tmp_path / "p.jsonl", [{"prompt": CONV, "chosen": "six", "rejected": "seven"}])
    s = PreferenceDataset(tok, src, template="llama2_chat", val_fraction=0)[0]
    assert _target_text(tok, s["chosen_tokens"], s["chosen_labels"]).strip() == "six"
    assert _target_text(tok, s["rejected_tokens"], s["rejected_labels"]).strip() == "seven"


def test_truncation_cuts_each_side_and_drops_pairs_left_without_a_reply(tmp_path):
    tok = tiny_tokenizer()
    long_reply = " ".join(["word"] * 40)
    rows = [{"prompt": "Hi.", "chosen": long_reply, "rejected": "no"},
            {"prompt": "Say a lot about the long road. " * 6, "chosen": "yes", "rejected": "no"}]
    ds = PreferenceDataset(tok, _write(tmp_path / "p.jsonl", rows), template="plain", max_seq_len=24, val_fraction=0)
    assert len(ds) == 1 and ds.rows == [1] and ds.dropped_rows == [2] and ds.truncated == 1
    s = ds[0]
    assert len(s["chosen_tokens"]) == 24 and s["chosen_labels"][-1] != -100  # the cut keeps the true next token
    with pytest.raises(DataFormatError, match=r"max_seq_len=4 cuts away every reply of 1 pair.*Set max_seq_len="):
        PreferenceDataset(tok, _write(tmp_path / "q.jsonl", rows[1:]), template="plain", max_seq_len=4, val_fraction=0)


def test_collate_stacks_chosen_then_rejected_with_reference_logps(tmp_path):
    tok = tiny_tokenizer()
    rows = [{"prompt": f"Q{i}.", "chosen": f"good {i}", "rejected": "bad " * (i + 1)} for i in range(3)]
    ds = PreferenceDataset(tok, _write(tmp_path / "p.jsonl", rows), template="plain", val_fraction=0)
    ds.set_reference_logps(torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]]))
    b = preference_collate([ds[0], ds[1], ds[2]], pad_id=tok.pad_id)
    assert b["tokens"].shape[0] == 6 and b["tokens"].shape == b["labels"].shape
    assert b["tokens"][0, : len(ds[0]["chosen_tokens"])].tolist() == ds[0]["chosen_tokens"]
    assert b["tokens"][3, : len(ds[0]["rejected_tokens"])].tolist() == ds[0]["rejected_tokens"]
    assert b["reference_logps"].tolist() == [-1.0, -3.0, -5.0, -2.0, -4.0, -6.0]
    seqs = ds.as_sequences()
    assert seqs[1]["tokens"] == ds[1]["chosen_tokens"] + ds[1]["rejected_tokens"]


def test_loop_logs_objective_metrics_and_accumulation_is_exact(tmp_path):
    tok = tiny_tokenizer()
    rows = [{"prompt": f"Question {i}:", "chosen": f" yes {i}", "rejected": " no" * (1 + i % 3)} for i in range(8)]
    ds = PreferenceDataset(tok, _write(tmp_path / "p.jsonl", rows), template="plain", val_fraction=0)

    def run(batch_size: int, accumulate: int) -> tuple[list[float], list[dict], torch.Tensor]:
        torch.manual_seed(0)
        model = llama2(vocab_size=512, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                       intermediate_dim=64, max_seq_len=64)
        reference = llama2(vocab_size=512, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32,
                           intermediate_dim=64, max_seq_len=64).requires_grad_(False)
        loader = build_dataloader(ds, batch_size, lambda b: preference_collate(b, pad_id=tok.pad_id), seed=0)
        logged: list[dict] = []
        logger = type("L", (), {"log_dict": lambda self, m, step: logged.append(m)})()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        settings = train_settings(None, epochs=1, gradient_accumulation_steps=accumulate, log_every_n_steps=2,
                                  device="cpu", seed=0, handle_signals=False)
        result = train(model, optimizer=opt, lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                       loss_fn=DPOLoss(beta=0.5, reference=reference), train_loader=loader, settings=settings,
                       metric_logger=logger, progress=False)
        return result.step_losses, logged, model.output.weight.detach().clone()

    losses_a, logged_a, w_a = run(4, 1)
    losses_b, logged_b, w_b = run(2, 2)
    assert len(losses_a) == 2 and losses_a[0] != losses_a[1]
    torch.testing.assert_close(torch.tensor(losses_a), torch.tensor(losses_b))
    torch.testing.assert_close(w_a, w_b)
    assert len(logged_a) == 1 and logged_a[0]["rewards/accuracies"] == pytest.approx(logged_b[0]["rewards/accuracies"])
    for name in ("rewards/chosen", "rewards/margins", "logps/rejected"):
        assert logged_a[0][name] == pytest.approx(logged_b[0][name], rel=1e-5)
    assert logged_a[0]["loss"] == pytest.approx(sum(losses_a) / 2, rel=1e-6)  # mean over the interval's pairs


def test_model_template_needs_a_tokenizer_with_a_chat_template(tmp_path):
    src = _write(tmp_path / "p.jsonl", [{"prompt": "Hi.", "chosen": "Hello.", "rejected": "Go."}])
    with pytest.raises(DataFormatError, match=r"tokenizer.model.*carries none.*dataset.template=llama2_chat"):
        PreferenceDataset(tiny_tokenizer(), src, template="model", val_fraction=0)
