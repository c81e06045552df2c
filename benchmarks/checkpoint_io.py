"""Peak RSS and wall time to load and to save a synthetic Llama-shaped checkpoint (HF and Meta).

    python benchmarks/checkpoint_io.py                      # bf16, ~1.07 GB per format
    python benchmarks/checkpoint_io.py --dtype fp32         # same shapes, ~2.1 GB
    python benchmarks/checkpoint_io.py --layers 4 --dim 1024  # smaller, for a quick look

Each measurement runs in a fresh subprocess so peaks do not leak between rows. Peak RSS is
VmHWM from /proc (reset between load and save via /proc/self/clear_refs), falling back to
``resource.getrusage``. "base" is the RSS after imports (torch); "+peak" is peak minus base.
The ``raw`` rows are the peer: reading the same files with safetensors / torch.load and no
conversion, the floor a loader can reach. Temp files live under --workdir and are deleted.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 10**9


def _rss_peak() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _rss_peak()


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _shapes(a: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    hd = a.dim // a.heads
    f = a.ffn
    s = {"tok_embeddings.weight": (a.vocab, a.dim), "norm.scale": (a.dim,), "output.weight": (a.vocab, a.dim)}
    for i in range(a.layers):
        p = f"layers.{i}."
        s |= {p + "attn.q_proj.weight": (a.heads * hd, a.dim), p + "attn.k_proj.weight": (a.kv_heads * hd, a.dim),
              p + "attn.v_proj.weight": (a.kv_heads * hd, a.dim), p + "attn.output_proj.weight": (a.dim, a.dim),
              p + "sa_norm.scale": (a.dim,), p + "mlp_norm.scale": (a.dim,), p + "mlp.w1.weight": (f, a.dim),
              p + "mlp.w2.weight": (a.dim, f), p + "mlp.w3.weight": (f, a.dim)}  # fmt: skip
    return s


def _generate(a: argparse.Namespace, work: Path) -> None:
    """Write the synthetic checkpoint in HF (sharded safetensors) and Meta (.pth) form, tensor by tensor."""
    import torch
    from safetensors.torch import save_file

    from tunekit.models import get_model_type

    mt = get_model_type("LLAMA2")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    g = torch.Generator().manual_seed(0)
    shapes = _shapes(a)
    hf, meta = work / "hf", work / "meta"
    hf.mkdir()
    meta.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.dim,
              "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
              "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "rms_norm_eps": 1e-5,
              "torch_dtype": "bfloat16" if a.dtype == "bf16" else "float32", "tie_word_embeddings": False}  # fmt: skip
    (hf / "config.json").write_text(json.dumps(config))
    params = {"dim": a.dim, "n_layers": a.layers, "n_heads": a.heads, "n_kv_heads": a.kv_heads, "vocab_size": -1,
              "norm_eps": 1e-5}
    (meta / "params.json").write_text(json.dumps(params))
    # HF shards of <= shard_bytes, written one at a time.
    heads = (a.heads, a.kv_heads, a.dim)
    shard: dict = {}
    size, n, wmap = 0, 0, {}
    keys = list(shapes)

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        hf_sd = mt.tunekit_to_hf(shard, *heads)
        save_file(hf_sd, str(hf / name))
        wmap.update({k: name for k in hf_sd})
        shard, size = {}, 0

    meta_sd = {}
    for k in keys:
        t = (torch.randn(shapes[k], generator=g) * 0.02).to(dtype)
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > a.shard_bytes:
            flush()
        shard[k] = t
        size += nbytes
        meta_sd[k] = t
    flush()
    total = sum(math.prod(s) for s in shapes.values())
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    torch.save(mt.tunekit_to_meta(meta_sd), meta / "consolidated.00.pth")
    print(f"# synthetic checkpoint: {total / 1e6:.0f}M params, {a.dtype}, "
          f"{sum(f.stat().st_size for f in hf.glob('*.safetensors')) / GB:.2f} GB per format", flush=True)


def _worker(kind: str, fmt: str, work: Path) -> dict:
    import torch

    from tunekit.checkpointing import FullModelHFCheckpointer, FullModelMetaCheckpointer

    base = _rss_now()
    _reset_peak()
    out = work / f"out_{fmt}"
    if kind == "raw":
        t0 = time.perf_counter()
        if fmt == "hf":
            from safetensors.torch import load_file

            sd = {}
            for f in sorted((work / "hf").glob("*.safetensors")):
                sd.update(load_file(f))
        else:
            sd = torch.load(work / "meta" / "consolidated.00.pth", weights_only=True, mmap=False)
        checksum = sum(float(t.sum()) for t in sd.values())  # touch every page, as below
        return {"checksum": checksum, "load_s": time.perf_counter() - t0, "load_peak": _rss_peak(), "base": base}
    cls = FullModelHFCheckpointer if fmt == "hf" else FullModelMetaCheckpointer
    ckpt = cls(work / fmt, out)
    t0 = time.perf_counter()
    sd = ckpt.load_checkpoint()["model"]
    # Touch every tensor so mmap-backed loads are counted like copying ones (what load_state_dict does).
    checksum = sum(float(t.sum()) for t in sd.values())
    load_s, load_peak = time.perf_counter() - t0, _rss_peak()
    can_reset = _reset_peak()
    t0 = time.perf_counter()
    ckpt.save_checkpoint({"model": sd}, epoch=0)
    save_s = time.perf_counter() - t0
    return {"load_s": load_s, "load_peak": load_peak, "save_s": save_s,
            "save_peak": _rss_peak() if can_reset else None, "base": base, "checksum": checksum}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5504)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shard-bytes", type=int, default=400 * 10**6, help="input HF shard size")
    p.add_argument("--workdir", type=Path, default=None, help="where temp checkpoints go (deleted)")
    p.add_argument("--_worker", nargs=3, metavar=("KIND", "FMT", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._worker:
        print(json.dumps(_worker(a._worker[0], a._worker[1], Path(a._worker[2]))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="tunekit-ckpt-bench-", dir=a.workdir))
    try:
        _generate(a, work)
        size = sum(f.stat().st_size for f in (work / "hf").glob("*.safetensors"))
        rows = []
        for fmt in ("hf", "meta"):
            for kind in ("raw", "tunekit"):
                r = subprocess.run([sys.executable, __file__, "--_worker", kind, fmt, str(work)],
                                   capture_output=True, text=True, check=False)  # fmt: skip
                if r.returncode:
                    print(r.stderr, file=sys.stderr)
                    return 1
                rows.append((fmt, kind, json.loads(r.stdout.strip().splitlines()[-1])))
                shutil.rmtree(work / f"out_{fmt}", ignore_errors=True)
        print(f"\ncheckpoint: {size / GB:.2f} GB ({a.dtype}); RSS in GB; base = RSS after imports\n")
        print("| format | reader | load s | load +peak RSS | save s | save +peak RSS | base RSS |")
        print("|---|---|---|---|---|---|---|")
        for fmt, kind, r in rows:
            fmt_name = "HF safetensors (sharded)" if fmt == "hf" else "Meta consolidated.00.pth"
            reader = "raw (peer: no conversion)" if kind == "raw" else "tunekit checkpointer"
            save = f"{r['save_s']:.2f}" if "save_s" in r else "-"
            speak = f"{(r['save_peak'] - r['base']) / GB:.2f}" if r.get("save_peak") else "-"
            print(f"| {fmt_name} | {reader} | {r['load_s']:.2f} | {(r['load_peak'] - r['base']) / GB:.2f} | "
                  f"{save} | {speak} | {r['base'] / GB:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
