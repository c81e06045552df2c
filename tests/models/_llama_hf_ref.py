"""Test-only helpers: HF ``LlamaForCausalLM`` references with the same weights as tunekit."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tunekit.models.llama2 import llama2
from tunekit.modules import TransformerDecoder

# HF module name -> tunekit name, within a layer (and lm_head -> output).
HF_TO_TK_LINEAR = {
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.output_proj",
    "mlp.gate_proj": "mlp.w1",
    "mlp.down_proj": "mlp.w2",
    "mlp.up_proj": "mlp.w3",
}
TK_TO_PEFT_TARGET = {
    "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj", "output": "lm_head",
}  # fmt: skip

TINY = dict(vocab_size=96, num_layers=2, embed_dim=64, intermediate_dim=160, max_seq_len=64)
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "output_proj", "w1", "w2", "w3", "output"]


def hf_config(*, num_heads: int, num_kv_heads: int, rope_base: float = 10_000.0, **over) -> LlamaConfig:
    s = {**TINY, **over}
    return LlamaConfig(
        vocab_size=s["vocab_size"],
        hidden_size=s["embed_dim"],
        intermediate_size=s["intermediate_dim"],
        num_hidden_layers=s["num_layers"],
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=s["max_seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=rope_base,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )


def permute_hf_to_interleaved(w: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of a q/k projection (or of its LoRA B): rotate-half layout -> interleaved."""
    rows, cols = w.shape
    hd = rows // n
    return w.reshape(n, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_key_to_tk(key: str) -> str:
    key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
    # PEFT adapter names
    key = key.replace(".lora_A.default.", ".lora_a.").replace(".lora_B.default.", ".lora_b.")
    if key.startswith("lm_head."):
        return "output." + key.removeprefix("lm_head.")
    key = key.removeprefix("model.")
    key = key.replace("embed_tokens.", "tok_embeddings.")
    key = key.replace("input_layernorm.weight", "sa_norm.scale")
    key = key.replace("post_attention_layernorm.weight", "mlp_norm.scale")
    if key == "norm.weight":
        return "norm.scale"
    for hf, tk in HF_TO_TK_LINEAR.items():
        key = key.replace(f".{hf}.", f".{tk}.")
    return key


def hf_to_tk_state_dict(hf_sd: dict[str, torch.Tensor], num_heads: int, num_kv_heads: int) -> dict:
    out = {}
    for k, v in hf_sd.items():
        if "rotary_emb" in k:
            continue
        tk = hf_key_to_tk(k)
        is_b_or_w = tk.endswith(("q_proj.weight", "q_proj.lora_b.weight", "k_proj.weight", "k_proj.lora_b.weight"))
        if is_b_or_w:
            v = permute_hf_to_interleaved(v, num_heads if ".q_proj." in tk else num_kv_heads)
        out[tk] = v.clone()
    return out


def tk_model(
    *, num_heads: int, num_kv_heads: int, rope_base: float = 10_000.0, lora=None, **over
) -> TransformerDecoder:
    s = {**TINY, **over}
    return llama2(num_heads=num_heads, num_kv_heads=num_kv_heads, rope_base=rope_base, lora=lora, **s)


def make_pair(*, num_heads: int = 4, num_kv_heads: int = 2, rope_base: float = 10_000.0, seed: int = 0):
    """A random HF Llama and the tunekit model with the same weights (fp32, eval)."""
    torch.manual_seed(seed)
    cfg = hf_config(num_heads=num_heads, num_kv_heads=num_kv_heads, rope_base=rope_base)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales so a wrong key or transpose shows up
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    tk = tk_model(num_heads=num_heads, num_kv_heads=num_kv_heads, rope_base=rope_base).eval()
    tk.load_state_dict(hf_to_tk_state_dict(hf.state_dict(), num_heads, num_kv_heads), strict=True)
    return tk, hf


def peft_model(spec, *, num_heads: int = 4, num_kv_heads: int = 2, dropout: float = 0.0, **lora_config):
    """:func:`make_pair`'s HF Llama wrapped by PEFT with ``spec``'s rank, alpha and targets (plus
    ``lora_config``: patterns, ``use_dora``), its B matrices drawn from N(0, 0.05) so the adapters act."""
    from peft import LoraConfig, get_peft_model

    _, hf = make_pair(num_heads=num_heads, num_kv_heads=num_kv_heads)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=dropout,
                        target_modules=[TK_TO_PEFT_TARGET[t] for t in spec.targets], **lora_config)
    model = get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position of a ``[b, s, vocab]`` batch."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def logits_match_then_backward(tk, pm, *, seq_len: int, dropout_seed: int | None = None) -> None:
    """One random batch through the tunekit model ``tk`` and the PEFT model ``pm``: the logits agree
    to 1e-5, then both back-propagate the same token loss (the caller compares the gradients).
    ``dropout_seed``: both forwards draw their dropout masks from it (same module order)."""
    tokens = torch.randint(0, TINY["vocab_size"], (2, seq_len))
    labels = torch.randint(0, TINY["vocab_size"], (2, seq_len))
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    ref_logits = pm(tokens).logits
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    logits = tk(tokens)
    assert (logits - ref_logits).abs().max().item() <= 1e-5
    token_loss(ref_logits, labels).backward()
    token_loss(logits, labels).backward()
