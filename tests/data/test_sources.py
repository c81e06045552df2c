"""Bring your own data: every loader and format on small files the tests write (in process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tunekit.data import (
    ChatDataset,
    DataFormatError,
    DataSettingError,
    InstructDataset,
    PackedDataset,
    StreamingDataset,
    TextDataset,
    check_preference_record,
    data_report,
    load_rows,
    mixed_dataset,
)
from tunekit.run.data import build_loaders
from tunekit.run.resume import data_digest
from tunekit.tokenizers import TINY_HF_TOKENIZER_DIR, HFTokenizer, tiny_hf_tokenizer, tiny_tokenizer

RECS = [{"instruction": f"Say the number {i}.", "input": "" if i % 3 else f"ctx {i}", "output": f"It is {i}."}
        for i in range(12)]
CMAP = {"instruction": "question", "input": "context", "output": "answer"}
MSGS = [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"Hello {i}."}]}
        for i in range(6)]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The same Alpaca rows as JSON and, with other column names, as CSV, TSV, Parquet, Arrow."""
    out = {"json": tmp_path / "a.json"}
    out["json"].write_text(json.dumps(RECS))
    out["jsonl"] = tmp_path / "a.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in RECS))
    df = pd.DataFrame([{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in RECS])
    out["csv"], out["tsv"], out["parquet"] = tmp_path / "a.csv", tmp_path / "a.tsv", tmp_path / "a.parquet"
    df.to_csv(out["csv"], index=False)
    df.to_csv(out["tsv"], index=False, sep="\t")
    df.to_parquet(out["parquet"])
    import datasets

    out["arrow"] = tmp_path / "arrow"
    datasets.Dataset.from_pandas(df).save_to_disk(str(out["arrow"]))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(a[i] == b[i] for i in range(len(a)))


def _err(fn) -> str:
    with pytest.raises(DataFormatError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_csv_tsv_parquet_arrow_with_mapped_columns_equal_json(tok, files) -> None:
    ref = InstructDataset(tok, files["json"], split="all")
    for kind in ("csv", "tsv", "parquet", "arrow"):
        ds = InstructDataset(tok, files[kind], split="all", column_map=CMAP)
        assert _same(ds, ref), kind
    assert ds.row_word == "row" and ds.rows == list(range(1, 13))
    # the train/validation holdout is the same whatever the file type
    assert InstructDataset(tok, files["csv"], column_map=CMAP).rows == InstructDataset(tok, files["json"]).rows


def test_missing_column_names_file_columns_and_the_mapping(tok, files) -> None:
    msg = _err(lambda: InstructDataset(tok, files["csv"]))
    assert str(files["csv"]) in msg and "['question', 'context', 'answer']" in msg
    assert "dataset.column_map='{instruction: question, output: answer}'" in msg
    msg = _err(lambda: InstructDataset(tok, files["parquet"], column_map={"instruction": "questoin", "output": "answer"}))
    assert "'questoin'" in msg and "did you mean 'question'" in msg and str(files["parquet"]) in msg


def test_bad_rows_of_a_csv_are_numbered(tok, tmp_path: Path) -> None:
    p = tmp_path / "holes.csv"
    p.write_text("instruction,output\nName a colour.,Blue.\nSay hi.,\n")
    msg = _err(lambda: InstructDataset(tok, p, split="all"))
    assert str(p) in msg and "row 2: field 'output' must be a string, got null" in msg
    for name in ("empty.csv", "empty.parquet"):
        empty = tmp_path / name
        empty.write_bytes(b"")
        msg = _err(lambda p=empty: InstructDataset(tok, p, split="all"))
        assert str(empty) in msg and "is empty (0 bytes)" in msg and "Point dataset.source at the data file" in msg


def test_sharegpt_equals_messages_and_tool_turns_are_refused(tok, tmp_path: Path) -> None:
    sg = [{"conversations": [{"from": "human", "value": m["messages"][0]["content"]},
                             {"from": "gpt", "value": m["messages"][1]["content"]}]} for m in MSGS]
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, MSGS)))
    (tmp_path / "sg.jsonl").write_text("\n".join(map(json.dumps, sg)))
    a, b = ChatDataset(tok, tmp_path / "m.jsonl", split="all"), ChatDataset(tok, tmp_path / "sg.jsonl", split="all")
    assert _same(a, b) and a.template == "llama2_chat"
    sg[2]["conversations"].insert(1, {"from": "function_call", "value": "{}"})
    (tmp_path / "sg.jsonl").write_text("\n".join(map(json.dumps, sg)))
    msg = _err(lambda: ChatDataset(tok, tmp_path / "sg.jsonl", split="all"))
    assert "line 3: conversations[1].from is 'function_call'" in msg and "tool / function-call" in msg
    bad = [*MSGS[:1], {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]}]
    (tmp_path / "t.jsonl").write_text("\n".join(map(json.dumps, bad)))
    msg = _err(lambda: ChatDataset(tok, tmp_path / "t.jsonl", split="all"))  # Llama 2's layout
    assert "line 2: messages[1].role is 'tool'" in msg and "drop those turns or rows" in msg


