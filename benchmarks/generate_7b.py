"""Greedy decoding speed on the Llama-2-7B shape, batch 1, bf16, KV cache: tunekit vs HF generate.

One process holds one set of random weights: the tunekit model (built on meta, materialised
in bf16 on the GPU) and an HF ``LlamaForCausalLM`` loaded with the same weights through
tunekit's HF conversion (q/k permuted to rotate-half). Measured, each after a warm-up run:

- tunekit eager: prefill the prompt, then one ``model(token, input_pos=...)`` per new token
  over a static KV cache of ``prompt + new`` slots (the decode loop is written here:
  ``tunekit.generation`` does not exist yet);
- tunekit compiled: the same loop with the per-token step (forward + argmax) under
  ``torch.compile(mode="reduce-overhead", fullgraph=True)`` (CUDA graphs; static shapes);
- HF ``generate`` (eager, its default dynamic cache, ``do_sample=False``).

tokens/s = new tokens / wall time of the whole generation (prefill included). The bandwidth
limit is what batch-1 decoding cannot beat: every weight byte is read once per token, so
limit = HBM bandwidth / weight bytes (``--hbm-tbps``, default 3.35 TB/s = H100 SXM datasheet;
13.5 GB of bf16 weights for the 7B shape gives ~248 tokens/s).

    python benchmarks/generate_7b.py                      # 7B, 256 new tokens (~2-3 min on an H100 incl. compile)
    python benchmarks/generate_7b.py --tiny --device cpu  # smoke run on the CPU (no compile)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SHAPE_7B, SHAPE_TINY, build_tunekit, env_line, hf_config, sync  # noqa: E402


def tunekit_generate(model, prompt: torch.Tensor, n_new: int, step) -> torch.Tensor:
    """Greedy decode ``n_new`` tokens after ``prompt`` ([1, P]); returns [1, n_new]."""
    p = prompt.shape[1]
    model.reset_caches()
    pos = torch.arange(p, device=prompt.device).unsqueeze(0)
    tok = model(prompt, input_pos=pos)[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    out = [tok]
    input_pos = torch.full((1, 1), p, dtype=torch.long, device=prompt.device)
    for _ in range(n_new - 1):
        tok = step(tok, input_pos).clone()  # clone: a CUDA-graph output is overwritten next replay
        out.append(tok)
        input_pos += 1
    return torch.cat(out, dim=1)


def timed(fn, device: str, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="default 256 (tiny: 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per system (median)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure the compiled decode step (default: on for CUDA)")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--hbm-tbps", type=float, default=3.35, help="HBM bandwidth, TB/s (default: H100 SXM)")
    a = p.parse_args()
    a.new_tokens = a.new_tokens or (32 if a.tiny else 256)
    if a.compile is None:
        a.compile = a.device.startswith("cuda")
    shape = SHAPE_TINY if a.tiny else SHAPE_7B
    device, dtype = a.device, torch.bfloat16
    cache_len = a.prompt_len + a.new_tokens
    torch.manual_seed(0)

    model, _ = build_tunekit(shape, cache_len, device, dtype, lora=False, max_seq_len=max(cache_len, 4096))
    model.requires_grad_(False).eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    model.setup_caches(1, dtype, max_seq_len=cache_len)
    prompt = torch.randint(0, shape["vocab_size"], (1, a.prompt_len), device=device)

    def decode(tok: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return model(tok, input_pos=input_pos)[:, -1].argmax(-1, keepdim=True)

    rows = []
    with torch.no_grad():
        tunekit_generate(model, prompt, 4, decode)  # warm-up
        t, eager_out = timed(lambda: tunekit_generate(model, prompt, a.new_tokens, decode), device, a.repeats)
        rows.append(("tunekit eager", t, eager_out, None))
        print(f"tunekit eager: {a.new_tokens / t:.1f} tokens/s", flush=True)
        if a.compile:
            step = torch.compile(decode, mode="reduce-overhead", fullgraph=True)
            t0 = time.perf_counter()
            tunekit_generate(model, prompt, 8, step)  # compile + CUDA-graph capture
            tunekit_generate(model, prompt, 8, step)
            sync(device)
            compile_s = time.perf_counter() - t0
            t, comp_out = timed(lambda: tunekit_generate(model, prompt, a.new_tokens, step), device, a.repeats)
            rows.append(("tunekit compiled (reduce-overhead)", t, comp_out, compile_s))
            print(f"tunekit compiled: {a.new_tokens / t:.1f} tokens/s (compile {compile_s:.0f} s)", flush=True)

        if not a.no_hf:
            from transformers import LlamaForCausalLM

            from tunekit.models.llama2._convert import tunekit_to_hf

            cfg = hf_config(shape, max(cache_len, 4096))
            cfg.use_cache = True
            prev = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                with torch.device(device):
                    hf = LlamaForCausalLM(cfg)
            finally:
                torch.set_default_dtype(prev)
            sd = tunekit_to_hf(model.state_dict(), shape["num_heads"], shape["num_kv_heads"], shape["embed_dim"])
            hf.load_state_dict(sd, strict=True)
            del sd
            hf.requires_grad_(False).eval()
            kw = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True, pad_token_id=0)

            def hf_gen(n: int) -> torch.Tensor:
                out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
                return out[:, a.prompt_len:]

            hf_gen(4)  # warm-up
            t, hf_out = timed(lambda: hf_gen(a.new_tokens), device, a.repeats)
            rows.append(("HF generate (eager)", t, hf_out, None))

    limit = a.hbm_tbps * 1e12 / weight_bytes
    ref = rows[0][2]
    print(f"\n{'tiny' if a.tiny else 'Llama-2-7B'} shape, bf16, batch 1, prompt {a.prompt_len}, "
          f"{a.new_tokens} new tokens (greedy), KV cache {cache_len} slots, median of {a.repeats}")
    print(env_line(device))
    print(f"bandwidth limit = {a.hbm_tbps:g} TB/s / {weight_bytes / 1e9:.2f} GB of weights = {limit:,.0f} tokens/s")
    print("| system | tokens/s | ms/token | % of bandwidth limit | tokens equal to tunekit eager | compile s |")
    print("|---|---|---|---|---|---|")
    for name, t, out, cs in rows:
        tps = a.new_tokens / t
        same = int((out.cpu() == ref.cpu()).long().cumprod(-1).sum())
        print(f"| {name} | {tps:,.1f} | {1e3 * t / a.new_tokens:.2f} | {100 * tps / limit:.1f}% | "
              f"{same}/{a.new_tokens} | {'' if cs is None else f'{cs:.0f}'} |")
    by = {r[0]: a.new_tokens / r[1] for r in rows}
    hf_tps = by.get("HF generate (eager)")
    if hf_tps:
        for name, tps in by.items():
            if name.startswith("tunekit"):
                print(f"{name} / HF generate: {tps / hf_tps:.2f}x")


if __name__ == "__main__":
    main()
