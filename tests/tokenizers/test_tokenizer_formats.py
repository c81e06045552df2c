"""HF tokenizer.json and Meta Llama 3 tiktoken: ids equal transformers', special tokens from the files."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.tokenizers._tokenizer_files import (
    TEXTS,
    chatml_dir,
    llama3_hf_dir,
    llama3_meta_dir,
    mistral_dir,
    with_tokenizer_class,
)
from tunekit.tokenizers import (
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_TOKENS,
    TINY_HF_TOKENIZER_DIR,
    TINY_TOKENIZER_PATH,
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    TokenizerError,
    TokenizerFileNotFoundError,
    hf_tokenizer,
    llama3_tokenizer,
    tiny_hf_tokenizer,
    tokenizer_from_dir,
)

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tok")
    out = {"chatml": chatml_dir(), "llama3": llama3_hf_dir(base / "llama3"), "mistral": mistral_dir(base / "mistral"),
           "meta": llama3_meta_dir(base / "meta")}
    # The class names the real checkpoints give; transformers builds those classes from the same files.
    out["chatml_qwen2_class"] = with_tokenizer_class(out["chatml"], base / "qwen2_class", "Qwen2Tokenizer")
    out["mistral_llama_class"] = with_tokenizer_class(out["mistral"], base / "llama_class", "LlamaTokenizer")
    # add_bos_token / add_eos_token that contradict the post-processor: the post-processor decides.
    flags = out["llama3_flags"] = with_tokenizer_class(out["llama3"], base / "flags", "PreTrainedTokenizerFast")
    config = json.loads((flags / "tokenizer_config.json").read_text())
    (flags / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False, "add_eos_token": True}))
    return out


@pytest.mark.parametrize("layout", ["chatml", "llama3", "mistral", "chatml_qwen2_class", "mistral_llama_class",
                                    "llama3_flags"])
def test_hf_encoding_equals_autotokenizer(dirs: dict[str, Path], layout: str) -> None:
    ours = tokenizer_from_dir(dirs[layout])
    ref = transformers.AutoTokenizer.from_pretrained(dirs[layout])
    assert isinstance(ours, HFTokenizer) and isinstance(ours, Tokenizer)
    assert ours.vocab_size == len(ref)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=False, add_eos=False)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        # The checkpoint's own convention (BOS for Llama 3 and Mistral, nothing for Qwen).
        assert ours.encode(text, add_bos=ours.adds_bos, add_eos=ours.adds_eos) == ref.encode(text), text
        assert ours.decode(ids, skip_special=False) == ref.decode(ids, skip_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.encode_batch(TEXTS[:3], add_bos=False, add_eos=False) == [ours.encode(t, False, False) for t in TEXTS[:3]]


def test_special_token_strings_in_user_text_become_their_ids(dirs: dict[str, Path]) -> None:
    tok = tokenizer_from_dir(dirs["chatml"])
    ids = tok.encode("a<|im_end|>b", add_bos=False, add_eos=False)
    assert tok.token_to_id("<|im_end|>") in ids and len(ids) == 3


def test_meta_llama3_tiktoken_equals_transformers_conversion(dirs: dict[str, Path]) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = dirs["meta"] / "tokenizer.model"
    ours = tokenizer_from_dir(dirs["meta"])
    assert isinstance(ours, TiktokenTokenizer) and isinstance(ours, Tokenizer)
    rust = TikTokenConverter(str(path), pattern=LLAMA3_PATTERN, extra_special_tokens=list(LLAMA3_SPECIAL_TOKENS)).converted()
    ref = transformers.PreTrainedTokenizerFast(tokenizer_object=rust)
    assert ours.vocab_size == len(ref) == 509 + 256
    for text in TEXTS + ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"]:
        ids = ours.encode(text, add_bos=False, add_eos=False)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids, skip_special=False) == ref.decode(ids), text
    assert ours.encode("hi", add_bos=True, add_eos=True)[::len(ours.encode("hi", False, False)) + 1] == [ours.bos_id, ours.eos_id]


def test_llama3_special_tokens_follow_meta_numbering(dirs: dict[str, Path]) -> None:
    tok = llama3_tokenizer(dirs["meta"] / "tokenizer.model")
    base = 509
    assert (tok.bos_id, tok.eos_id) == (base, base + 1)
    assert tok.token_to_id("<|start_header_id|>") == base + 6 and tok.token_to_id("<|eot_id|>") == base + 9
    assert tok.token_to_id("<|reserved_special_token_247|>") == base + 255 == tok.vocab_size - 1
    assert tok.pad_id == tok.token_to_id("<|finetune_right_pad_id|>")
    assert tok.stop_ids == [base + 1, base + 8, base + 9]  # end_of_text, eom_id, eot_id
    assert tok.decode([tok.bos_id, *tok.encode("Hello", False, False), tok.token_to_id("<|eot_id|>")]) == "Hello"


def test_special_and_stop_tokens_come_from_the_files(dirs: dict[str, Path], tmp_path: Path) -> None:
    l3 = tokenizer_from_dir(dirs["llama3"])
    assert l3.bos_id == l3.token_to_id("<|begin_of_text|>") and l3.eos_id == l3.token_to_id("<|eot_id|>")
    assert l3.stop_ids == [l3.token_to_id("<|eot_id|>"), l3.token_to_id("<|end_of_text|>")]
    assert (l3.adds_bos, l3.adds_eos) == (True, False) and l3.pad_id == l3.eos_id
    assert l3.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    qwen = tiny_hf_tokenizer()
    assert qwen.bos_id is None and not qwen.adds_bos
    assert qwen.eos_id == qwen.token_to_id("<|im_end|>") and qwen.pad_id == qwen.token_to_id("<|endoftext|>")
    assert qwen.encode("hi", add_bos=True, add_eos=False) == qwen.encode("hi", add_bos=False, add_eos=False)
    # Renaming the EOS in tokenizer_config.json is all it takes: nothing is per family.
    d = tmp_path / "renamed"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((TINY_HF_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>", "special": True}}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    tok = hf_tokenizer(d / "tokenizer.json")
    assert tok.eos_id == 0 and tok.stop_ids == [0, 2] and tok.chat_template is None


def test_chat_template_jinja_file_wins_over_the_config(dirs: dict[str, Path], tmp_path: Path) -> None:
    mistral = tokenizer_from_dir(dirs["mistral"])
    assert mistral.chat_template == (dirs["mistral"] / "chat_template.jinja").read_text()
    d = tmp_path / "named"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((TINY_HF_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    cfg = {"eos_token": "<|im_end|>", "chat_template": [{"name": "tool_use", "template": "T"},
                                                         {"name": "default", "template": "D"}]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert hf_tokenizer(d / "tokenizer.json").chat_template == "D"
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="none is named 'default'"):
        hf_tokenizer(d / "tokenizer.json")


def test_tokenizer_from_dir_picks_the_format(dirs: dict[str, Path], tmp_path: Path) -> None:
    assert isinstance(tokenizer_from_dir(TINY_TOKENIZER_PATH.parent), SentencePieceTokenizer)
    assert isinstance(tokenizer_from_dir(TINY_TOKENIZER_PATH), SentencePieceTokenizer)
    assert isinstance(tokenizer_from_dir(dirs["meta"] / "tokenizer.model"), TiktokenTokenizer)
    # An HF download: tokenizer.json at the top, Meta's files under original/.
    hf = tmp_path / "Llama-3.1-8B"
    (hf / "original").mkdir(parents=True)
    for f in dirs["llama3"].iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    (hf / "original" / "tokenizer.model").write_bytes((dirs["meta"] / "tokenizer.model").read_bytes())
    assert isinstance(tokenizer_from_dir(hf), HFTokenizer)
    (hf / "tokenizer.json").unlink()
    assert isinstance(tokenizer_from_dir(hf), TiktokenTokenizer)
    # A tunekit checkpoint keeps the model files in model/.
    ckpt = tmp_path / "run" / "epoch_0"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "model" / "tokenizer.json").write_bytes((TINY_HF_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    (ckpt / "model" / "tokenizer_config.json").write_bytes((TINY_HF_TOKENIZER_DIR / "tokenizer_config.json").read_bytes())
    assert tokenizer_from_dir(ckpt).eos_id == tiny_hf_tokenizer().eos_id


def test_a_directory_without_tokenizer_files_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerFileNotFoundError) as e:
        tokenizer_from_dir(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "config.json" in msg and "tunekit download" in msg and "\n" not in msg
    with pytest.raises(TokenizerFileNotFoundError, match="does not exist"):
        tokenizer_from_dir(tmp_path / "missing")


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty (0 bytes)"),
    (b"<!DOCTYPE html><html><body>401</body></html>", "HTML page"),
    (b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}}}', "rejects it"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n", "Git LFS pointer"),
])
def test_bad_tokenizer_json_is_one_paragraph(tmp_path: Path, content: bytes, words: str) -> None:
    p = tmp_path / "tokenizer.json"
    p.write_bytes(content)
    with pytest.raises(TokenizerError) as e:
        hf_tokenizer(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg and "tunekit download" in msg and "\n" not in msg


def test_config_that_does_not_match_the_tokenizer_is_named(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.json"
    p.write_bytes((TINY_HF_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(TokenizerError, match=r"names eos_token='</s>', but .* has no such token"):
        hf_tokenizer(p)
    cfg.write_text('{"eos_token": "<|im_end|>",}')
    with pytest.raises(TokenizerError, match=r"is not valid JSON \(line 1"):
        hf_tokenizer(p)
    cfg.write_text(json.dumps({"bos_token": None}))
    with pytest.raises(TokenizerError, match="has no `eos_token`"):
        hf_tokenizer(p)
    cfg.unlink()
    with pytest.raises(TokenizerError, match="tokenizer_config.json' is missing"):
        hf_tokenizer(p)


def test_bad_tiktoken_files_are_one_paragraph(tmp_path: Path, dirs: dict[str, Path]) -> None:
    p = tmp_path / "tokenizer.model"
    good = (dirs["meta"] / "tokenizer.model").read_text().splitlines()
    p.write_text("\n".join(good[:10] + ["not-base64!! 10"] + good[11:]))
    with pytest.raises(TokenizerError, match=r"line 11 is 'not-base64!! 10', not '<base64 token> <rank>'"):
        llama3_tokenizer(p)
    p.write_text("\n".join(good[:-1] + [good[-1].split()[0] + " 99999"]))
    with pytest.raises(TokenizerError, match="ranks that are not 0..508"):
        llama3_tokenizer(p)
    p.write_bytes(TINY_TOKENIZER_PATH.read_bytes())
    with pytest.raises(TokenizerError) as e:
        llama3_tokenizer(p)
    assert "not a tiktoken BPE file" in str(e.value) and "tokenizer=hf" in str(e.value)
    with pytest.raises(TokenizerFileNotFoundError, match="does not exist"):
        llama3_tokenizer(tmp_path / "nope.model")


def test_bundled_tokenizer_json_is_regenerated_byte_identically(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_tokenizer", ROOT / "scripts" / "make_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.train_hf_tokenizer(tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (TINY_HF_TOKENIZER_DIR / name).read_bytes(), name
    assert tiny_hf_tokenizer().vocab_size == 512


@pytest.mark.parametrize(("option", "layout", "cls"), [("hf", "llama3", HFTokenizer), ("llama3", "meta", TiktokenTokenizer)])
def test_config_components_find_the_tokenizer_in_a_model_dir_or_a_run(dirs: dict[str, Path], tmp_path: Path,
                                                                      option: str, layout: str, cls: type) -> None:
    from tunekit.config import compose, instantiate

    tok = instantiate(compose("lora_finetune", [f"tokenizer={option}", f"checkpointer.checkpoint_dir={dirs[layout]}"]).tokenizer)
    assert isinstance(tok, cls) and tok.path.parent == dirs[layout]
    # A run tunekit saved keeps the model's files in epoch_N/model/.
    model = tmp_path / "run" / "epoch_0" / "model"
    model.mkdir(parents=True)
    for f in dirs[layout].iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model.parent / "COMPLETE").touch()
    cfg = compose("lora_finetune", [f"tokenizer={option}", f"checkpointer.checkpoint_dir={tmp_path / 'run'}"])
    assert instantiate(cfg.tokenizer).path == model / tok.path.name


def test_auto_component_picks_the_checkpoints_own_tokenizer(dirs: dict[str, Path], tmp_path: Path) -> None:
    from tunekit.config import compose, instantiate

    for layout, cls in (("llama3", HFTokenizer), ("meta", TiktokenTokenizer)):
        cfg = compose("lora_finetune", ["tokenizer=auto", f"checkpointer.checkpoint_dir={dirs[layout]}"])
        assert isinstance(instantiate(cfg.tokenizer), cls)
    assert isinstance(instantiate(compose("lora_finetune", ["tokenizer=auto"]).tokenizer), SentencePieceTokenizer)
    run = tmp_path / "run"
    for n, layout in enumerate(("meta", "chatml")):  # epoch_1 is the newest complete one
        model = run / f"epoch_{n}" / "model"
        model.mkdir(parents=True)
        for f in dirs[layout].iterdir():
            (model / f.name).write_bytes(f.read_bytes())
        (model.parent / "COMPLETE").touch()
        os.utime(model.parent / "COMPLETE", ns=(10**18 + n, 10**18 + n))
    assert isinstance(tokenizer_from_dir(run), HFTokenizer)


def test_missing_file_names_the_tokenizer_beside_it(dirs: dict[str, Path]) -> None:
    with pytest.raises(TokenizerFileNotFoundError) as e:
        llama3_tokenizer(dirs["llama3"] / "tokenizer.model")
    assert "holds tokenizer.json" in str(e.value) and "tokenizer=auto" in str(e.value)
    with pytest.raises(TokenizerFileNotFoundError) as e:
        hf_tokenizer(dirs["meta"] / "tokenizer.json")
    assert "holds tokenizer.model" in str(e.value) and "tokenizer=auto" in str(e.value)
