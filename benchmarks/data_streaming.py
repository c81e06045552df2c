"""Tokenize + pack N generated Alpaca-style rows: streaming vs in memory (peak RSS, samples/s).

    python benchmarks/data_streaming.py                 # 1,000,000 rows (slow on 2 cores)
    python benchmarks/data_streaming.py --rows 100000   # a smaller N
    python benchmarks/data_streaming.py --format csv    # the rows as CSV (read through HF datasets)

Each mode runs in a fresh subprocess (so peak RSS is its own), with the bundled 512-piece
tokenizer and ``max_seq_len`` packing:

- ``in-memory``: ``InstructDataset`` (tokenized once into compact arrays; cache off) then
  ``PackedDataset`` (what ``packed=true`` builds);
- ``in-memory, cached``: the same with the tokenization cache filled by a previous run (the
  second run of a sweep);
- ``streaming``: ``StreamingDataset(pack=...)``: the counting pass a run makes at start (read,
  validate, tokenize, pack, report, digest) and then one epoch of iteration.

"+peak RSS" is peak RSS minus the RSS after imports. The table is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
         "of rare vintage and every river flows toward some distant sea under grey autumn skies").split()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int, fmt: str) -> None:
    """Deterministic Alpaca-style rows (instruction 8-30 words, input empty or 5-20, output 10-80)."""
    import random

    rng = random.Random(0)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    recs = ({"instruction": text(8, 30), "input": text(5, 20) if rng.random() < 0.4 else "",
             "output": text(10, 80)} for _ in range(rows))
    if fmt == "jsonl":
        with path.open("w") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    else:
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
            w.writeheader()
            w.writerows(recs)


def child(mode: str, path: str, max_seq_len: int) -> None:
    from tunekit.data import InstructDataset, PackedDataset, StreamingDataset
    from tunekit.tokenizers import tiny_tokenizer

    tok = tiny_tokenizer()
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "streaming":
        ds = StreamingDataset(tok, path, val_fraction=0.0, pack=max_seq_len, pad_id=tok.pad_id)
        t_count = time.perf_counter() - t0
        samples = ds.data_report.samples
        n = 0
        for _ in ds.epoch_samples(0):
            n += 1
        t_total = time.perf_counter() - t0
        packs = len(ds)
    else:
        cache = mode != "in-memory"
        inner = InstructDataset(tok, path, val_fraction=0.0, cache=cache, max_seq_len=max_seq_len)
        ds = PackedDataset(inner, max_seq_len, pad_id=tok.pad_id)
        t_count = t_total = time.perf_counter() - t0
        samples, packs = len(inner) + len(inner.dropped_rows), len(ds)
    print(json.dumps({"mode": mode, "samples": samples, "packs": packs, "seconds": t_count,
                      "seconds_with_epoch": t_total, "base_mb": base, "peak_mb": _peak_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--modes", default="memory,fill,cached,stream",
                   help="comma-separated: memory, fill (cache filled), cached (cache hit), stream (default: all)")
    p.add_argument("--workdir", default=None, help="where the generated file goes (default: a temp dir)")
    p.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.max_seq_len)
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / f"alpaca_{args.rows}.{args.format}"
        t0 = time.perf_counter()
        generate(path, args.rows, args.format)
        size = path.stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size:.0f} MB {args.format}) in {time.perf_counter() - t0:.0f}s",
              flush=True)
        env = {**os.environ, "TUNEKIT_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        results = []
        names = {"memory": "in-memory", "fill": "in-memory, cached (fill)", "cached": "in-memory, cached",
                 "stream": "streaming"}
        for mode in (names[m.strip()] for m in args.modes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--max-seq-len", str(args.max_seq_len),
                                  "--child", mode, str(path)], env=env, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"  {mode}: {res['seconds']:.1f}s", file=sys.stderr, flush=True)
    print(f"\n{args.rows:,} Alpaca-style rows, {args.format}, tiny tokenizer, packed to {args.max_seq_len}\n")
    print("| mode | rows/s (tokenize + pack) | s | s incl. one streamed epoch | +peak RSS MB | packs |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['samples'] / r['seconds']:,.0f} | {r['seconds']:.1f} "
              f"| {r['seconds_with_epoch']:.1f} | {r['peak_mb'] - r['base_mb']:,.0f} | {r['packs']:,} |")


if __name__ == "__main__":
    main()
