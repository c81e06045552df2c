"""The tokenizer files and the chat template travel with every output checkpoint: an HF
``epoch_N/model`` loads with ``AutoTokenizer`` giving the input's ids and template, a Meta
output carries ``tokenizer.model``, and ``tunekit convert`` writes what each format's tools read
(Meta -> HF: a tokenizer_config.json transformers reads Meta's tiktoken file with)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _family_ref import FAMILIES, random_hf

from tests.tokenizers._tokenizer_files import TEXTS, chatml_dir, llama3_hf_dir, llama3_meta_dir, mistral_dir
from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer, convert_checkpoint
from tunekit.models import LLAMA3, ModelDims
from tunekit.tokenizers import LLAMA3_CHAT_TEMPLATE, LLAMA3_SPECIAL_TOKENS, tokenizer_from_dir

transformers = pytest.importorskip("transformers")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi café 日本?"}]


def _ids(tok, text):
    return tok(text)["input_ids"]


def _chat(tok):
    out = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_llama3_row_states_llama3s_tokenizer_facts():
    cfg = LLAMA3.tokenizer_config
    assert tuple(cfg["additional_special_tokens"]) == LLAMA3_SPECIAL_TOKENS
    assert cfg["chat_template"] == LLAMA3_CHAT_TEMPLATE and cfg["bos_token"] == "<|begin_of_text|>"


@pytest.mark.parametrize("family, layout", [("qwen2", "chatml"), ("llama3", "llama3"), ("mistral", "mistral")])
def test_hf_output_model_dir_loads_with_autotokenizer(tmp_path, family, layout):
    src = tmp_path / "src"
    fam = FAMILIES[family]
    hf = random_hf(fam)
    hf.save_pretrained(src)
    tok_dir = {"chatml": chatml_dir, "llama3": lambda: llama3_hf_dir(tmp_path / "t"),
               "mistral": lambda: mistral_dir(tmp_path / "t")}[layout]()
    for f in tok_dir.iterdir():
        if f.name != "generation_config.json" or layout == "llama3":
            shutil.copy(f, src / f.name)
    ckpt = FullModelHFCheckpointer(src, tmp_path / "out", model_type="auto")
    sd = ckpt.load_checkpoint()["model"]
    out = ckpt.save_checkpoint({"model": sd}, epoch=0) / "model"
    assert not (set(p.name for p in src.iterdir()) - set(p.name for p in out.iterdir()) - {"model.safetensors"})
    before, after = (transformers.AutoTokenizer.from_pretrained(d) for d in (src, out))
    for text in TEXTS:
        assert _ids(after, text) == _ids(before, text)
    assert _chat(after) == _chat(before)
    assert tokenizer_from_dir(out.parent).encode(TEXTS[0]) == tokenizer_from_dir(src).encode(TEXTS[0])
    assert json.loads((out / "generation_config.json").read_text()) == json.loads(
        (src / "generation_config.json").read_text())


def test_meta_llama3_outputs_carry_the_tiktoken_file_and_convert_to_hf_loads(tmp_path):
    fam = FAMILIES["llama3"]
    hf = random_hf(fam)
    sd = LLAMA3.hf_to_tunekit(hf.state_dict(), 4, 2, 64)
    meta = tmp_path / "meta"
    llama3_meta_dir(meta)
    torch.save(LLAMA3.tunekit_to_meta(sd), meta / "consolidated.00.pth")
    vocab = tokenizer_from_dir(meta).vocab_size
    assert vocab > 512  # the tiny ranks + Meta's 256 special tokens: widen the embedding to hold them
    big = {k: torch.cat([v, torch.zeros(vocab - 512, v.shape[1])]) if k in ("tok_embeddings.weight", "output.weight")
           else v for k, v in LLAMA3.tunekit_to_meta(sd).items()}
    torch.save(big, meta / "consolidated.00.pth")
    params = LLAMA3.meta_params(ModelDims(2, 4, 2, 64, vocab, 160), norm_eps=1e-5, rope_theta=500000.0)
    (meta / "params.json").write_text(json.dumps(params))
    ckpt = FullModelMetaCheckpointer(meta, tmp_path / "out", model_type="auto")
    saved = ckpt.save_checkpoint({"model": ckpt.load_checkpoint()["model"]}, epoch=0) / "model"
    assert sorted(p.name for p in saved.iterdir()) == ["consolidated.00.pth", "params.json", "tokenizer.model"]

    hf_out = convert_checkpoint(saved.parent, tmp_path / "hf", to="hf")
    auto = transformers.AutoTokenizer.from_pretrained(hf_out)
    ours = tokenizer_from_dir(meta)
    for text in TEXTS + ["Hi <|eot_id|> there"]:
        assert _ids(auto, text) == ours.encode(text, add_bos=True, add_eos=False)
    from tunekit.data import chat_generation_tokens

    assert _chat(auto) == chat_generation_tokens(ours, CHAT)
    back = convert_checkpoint(hf_out, tmp_path / "meta2", to="meta")
    assert (back / "tokenizer.model").read_bytes() == (meta / "tokenizer.model").read_bytes()


def test_hf_to_meta_writes_tiktoken_ranks_from_a_llama3_tokenizer_json(tmp_path):
    """A Llama 3 layout tokenizer.json (ordinary tokens 0..n-1, Meta's special tokens after them)
    becomes Meta's tokenizer.model with the same ids, when no original/tokenizer.model is at hand."""
    from tunekit.checkpointing._export import tiktoken_ranks_from_tokenizer_json
    from tunekit.tokenizers import HFTokenizer, TiktokenTokenizer

    data = json.loads((llama3_hf_dir(tmp_path / "l3") / "tokenizer.json").read_text())
    special = {a["content"] for a in data["added_tokens"]}
    ordinary = sorted((i, t) for t, i in data["model"]["vocab"].items() if t not in special)
    data["model"]["vocab"] = {t: n for n, (_, t) in enumerate(ordinary)}
    data["added_tokens"] = [{"id": len(ordinary) + k, "content": t, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}
                            for k, t in enumerate(LLAMA3_SPECIAL_TOKENS)]
    data["post_processor"] = None
    d = tmp_path / "hf"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(data))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    (d / "tokenizer.model").write_text(tiktoken_ranks_from_tokenizer_json(d / "tokenizer.json"))
    hf, tt = HFTokenizer(d / "tokenizer.json"), TiktokenTokenizer(d / "tokenizer.model")
    for text in TEXTS + ["Hi <|eot_id|> there"]:
        assert tt.encode(text, add_bos=False, add_eos=False) == hf.encode(text, add_bos=False, add_eos=False)
    assert tiktoken_ranks_from_tokenizer_json(chatml_dir() / "tokenizer.json") is None  # specials at 0..2
