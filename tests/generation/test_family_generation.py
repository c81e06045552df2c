"""Generation per model family: chat prompts from the checkpoint's own template (ids equal
transformers' ``apply_chat_template(..., add_generation_prompt=True)``), Alpaca input, multi-turn
``messages=``, and stopping at the family's stop tokens (from its files, not a per-family list).

In process except one real ``recipes.generate`` run (model=auto on a tiny Llama 3 checkpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tokenizers._tokenizer_files import chatml_dir, llama3_hf_dir, mistral_dir
from tunekit.generation import (
    STOP_MAX_NEW_TOKENS,
    STOP_TOKEN,
    PromptError,
    TokenGenerator,
    build_prompt,
    read_messages,
    stop_token_ids,
)
from tunekit.tokenizers import tiny_tokenizer, tokenizer_from_dir

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]

CHAT = [{"role": "system", "content": "You are brief."},
        {"role": "user", "content": "What is 2 plus 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And café 日本 🦙 times two?"}]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gen_tok")
    return {"chatml": chatml_dir(), "llama3": llama3_hf_dir(base / "llama3"), "mistral": mistral_dir(base / "mistral")}


@pytest.mark.parametrize("layout", ["chatml", "llama3", "mistral"])
def test_chat_prompt_ids_equal_apply_chat_template(dirs, layout):
    tok = tokenizer_from_dir(dirs[layout])
    ref = transformers.AutoTokenizer.from_pretrained(dirs[layout])

    def expected(msgs):
        out = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    multi = build_prompt(tok, prompt="ignored", messages=CHAT)
    assert multi.tokens == expected(CHAT) and multi.shown == CHAT[-1]["content"]
    if layout != "mistral":  # Mistral v0.3's template puts a system message into the last user turn only
        one = build_prompt(tok, prompt="Hi there", chat=True, system_prompt="Be kind.")
        assert one.tokens == expected([{"role": "system", "content": "Be kind."},
                                       {"role": "user", "content": "Hi there"}])


def test_plain_and_alpaca_prompts_follow_the_tokenizer(dirs):
    qwen = tokenizer_from_dir(dirs["chatml"])  # no BOS at all
    assert build_prompt(qwen, prompt="Hello").tokens == qwen.encode("Hello", add_bos=False, add_eos=False)
    llama2 = tiny_tokenizer()
    alpaca = build_prompt(llama2, prompt="Sum these.", template="alpaca", input="1, 2")
    text = llama2.decode(alpaca.tokens)
    assert "### Input:\n1, 2" in text and text.rstrip().endswith("### Response:")
    assert build_prompt(llama2, prompt="Hi", chat=True).layout == "Llama 2 chat ([INST])"


def test_stop_ids_come_from_the_checkpoint_files(dirs):
    llama3 = tokenizer_from_dir(dirs["llama3"])
    gen = json.loads((dirs["llama3"] / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) <= set(stop_token_ids(llama3))
    assert llama3.token_to_id("<|eot_id|>") in stop_token_ids(llama3)
    qwen = tokenizer_from_dir(dirs["chatml"])
    assert stop_token_ids(qwen) == [qwen.token_to_id("<|im_end|>")]


def _rigged_qwen3(vocab: int, favourite: int):
    """A tiny Qwen3 whose greedy choice is always ``favourite``: the residual stream is the embedding
    (attention and MLP outputs zeroed), whose dim 0 is positive; only ``favourite``'s output row reads it."""
    from tunekit.models.qwen3 import qwen3

    torch.manual_seed(0)
    model = qwen3(vocab_size=vocab, num_layers=1, num_heads=2, num_kv_heads=1, embed_dim=32, intermediate_dim=64,
                  max_seq_len=64, head_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
        for layer in model.layers:
            layer.attn.output_proj.weight.zero_()
            layer.mlp.w2.weight.zero_()
        model.tok_embeddings.weight[:, 0] = 5.0
        model.output.weight.zero_()
        model.output.weight[favourite, 0] = 1.0
    model.init_buffers()
    return model.eval()


def test_generation_stops_at_a_stop_token_of_generation_config(dirs):
    tok = tokenizer_from_dir(dirs["llama3"])
    eot = tok.token_to_id("<|eot_id|>")
    assert eot != tok.token_to_id("<|end_of_text|>")
    model = _rigged_qwen3(tok.vocab_size, eot)
    prompt = build_prompt(tok, prompt="Hi", chat=True).tokens
    with TokenGenerator(model) as gen:
        res = gen.generate(prompt, max_new_tokens=6, temperature=0.0, stop_tokens=stop_token_ids(tok))
        assert res.stop_reason[0] == STOP_TOKEN and res.stop_token[0] == eot and res.tokens[0] == []
        plain_eos = gen.generate(prompt, max_new_tokens=6, temperature=0.0,
                                 stop_tokens=[tok.token_to_id("<|end_of_text|>")])
        assert plain_eos.stop_reason[0] == STOP_MAX_NEW_TOKENS  # EOS alone would not have stopped it


@pytest.mark.parametrize("value, needle", [
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "ends with a 'assistant'"),
    ([{"role": "human", "content": "Hi"}], "messages[0].role 'human' is not a known role (write 'user')"),
    ("not/a/file.json", "is not an existing file nor a JSON/YAML list"),
    ("[{role: user, content: [1, 2]}]", "messages[0].content must be a string"),
])
def test_bad_messages_name_the_entry_and_the_fix(value, needle):
    with pytest.raises(PromptError) as err:
        read_messages(value)
    assert needle in str(err.value) and "messages=" in str(err.value)


