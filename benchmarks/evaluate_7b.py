"""Harness scoring speed on the Llama-2-7B shape, bf16: tunekit's `TunekitLM` vs lm-eval's `HFLM`.

One process holds one set of random weights: the tunekit model (built on meta, materialised in
bf16 on the device) and an HF ``LlamaForCausalLM`` given the same weights through tunekit's HF
conversion, wrapped by the harness's own ``HFLM`` (``pretrained=`` the model object). Both get
the same synthetic multiple-choice workload: ``--docs`` contexts of about ``--context`` tokens,
each with ``--choices`` continuations of a few tokens (``loglikelihood`` requests, what
hellaswag / arc / mmlu issue), at the same ``--batch-size``. Measured after a warm-up pass:

- requests/s and scored tokens/s (context + continuation tokens per second of wall time);
- the largest difference between the two systems' per-request log-likelihoods (bf16: expect
  ~1e-1 on random weights; the fp32 parity test in tests/evaluation holds them to 1e-4).

The tokenizer is the bundled tiny one (512 ids, all valid in the 32k vocabulary), so no files
are downloaded.

    python benchmarks/evaluate_7b.py                      # 7B on CUDA (~2 min on an H200)
    python benchmarks/evaluate_7b.py --tiny --device cpu  # smoke run on the CPU
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SHAPE_7B, SHAPE_TINY, build_tunekit, env_line, hf_config, sync  # noqa: E402

WORDS = ("the a llama cat river mountain quickly slowly green red runs eats sleeps under over near "
         "house garden small large bright dark water bread music story").split()


def workload(n_docs: int, context_words: int, choices: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_docs):
        ctx = " ".join(rng.choice(WORDS) for _ in range(context_words))
        for _ in range(choices):
            pairs.append((ctx, " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))))
    return pairs


def timed(lm, requests, device: str) -> tuple[float, list[tuple[float, bool]]]:
    sync(device)
    t0 = time.perf_counter()
    out = lm.loglikelihood(requests, disable_tqdm=True)
    sync(device)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--docs", type=int, default=None, help="contexts (default 256; tiny: 16)")
    p.add_argument("--context", type=int, default=200, help="words per context (~1.3 tokens each)")
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-hf", action="store_true")
    a = p.parse_args()
    a.docs = a.docs or (16 if a.tiny else 256)
    shape = SHAPE_TINY if a.tiny else SHAPE_7B
    device, dtype = a.device, torch.bfloat16
    torch.manual_seed(0)

    from lm_eval.api.instance import Instance

    from tunekit.evaluation import make_lm
    from tunekit.tokenizers import tokenizer_from_dir

    tok_dir = os.path.join(os.path.dirname(__file__), "..", "src", "tunekit", "assets", "tiny_llama2", "hf")
    model, _ = build_tunekit(shape, 4096, device, dtype, lora=False, max_seq_len=4096)
    model.requires_grad_(False).eval()
    pairs = workload(a.docs, a.context, a.choices)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=x, idx=i) for i, x in enumerate(pairs)]
    ours = make_lm(model, tokenizer_from_dir(tok_dir), batch_size=a.batch_size)
    n_tokens = sum(len(ours.tok_encode(c + x)) for c, x in pairs)
    ours.loglikelihood(requests[: a.batch_size], disable_tqdm=True)  # warm-up
    rows = [("tunekit TunekitLM", *timed(ours, requests, device))]
    print(f"tunekit: {len(requests) / rows[-1][1]:.1f} requests/s", flush=True)

    if not a.no_hf:
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoTokenizer, LlamaForCausalLM

        from tunekit.models import get_model_type

        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                hf = LlamaForCausalLM(hf_config(shape, 4096))
        finally:
            torch.set_default_dtype(prev)
        sd = get_model_type("LLAMA2").tunekit_to_hf(model.state_dict(), shape["num_heads"], shape["num_kv_heads"],
                                                     shape["embed_dim"])
        hf.load_state_dict(sd, strict=True)
        del sd, model, ours
        hf.requires_grad_(False).eval()
        theirs = HFLM(pretrained=hf, tokenizer=AutoTokenizer.from_pretrained(tok_dir), batch_size=a.batch_size,
                      device=device, dtype="bfloat16")
        theirs.loglikelihood(requests[: a.batch_size], disable_tqdm=True)
        rows.append(("lm-eval HFLM (transformers)", *timed(theirs, requests, device)))

    print(f"\n{env_line(device)}; {len(requests)} loglikelihood requests ({a.docs} contexts x {a.choices} "
          f"choices, {n_tokens} tokens), batch {a.batch_size}, bf16")
    print("| system | wall s | requests/s | tokens/s | max |dlogprob| vs tunekit |")
    print("|---|---|---|---|---|")
    ref = rows[0][2]
    for name, secs, out in rows:
        diff = max(abs(x[0] - y[0]) for x, y in zip(out, ref))
        print(f"| {name} | {secs:.2f} | {len(requests) / secs:.1f} | {n_tokens / secs:.0f} | {diff:.3g} |")
    if len(rows) == 2:
        print(f"\ntunekit / HFLM speed: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