def test_chat_defaults_to_the_models_template(tok, tmp_path: Path, capsys) -> None:
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, MSGS)))
    hf = tiny_hf_tokenizer()
    assert ChatDataset(hf, tmp_path / "m.jsonl", split="all").template == "model"  # ChatML from its config
    assert ChatDataset(tok, tmp_path / "m.jsonl", split="all").template == "llama2_chat"  # Llama 2: no template
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(Path(TINY_HF_TOKENIZER_DIR) / "tokenizer.json", bare / "tokenizer.json")
    config = json.loads((Path(TINY_HF_TOKENIZER_DIR) / "tokenizer_config.json").read_text())
    del config["chat_template"]  # a base model's tokenizer: no template, and (like this one) no BOS
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataSettingError) as e:  # neither a template nor a BOS: no layout fits
        ChatDataset(HFTokenizer(bare / "tokenizer.json"), tmp_path / "m.jsonl", split="all")
    assert "carries no chat template and has no BOS token" in str(e.value) and "chat_template.jinja" in str(e.value)


def test_text_files_are_documents_joined_with_eos_loss_on_every_token(tok, tmp_path: Path) -> None:
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("The cat sat on the mat. " * 12)
    (d / "b.txt").write_text("A dog ran far away. " * 3)
    ds = TextDataset(tok, d, split="all", max_seq_len=32)
    stream = tok.encode((d / "a.txt").read_text()) + tok.encode((d / "b.txt").read_text())
    assert ds.row_word == "document" and ds.rows[0] == 1 and ds.rows[-1] in (1, 2)
    for i in range(len(ds)):  # windows of 32 over the joined stream, labels = the next token everywhere
        s = ds[i]
        assert s["tokens"] == stream[32 * i: 32 * i + 32]
        assert s["labels"][: len(s["tokens"]) - 1] == stream[32 * i + 1: 32 * i + len(s["tokens"])]
    assert len(ds) == -(-(len(stream) - 1) // 32)
    col = tmp_path / "t.jsonl"
    col.write_text("\n".join(json.dumps({"body": (d / n).read_text()}) for n in ("a.txt", "b.txt")))
    assert _same(TextDataset(tok, col, split="all", max_seq_len=32, column_map={"text": "body"}), ds)
    with pytest.raises(DataSettingError, match="a text file is one document: split it into several .txt files"):
        TextDataset(tok, d / "a.txt", split="train", val_fraction=0.1)  # one corpus file, the default split


def test_globs_directories_and_a_cached_hub_data_set(tok, tmp_path: Path, monkeypatch) -> None:
    for i in range(2):
        (tmp_path / f"part{i}.jsonl").write_text("\n".join(json.dumps(r) for r in RECS[6 * i: 6 * i + 6]))
    ref = InstructDataset(tok, tmp_path / "part0.jsonl", split="all")
    glob = InstructDataset(tok, str(tmp_path / "part*.jsonl"), split="all")
    assert len(glob) == 12 and all(glob[i] == ref[i] for i in range(6)) and glob.row_word == "row"
    # the Hugging Face hub cache layout `tunekit download ID --repo-type dataset` leaves behind
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--acme--tiny"
    snap = repo / "snapshots" / commit
    (snap / "data").mkdir(parents=True)
    (snap / "extra").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(tmp_path / "part0.jsonl", snap / "data" / "train-00000.jsonl")
    shutil.copy(tmp_path / "part1.jsonl", snap / "data" / "test-00000.jsonl")
    shutil.copy(tmp_path / "part1.jsonl", snap / "extra" / "train.jsonl")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert _same(InstructDataset(tok, "acme/tiny", split="all", subset="data"), ref)
    assert len(InstructDataset(tok, "acme/tiny", split="all", subset="data", source_split="test")) == 6
    assert len(InstructDataset(tok, "acme/tiny", split="all", data_files=["*/train*.jsonl"])) == 12
    msg = _err(lambda: InstructDataset(tok, "acme/tiny", split="all", subset="data", source_split="validation"))
    assert "has the splits ['test', 'train']" in msg and "dataset.source_split" in msg
    msg = _err(lambda: InstructDataset(tok, "acme/absent", split="all"))
    assert "tunekit download acme/absent --repo-type dataset" in msg and str(tmp_path / "hub") in msg
    msg = _err(lambda: InstructDataset(tok, "acme/tiyn", split="all"))  # a typo of a cached id
    assert "(cached data sets with a close name: acme/tiny)" in msg
    msg = _err(lambda: InstructDataset(tok, "acme/tiny", split="all", subset="data", revision="v2"))
    assert "(acme/tiny is cached at main, 0123456789ab: set dataset.revision to one of them)" in msg
    assert "tunekit download acme/tiny --repo-type dataset --revision v2" in msg


def test_mix_takes_weighted_counts_and_reports_them(tok, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.json").write_text(json.dumps(RECS))
    (tmp_path / "m.jsonl").write_text("\n".join(map(json.dumps, MSGS)))
    mix = mixed_dataset(tok, [{"source": str(tmp_path / "a.json"), "weight": 1.5},
                              {"source": str(tmp_path / "m.jsonl"), "format": "chat", "weight": 0.5}],
                        val_fraction=0, seed=3)
    assert mix.counts == [18, 3] and len(mix) == 21
    assert "a.json: 18 samples (of 12)" in capsys.readouterr().err
    rep = data_report(mix)
    assert rep.samples == 21 and rep.target_tokens == sum(
        sum(lab != -100 for lab in mix[i]["labels"]) for i in range(len(mix)))
    with pytest.raises(DataSettingError, match=r"dataset.sources\[0\].weight=-1"):
        mixed_dataset(tok, [{"source": str(tmp_path / "a.json"), "weight": -1}])
    with pytest.raises(DataSettingError, match=r"dataset.sources\[1\].formt is not a setting of a mixed source "
                       r"\(did you mean 'format'\?\)"):  # was FormatDataset's TypeError
        mixed_dataset(tok, [{"source": str(tmp_path / "a.json")}, {"source": str(tmp_path / "m.jsonl"), "formt": "chat"}])


def test_tokenization_cache_is_keyed_by_data_tokenizer_and_length(tok, files, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEKIT_CACHE", str(tmp_path / "cache"))
    first = InstructDataset(tok, files["csv"], column_map=CMAP, cache=True)
    again = InstructDataset(tok, files["csv"], column_map=CMAP, cache=True)
    assert not first.cache_hit and again.cache_hit and _same(first, again)
    assert again.rows == first.rows and data_report(again) == data_report(first)
    assert not InstructDataset(tok, files["csv"], column_map=CMAP, cache=True, max_seq_len=300).cache_hit
    assert not InstructDataset(tiny_hf_tokenizer(), files["csv"], column_map=CMAP, cache=True).cache_hit
    files["csv"].write_text(files["csv"].read_text().replace("It is 3.", "It is three."))
    assert not InstructDataset(tok, files["csv"], column_map=CMAP, cache=True).cache_hit
    assert not InstructDataset(tok, files["csv"], column_map=CMAP).cache_hit  # auto: small data is not cached
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.npz"))) == 4


@pytest.mark.parametrize("pack", [None, 200])
def test_streaming_equals_in_memory(tok, files, pack) -> None:
    mem = InstructDataset(tok, files["json"], val_fraction=0)
    if pack:
        mem = PackedDataset(mem, pack)
    st = StreamingDataset(tok, files["csv"], column_map=CMAP, pack=pack, pad_id=tok.pad_id)
    assert _same(st, mem) and st.content_digest == data_digest(mem)
    if pack is None:
        a, b = data_report(st), data_report(mem)
        assert (a.samples, a.truncated, a.dropped, a.target_tokens, a.total_tokens, a.len_for_95pct) == \
            (b.samples, b.truncated, b.dropped, b.target_tokens, b.total_tokens, b.len_for_95pct)
    a, _ = build_loaders(st, None, batch_size=3, packed=bool(pack), pad_id=tok.pad_id, seed=0)
    from tunekit.training.data_loading import build_dataloader

    b = build_dataloader(mem, 3, a.collate_fn, shuffle=False)
    for x, y in zip(a, b, strict=True):  # the same first-epoch batches
        assert all((x[k] == y[k]).all() for k in x)


def test_streaming_position_resumes_exactly_and_shards(tok, files) -> None:
    st = StreamingDataset(tok, files["json"], shuffle_buffer=5, seed=1)
    loader, _ = build_loaders(st, None, batch_size=2, packed=False, pad_id=tok.pad_id, seed=1)
    full = {e: [b["tokens"] for b in _epoch(loader, e)] for e in (0, 1)}
    assert full[0][0].tolist() != full[1][0].tolist() or full[0][1].tolist() != full[1][1].tolist()  # reshuffled
    fresh = StreamingDataset(tok, files["json"], shuffle_buffer=5, seed=1)
    resumed, _ = build_loaders(fresh, None, batch_size=2, packed=False, pad_id=tok.pad_id, seed=1)
    resumed.sampler.load_state_dict({**loader.sampler.state_dict(), "epoch": 1, "start_index": 4})
    tail = [b["tokens"] for b in resumed]
    assert [t.tolist() for t in tail] == [t.tolist() for t in full[1][2:]]
    shards = [StreamingDataset(tok, files["json"], rank=r, world_size=5) for r in range(5)]
    assert {len(s) for s in shards} == {2}  # 12 samples over 5 ranks: 2 each, the tail dropped
    whole = StreamingDataset(tok, files["json"])
    assert [shards[r][i] for i in range(2) for r in range(5)] == [whole[i] for i in range(10)]


def _epoch(loader, epoch: int):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_preference_rows_load_with_the_same_loader(tmp_path: Path) -> None:
    p = tmp_path / "pref.csv"
    pd.DataFrame({"q": ["2+2?", "Capital of France?"], "good": ["4", "Paris"], "bad": ["5", "Paris"]}).to_csv(p, index=False)
    src = load_rows(p, column_map={"prompt": "q", "chosen": "good", "rejected": "bad"})
    src.check_columns(("prompt", "chosen", "rejected"), fmt="preference")
    rows = list(src)
    assert [r for r, _ in rows] == [1, 2] and rows[0][1]["chosen"] == "4"
    assert check_preference_record(rows[0][1]) is None
    assert "same text" in check_preference_record(rows[1][1])


def test_preview_marks_trained_tokens_and_counts(capsys) -> None:
    from tunekit.cli.data import main, render_sample

    tok = tiny_tokenizer()
    ids = tok.encode("Q: hi A: yes", add_bos=True, add_eos=True)
    labels = [-100] * (len(ids) - 3) + ids[-2:] + [-100]  # the last two tokens are trained
    text = render_sample(tok, ids, labels, color=False)
    assert text.startswith("<bos>Q:") and text.endswith("]]") and text.count("[[") == 1
    assert render_sample(tok, ids, labels, color=True).endswith("\033[0m")
    assert main(["preview", "lora_finetune", "--samples", "2", "--color", "never", "packed=true",
                 "max_seq_len=256", "dataset=alpaca_tiny"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- train sample") == 2 and "### Response:\n[[" in out
    assert "packing efficiency" in out and "samples:" in out and "trained)" in out and "#" in out
    assert main(["preview", "lora_finetune", "dataset=alpaca", "dataset.source=alpaca_tiny", "dataset.format=csv"]) == 1
    assert "dataset.format='csv' is not a data format" in capsys.readouterr().err
    assert main(["preview", "lora_finetune", "-n", "-1"]) == 1
    assert "--samples wants a whole number >= 0 (the samples to print, e.g. -n 5), got '-1'" in capsys.readouterr().err
    # the DPO recipes' data: was "preference data ... run `python -m recipes.lora_dpo`" (the recipe previewed)
    assert main(["preview", "lora_dpo", "-n", "1", "--color", "never", "max_seq_len=256"]) == 0
    out = capsys.readouterr().out
    assert "--- train pair 1 (line " in out and "  chosen: " in out and "  rejected: " in out
    assert out.count("### Response:\n[[") == 2 and "  pairs: " in out and "sequences (chosen and rejected)" in out


def test_streaming_digest_is_what_the_loader_serves(tok, files) -> None:
    for ranks in (1, 5):  # JSONL streams line by line
        st = StreamingDataset(tok, files["jsonl"], shuffle_buffer=4, seed=2, rank=ranks - 1, world_size=ranks)
        assert st.content_digest == data_digest([st[i] for i in range(len(st))])
    assert _same(StreamingDataset(tok, files["jsonl"]), InstructDataset(tok, files["json"], val_fraction=0))


def test_download_repo_type_dataset_fills_the_hub_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    import huggingface_hub

    from tunekit.cli import download

    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(tmp_path / "hub" / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert download.main(["acme/data", "--repo-type", "dataset", "--revision", "v1"]) == 0
    (repo, kw), = calls
    assert repo == "acme/data" and kw["repo_type"] == "dataset" and kw["revision"] == "v1"
    assert kw["local_dir"] is None and kw["cache_dir"] == str(tmp_path / "hub")  # where dataset.source= reads
    assert "dataset.source=acme/data" in capsys.readouterr().out


def test_csv_cells_are_text_as_written_and_txt_line_endings_are_unix(tmp_path: Path) -> None:
    # pandas would read "2" as the number 2 (every row refused: "must be a string") and "1.50" as 1.5
    p = tmp_path / "math.csv"
    p.write_bytes("\ufeffquestion,answer,note\r\n\"What is 1+1, exactly?\",2,1.50\r\nZero?,007,\r\n".encode())
    rows = [rec for _, rec in load_rows(p)]
    assert rows == [{"question": "What is 1+1, exactly?", "answer": "2", "note": "1.50"},
                    {"question": "Zero?", "answer": "007", "note": None}]
    doc = tmp_path / "win.txt"
    doc.write_bytes("\ufeffline one\r\nline two\rthree\n".encode())
    (row, rec), = list(load_rows(doc, text_files=True))
    assert rec == {"text": "line one\nline two\nthree\n"}


def test_a_bad_row_of_a_directory_names_its_file_line_and_mapped_column(tok, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"q": f"Q{i}", "a": "A"}) + "\n" for i in range(3)))
    (d / "b.jsonl").write_text("\n" + json.dumps({"q": "Q", "a": "A"}) + "\n" + json.dumps({"q": 5, "a": "A"}) + "\n")
    for streaming in (False, True):
        cls = StreamingDataset if streaming else InstructDataset
        msg = _err(lambda cls=cls: cls(tok, d, split="all", column_map={"instruction": "q", "output": "a"}))
        assert f"Data set '{d}'" in msg and "row 5 (b.jsonl, line 3): field 'instruction' (your column 'q') " \
               "must be a string, got the number 5" in msg, msg


def test_openai_tool_calls_and_content_parts_are_named_with_the_fix(tok, tmp_path: Path) -> None:
    calls = {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function",
                                                                 "function": {"name": "f", "arguments": "{}"}}]}
    parts = {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    for i, (turns, needle) in enumerate([
            ([{"role": "user", "content": "x"}, calls, {"role": "assistant", "content": "y"}],
             "line 2: messages[1] holds 'tool_calls': tool / function-call messages are not supported"),
            ([parts, {"role": "assistant", "content": "Hello."}],
             "line 2: messages[0].content must be a string, got a list of 1 item(s) (OpenAI content parts "
             "[{'type': 'text', 'text': ...}] are not read: join their texts into one string)")]):
        (tmp_path / f"{i}.jsonl").write_text("\n".join(map(json.dumps, [MSGS[0], {"messages": turns}])))
        msg = _err(lambda i=i: ChatDataset(tok, tmp_path / f"{i}.jsonl", split="all"))
        assert needle in msg, msg


def test_a_column_map_that_is_not_a_mapping_is_named_with_the_form(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    p = tmp_path / "qa.csv"
    p.write_text("q,a\nHi,Yo\n")
    with pytest.raises(DataSettingError) as err:  # was "ListConfig does not support attribute access"
        load_rows(p, column_map=OmegaConf.create(["q", "a"]))
    assert "dataset.column_map=['q', 'a'] must map the format's fields to your columns" in str(err.value)
    assert "dataset.column_map='{instruction: question, output: answer}'" in str(err.value)


def test_a_pretty_printed_json_list_saved_as_jsonl_says_rename_it(tok, tmp_path: Path) -> None:
    p = tmp_path / "alpaca.jsonl"  # was: "N lines that are not valid JSON" for every line of a fine file
    p.write_text(json.dumps([{"instruction": "Hi", "output": "Yo"}] * 4, indent=2))
    for cls in (InstructDataset, StreamingDataset):
        msg = _err(lambda cls=cls: cls(tok, p, split="all"))
        assert str(p) in msg and "JSON list" in msg and "Rename it to alpaca.json" in msg.replace("rename", "Rename")


def test_a_csv_separated_by_semicolons_or_tabs_says_so(tok, tmp_path: Path) -> None:
    # was: "columns are ['instruction;output']", fix "column_map='{instruction: instruction;output}'"
    for name, sep, needle in [("semi.csv", ";", "separated by semicolons"), ("tabs.csv", "\t", "Rename it to tabs.tsv")]:
        p = tmp_path / name
        p.write_text(f"instruction{sep}output\nSay hi{sep}hi\n")
        msg = _err(lambda p=p: InstructDataset(tok, p, split="all"))
        assert str(p) in msg and "reads as one column" in msg and needle in msg, msg
