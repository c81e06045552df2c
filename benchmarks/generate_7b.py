"""Decoding speed on the Llama-2-7B shape, batch 1, bf16, KV cache: tunekit vs HF generate.

One process holds one set of random weights: the tunekit model (built on meta, materialised
in bf16 on the device) and an HF ``LlamaForCausalLM`` loaded with the same weights through
tunekit's HF conversion (q/k permuted to rotate-half). Measured, each after a warm-up run:

- tunekit eager: ``tunekit.generation.TokenGenerator(model)`` — the code path of
  ``recipes/generate.py`` (eager prefill, then one ``model(token, input_pos=...)`` per new
  token over a static KV cache of ``prompt + new`` slots, on-device token pick, a host check
  for stop tokens every 8 steps);
- tunekit compiled: ``TokenGenerator(model, compile=True)`` — the same loop with the one-token
  step (forward + pick) under ``torch.compile(fullgraph=True, dynamic=False)``, mode
  ``reduce-overhead`` (CUDA graphs) on CUDA, ``default`` on the CPU (= ``compile=true`` in
  the recipe);
- with ``--sampling``, also the compiled step sampling (temperature 0.8, top-k 50, the
  recipe's defaults; on-device Gumbel-max with seeded hash noise): one more compilation;
- HF ``generate`` (eager, its default dynamic cache, ``do_sample=False``);
- with ``--int8`` (default on): the same tunekit rows after ``quantize=int8``
  (``tunekit.generation.quantize``: int8 weight-only linears, per-channel scales), whose
  bandwidth limit is that of the int8 bytes; and a perplexity column: bf16 vs int8 perplexity on
  a text (``--text``, default the bundled ``stories.txt``), which is the quality cost of int8.
  Random weights give meaningless absolute perplexities (the vocabulary size, about), so pass
  ``--checkpoint <HF Llama-2-7B dir>`` (config.json + safetensors + tokenizer files, local)
  to measure it on real weights with the checkpoint's own tokenizer.

Greedy decoding everywhere else, so the tokens can be compared with tunekit eager's. The
tunekit runs pass a stop token that never occurs (id = vocab size), so every run makes exactly
``--new-tokens`` tokens while paying the recipe's periodic stop check.

tokens/s = new tokens / wall time of the whole call (prefill included; compilation is done in
the warm-up and reported apart). The bandwidth limit is what batch-1 decoding cannot beat:
every weight byte is read once per token, so limit = HBM bandwidth / weight bytes
(``--hbm-tbps``, default 3.35 TB/s = H100 SXM datasheet; 13.5 GB of bf16 weights for the 7B
shape gives ~248 tokens/s).

    python benchmarks/generate_7b.py                      # 7B on CUDA, 256 new tokens (~3 min on an H100)
    python benchmarks/generate_7b.py --tiny --device cpu  # smoke run on the CPU
    python benchmarks/generate_7b.py --checkpoint /models/Llama-2-7b-hf --hbm-tbps 4.8   # real weights, H200
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SHAPE_7B, SHAPE_TINY, build_tunekit, env_line, hf_config, sync  # noqa: E402

from tunekit.generation import TokenGenerator  # noqa: E402


def timed(fn, device: str, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def decode_rows(model, a, run, tag: str) -> list:
    """tunekit eager (+ compiled) decoding rows: (name, seconds, tokens or None, compile s or None)."""
    device = a.device
    rows = []
    try:
        eager = TokenGenerator(model)
        run(eager, 4)  # warm-up
        t, eager_out = timed(lambda: run(eager, a.new_tokens), device, a.repeats)
        rows.append((f"tunekit eager{tag}", t, eager_out, None))
        print(f"tunekit eager{tag}: {a.new_tokens / t:.1f} tokens/s", flush=True)
    except Exception as e:  # the table still prints
        rows.append((f"tunekit eager{tag}", None, f"FAILED: {type(e).__name__}: {e}", None))
    if a.compile:
        variants = [("greedy", {})]
        if a.sampling:
            variants.append(("sampling T=0.8 top-k 50", dict(temperature=0.8, top_k=50)))
        compiled = TokenGenerator(model, compile=True)
        for label, sampling in variants:
            name = f"tunekit compiled ({compiled.compile_mode}{'' if not sampling else ', ' + label}){tag}"
            try:
                t0 = time.perf_counter()
                run(compiled, 8, **sampling)  # compile + CUDA-graph capture (compile_seconds), then 8 tokens
                run(compiled, 8, **sampling)
                compile_s = time.perf_counter() - t0
                t, out = timed(lambda s=sampling: run(compiled, a.new_tokens, **s), device, a.repeats)
                rows.append((name, t, None if sampling else out, compile_s))
                print(f"{name}: {a.new_tokens / t:.1f} tokens/s (compile + warm-up {compile_s:.0f} s)", flush=True)
            except Exception as e:
                rows.append((name, None, f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:200]}", None))
    return rows


def load_real_weights(model, path: str, device: str, dtype: torch.dtype):
    """Loads a local HF Llama-2 directory into ``model`` (strict); returns its tokenizer."""
    import tempfile

    from tunekit.generation import weights_checkpointer
    from tunekit.tokenizers import tokenizer_from_dir

    ck = weights_checkpointer(path, model_type="LLAMA2", output_dir=tempfile.mkdtemp())
    sd = {k: v.to(device=device, dtype=dtype) for k, v in ck.load_checkpoint()["model"].items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.init_buffers()
    return tokenizer_from_dir(path)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int) -> float:
    """exp(mean next-token loss) over ``ids`` in non-overlapping windows of ``window`` tokens."""
    total, n = 0.0, 0
    for i in range(0, ids.numel() - 1, window):
        chunk = ids[i:i + window + 1].unsqueeze(0)
        if chunk.shape[1] < 2:
            break
        logits = model(chunk[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum")
        total, n = total + float(loss), n + chunk.shape[1] - 1
    return math.exp(total / max(n, 1))


def text_ids(a, tokenizer, vocab: int, device: str) -> torch.Tensor:
    from pathlib import Path

    from tunekit.tokenizers import llama2_tokenizer

    assets = Path(__file__).resolve().parents[1] / "src" / "tunekit" / "assets"
    text = Path(a.text or assets / "text" / "stories.txt").read_text(encoding="utf-8")
    tok = tokenizer or llama2_tokenizer(str(assets / "tokenizer" / "tokenizer.model"))
    ids = tok.encode(text, add_bos=True, add_eos=False)[: a.ppl_tokens + 1]
    return torch.tensor(ids, device=device).clamp_(max=vocab - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="default 256 (tiny: 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tunekit system (median)")
    p.add_argument("--hf-repeats", type=int, default=1, help="timed HF generate runs (slow; default 1)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the compiled decode step (default: on)")
    p.add_argument("--sampling", action="store_true",
                   help="also measure compiled sampling (T=0.8, top-k 50; one more compile)")
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--hbm-tbps", type=float, default=3.35, help="HBM bandwidth, TB/s (default: H100 SXM)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure quantize=int8 (tokens/s and perplexity vs bf16; default: on)")
    p.add_argument("--checkpoint", default=None, help="a local HF Llama-2-7B dir: real weights and tokenizer")
    p.add_argument("--text", default=None, help="text for perplexity (default: the bundled stories.txt)")
    p.add_argument("--ppl-tokens", type=int, default=None, help="tokens scored (default 16384; tiny 512)")
    p.add_argument("--ppl-len", type=int, default=None, help="window length (default 1024; tiny 128)")
    p.add_argument("--coordinate-descent", action="store_true",
                   help="torch._inductor.config.coordinate_descent_tuning = True for the compiled rows")
    a = p.parse_args()
    a.new_tokens = a.new_tokens or (32 if a.tiny else 256)
    a.ppl_tokens = a.ppl_tokens or (512 if a.tiny else 16384)
    a.ppl_len = a.ppl_len or (128 if a.tiny else 1024)
    shape = SHAPE_TINY if a.tiny else SHAPE_7B
    device, dtype = a.device, torch.bfloat16
    cache_len = a.prompt_len + a.new_tokens
    torch.manual_seed(0)
    start = time.perf_counter()

    if a.coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    model, _ = build_tunekit(shape, cache_len, device, dtype, lora=False, max_seq_len=max(cache_len, 4096))
    tokenizer = None
    if a.checkpoint:
        tokenizer = load_real_weights(model, a.checkpoint, device, dtype)
    model.requires_grad_(False).eval()
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    # The cache the recipe's TokenGenerator would size for itself: exactly prompt + new slots.
    model.setup_caches(1, dtype, max_seq_len=cache_len)
    prompt = torch.randint(0, shape["vocab_size"], (1, a.prompt_len), device=device)
    never = [shape["vocab_size"]]  # a stop id outside the vocabulary: checked, never produced

    def run(gen: TokenGenerator, n: int, **sampling) -> torch.Tensor:
        kw = sampling or dict(temperature=0.0)
        res = gen.generate(prompt, max_new_tokens=n, stop_tokens=never, seed=0, **kw)
        assert res.steps == n, (res.steps, n)
        return torch.tensor(res.tokens)

    rows = decode_rows(model, a, run, "")
    model.remove_caches()

    if not a.no_hf:
        from transformers import LlamaForCausalLM

        from tunekit.models import get_model_type

        cfg = hf_config(shape, max(cache_len, 4096))
        cfg.use_cache = True
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                hf = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
        sd = get_model_type("LLAMA2").tunekit_to_hf(model.state_dict(), shape["num_heads"], shape["num_kv_heads"],
                                                     shape["embed_dim"])
        hf.load_state_dict(sd, strict=True)
        del sd
        hf.requires_grad_(False).eval()
        kw = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True, pad_token_id=0)

        def hf_gen(n: int) -> torch.Tensor:
            with torch.no_grad():
                out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
            return out[:, a.prompt_len:]

        hf_gen(4)  # warm-up
        t, hf_out = timed(lambda: hf_gen(a.new_tokens), device, a.hf_repeats)
        rows.append(("HF generate (eager)", t, hf_out, None))
        del hf  # its weights would stay beside the int8 copy
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    ppl = {}
    if a.int8:
        ids = text_ids(a, tokenizer, shape["vocab_size"], device)
        ppl["bf16"] = perplexity(model, ids, a.ppl_len)
        from tunekit.generation.quantize import quantize_int8_

        try:
            report = quantize_int8_(model)
            print(report.describe(), flush=True)
            ppl["int8"] = perplexity(model, ids, a.ppl_len)
            model.setup_caches(1, dtype, max_seq_len=cache_len)
            int8_rows = decode_rows(model, a, run, " [int8]")
            model.remove_caches()
            int8_bytes = report.bytes_after
            rows += int8_rows
        except Exception as e:
            rows.append(("tunekit [int8]", None, f"FAILED: {type(e).__name__}: {' '.join(str(e).split())[:200]}", None))
            int8_bytes = None

    limit = a.hbm_tbps * 1e12 / weight_bytes
    ref = rows[0][2] if not isinstance(rows[0][2], str) else None
    print(f"\n{'tiny' if a.tiny else 'Llama-2-7B'} shape, bf16, batch 1, prompt {a.prompt_len}, "
          f"{a.new_tokens} new tokens (greedy unless noted), KV cache {cache_len} slots, median of {a.repeats} "
          f"(HF: {a.hf_repeats}); "
          f"tunekit = tunekit.generation.TokenGenerator (the recipe's path)")
    print(env_line(device))
    print(f"command: python {' '.join(sys.argv)}  (whole run {time.perf_counter() - start:.0f} s)")
    print(f"bandwidth limit = {a.hbm_tbps:g} TB/s / {weight_bytes / 1e9:.2f} GB of weights = {limit:,.0f} tokens/s")
    if ppl:
        src = a.checkpoint or "random weights (absolute values meaningless; the gap is the int8 error)"
        print(f"perplexity on {a.text or 'stories.txt'} ({a.ppl_tokens} tokens, windows of {a.ppl_len}; {src}): "
              + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items())
              + (f"; int8 / bf16 = {ppl['int8'] / ppl['bf16']:.4f}" if "int8" in ppl else ""))
        if a.int8 and int8_bytes:
            print(f"int8 bandwidth limit = {a.hbm_tbps:g} TB/s / {int8_bytes / 1e9:.2f} GB = "
                  f"{a.hbm_tbps * 1e12 / int8_bytes:,.0f} tokens/s (the bf16 limit below is the one to beat)")
    print("| system | tokens/s | ms/token | % of bf16 bandwidth limit | tokens equal to tunekit eager | compile s "
          "| perplexity |")
    print("|---|---|---|---|---|---|---|")
    for name, t, out, cs in rows:
        p = ppl.get("int8" if "[int8]" in name else "bf16") if name.startswith("tunekit") else None
        p = "" if p is None else f"{p:.3f}"
        if t is None:
            print(f"| {name} | {out} | | | | | |")
            continue
        tps = a.new_tokens / t
        same = "—" if out is None or ref is None else \
            f"{int((out.cpu() == ref.cpu()).long().cumprod(-1).sum())}/{a.new_tokens}"
        print(f"| {name} | {tps:,.1f} | {1e3 * t / a.new_tokens:.2f} | {100 * tps / limit:.1f}% | "
              f"{same} | {'' if cs is None else f'{cs:.0f}'} | {p} |")
    by = {r[0]: a.new_tokens / r[1] for r in rows if r[1] is not None}
    hf_tps = by.get("HF generate (eager)")
    if hf_tps:
        for name, tps in by.items():
            if name.startswith("tunekit"):
                print(f"{name} / HF generate: {tps / hf_tps:.2f}x")


if __name__ == "__main__":
    main()