def test_messages_from_files(tmp_path):
    conv = CHAT[1:2]
    (tmp_path / "c.json").write_text(json.dumps({"messages": conv}))
    (tmp_path / "c.yaml").write_text("- role: user\n  content: What is 2 plus 2?\n")
    assert read_messages(str(tmp_path / "c.json")) == conv == read_messages(tmp_path / "c.yaml")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(PromptError, match=r"bad.json'?: the file is not valid json"):
        read_messages(str(tmp_path / "bad.json"))


def test_generate_recipe_model_auto_chat_stops_at_a_generation_config_stop(tmp_path, dirs):
    """The real entry point: model=auto on a Llama 3 checkpoint, a multi-turn chat from a file."""
    from tunekit.checkpointing import FullModelHFCheckpointer  # noqa: F401  (imports torch once here)

    tok = tokenizer_from_dir(dirs["llama3"])
    end = tok.token_to_id("<|end_of_text|>")  # a stop id of generation_config.json only (EOS is <|eot_id|>)
    assert end != tok.eos_id
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=128, rope_theta=500000.0, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hf.model.embed_tokens.weight[:, 0] = 5.0
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[end, 0] = 1.0
    ckpt = tmp_path / "llama3"
    hf.save_pretrained(ckpt)
    for f in dirs["llama3"].iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    (tmp_path / "conv.json").write_text(json.dumps(CHAT))
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.generate", f"hydra.run.dir={tmp_path / 'run'}", "model=auto",
         f"checkpointer.checkpoint_dir={ckpt}", f"messages={tmp_path / 'conv.json'}", "temperature=0",
         "max_new_tokens=8"], cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = transformers.AutoTokenizer.from_pretrained(dirs["llama3"])
    out = ref.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    n = len(out["input_ids"] if hasattr(out, "keys") else out)
    assert f"0 new tokens from a {n}-token prompt" in proc.stderr
    assert f"stopped at <|end_of_text|> (id {end}) after 0 new tokens" in proc.stderr
    assert "prompt: the checkpoint's chat template" in proc.stderr


def test_unreadable_messages_files_are_one_paragraph(tmp_path):
    (tmp_path / "c.yaml").write_text("- role: user\n  content: [unclosed\n")
    (tmp_path / "c.json").write_bytes(b"\xff\xfe[")
    for name in ("c.yaml", "c.json"):
        with pytest.raises(PromptError, match=r"the file is not valid (yaml|json)"):
            read_messages(str(tmp_path / name))
