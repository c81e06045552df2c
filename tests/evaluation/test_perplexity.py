"""Built-in perplexity against transformers' own loss on the same tokens, and its input files."""

from __future__ import annotations

import json
import math

import pytest

from tunekit.evaluation import EvaluationError, perplexity, read_texts, text_documents

TEXT = "The quick brown fox jumps over the lazy dog. A llama is a domesticated animal from South America."


@pytest.fixture(scope="module")
def hf_model(tiny_hf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(tiny_hf_dir), dtype="float32").eval()


def _hf_nll(hf_model, ids, max_length, stride):
    """The Hugging Face "perplexity of fixed-length models" loop: summed NLL and scored tokens."""
    import torch

    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length + 1, len(ids))  # +1: inputs and the next-token targets
        trg_len = end - 1 - prev_end if begin else end - 1
        window = torch.tensor([ids[begin:end]])
        labels = window.clone()
        labels[:, : window.shape[1] - trg_len] = -100
        with torch.no_grad():
            loss = hf_model(input_ids=window, labels=labels).loss
        nll += float(loss) * trg_len
        count += trg_len
        prev_end = end - 1
        if end == len(ids):
            break
    return nll, count


def test_a_text_that_fits_the_context_matches_transformers_loss(tiny_model_and_tokenizer, hf_model):
    model, tokenizer = tiny_model_and_tokenizer
    (doc,) = text_documents(tokenizer, [TEXT])
    ids = [*doc[0], doc[1][-1]]
    assert ids[0] == tokenizer.bos_id
    result = perplexity(model, [doc])
    nll, count = _hf_nll(hf_model, ids, max_length=len(ids), stride=len(ids))
    assert result.tokens == count == len(ids) - 1
    assert result.loss == pytest.approx(nll / count, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("max_length,stride", [(16, 16), (16, 8)])
def test_long_texts_in_windows_match_the_strided_transformers_loop(tiny_model_and_tokenizer, hf_model,
                                                                    max_length, stride):
    model, tokenizer = tiny_model_and_tokenizer
    docs = text_documents(tokenizer, [TEXT * 2, "Short one."])
    result = perplexity(model, docs, max_length=max_length, stride=stride, batch_size=3)
    want_nll, want_count = 0.0, 0
    for tokens, labels in docs:
        nll, count = _hf_nll(hf_model, [*tokens, labels[-1]], max_length, stride)
        want_nll, want_count = want_nll + nll, want_count + count
    assert result.tokens == want_count == sum(len(t) for t, _ in docs)  # every token scored exactly once
    assert result.nll_sum == pytest.approx(want_nll, rel=1e-5)
    assert result.documents == 2 and result.windows > 2


def test_data_set_samples_score_only_their_labelled_positions(tiny_model_and_tokenizer):
    import torch
    import torch.nn.functional as F

    model, _ = tiny_model_and_tokenizer
    tokens = [1, 50, 60, 70, 80, 90]
    labels = [-100, -100, 70, 80, 90, 2]
    result = perplexity(model, [(tokens, labels)])
    with torch.no_grad():
        want = F.cross_entropy(model(torch.tensor([tokens]))[0], torch.tensor(labels), ignore_index=-100,
                               reduction="sum")
    assert result.tokens == 4
    assert result.nll_sum == pytest.approx(float(want), rel=1e-5)


def test_text_sources_are_read_and_bad_ones_named(tmp_path):
    (tmp_path / "a.txt").write_text("one document\n\nstill the same one\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"body": "x"}]))
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{oops\n")
    (tmp_path / "e.txt").write_text("  \n")
    (tmp_path / "f.csv").write_text("body\nsome text\n")  # read as raw text it would score its header and commas
    assert read_texts(tmp_path / "a.txt") == ["one document\n\nstill the same one\n"]
    assert read_texts(tmp_path / "b.jsonl") == ["first", "second"]
    assert read_texts(tmp_path / "c.json", text_field="body") == ["x"]
    for name, needles in [("c.json", ["record 1", "'text'", "body", "perplexity.text_field"]),
                          ("d.jsonl", ["line 2", "not valid JSON"]), ("e.txt", ["empty"]),
                          ("missing.txt", ["no such file", "dataset"]),
                          ("f.csv", ["is a CSV table", "perplexity.source=dataset dataset=text dataset.source=",
                                     "dataset.column_map={text: COLUMN}"])]:
        with pytest.raises(EvaluationError) as err:
            read_texts(tmp_path / name)
        assert all(n in str(err.value) for n in needles), str(err.value)


def test_a_stride_longer_than_the_window_is_refused(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(EvaluationError, match="perplexity.stride"):
        perplexity(model, text_documents(tokenizer, [TEXT]), max_length=8, stride=9)
