"""``tunekit data preview RECIPE [overrides]``: what a recipe will train on, before it trains.

The config is composed and checked exactly as the recipe does (same overrides, same schema), the
tokenizer and the data sets are built by the recipe's own functions (``tunekit.run.data.
build_datasets``), and the first samples are printed as text with the trained tokens marked
(green on a terminal, ``[[...]]`` otherwise), followed by the counts: samples, tokens, samples
truncated / dropped, target tokens, a token-length histogram and, with ``packed=true``, the
packing efficiency.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_GREEN, _RESET = "\033[32m", "\033[0m"
_IGNORE = -100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunekit data",
        description="Look at the data a recipe trains on (same config, same code as the recipe).")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = sub.add_parser("preview", help="the first samples with the trained tokens marked, and the counts",
                       description="tunekit data preview lora_finetune dataset=alpaca dataset.source=data.csv")
    q.add_argument("recipe", help="recipe name (see `tunekit ls`) or a YAML config file")
    q.add_argument("--samples", "-n", type=int, default=3, help="samples to print (default 3)")
    q.add_argument("--split", choices=("train", "validation"), default="train")
    q.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="mark trained tokens in green (auto: on a terminal) or with [[...]]")
    q.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value, group=option (as for the recipe)")
    return p


def _pieces(tokenizer: Any, tokens: Sequence[int]) -> list[str]:
    """Each token's text, by decoding growing prefixes (so spaces and multi-byte characters stay right)."""
    out, prev = [], ""
    specials = {getattr(tokenizer, "bos_id", None): "<bos>", getattr(tokenizer, "eos_id", None): "<eos>"}
    for k, t in enumerate(tokens):
        if t in specials and specials[t] is not None and t is not None:
            out.append(specials[t])
            continue
        text = tokenizer.decode([x for x in tokens[: k + 1] if x not in specials])
        out.append(text[len(prev):] if text.startswith(prev) else text)
        prev = text
    return out


def render_sample(tokenizer: Any, tokens: Sequence[int], labels: Sequence[int], *, color: bool) -> str:
    """The sample's text, trained tokens (those some position predicts) marked."""
    trained = [False] + [lab != _IGNORE for lab in labels[:-1]]
    pieces = _pieces(tokenizer, list(tokens))
    out, inside = [], False
    for piece, on in zip(pieces, trained):
        if on != inside:
            out.append((_GREEN if on else _RESET) if color else ("[[" if on else "]]"))
            inside = on
        out.append(piece)
    if inside:
        out.append(_RESET if color else "]]")
    return "".join(out)


def _documents(sample: dict[str, Any], pad_id: int) -> list[tuple[list[int], list[int]]]:
    """A sample's documents (a pack is split by ``seq_lens``; its padding left out)."""
    tokens, labels = list(sample["tokens"]), list(sample["labels"])
    lens = list(sample.get("seq_lens") or [len(tokens)])
    docs, at = [], 0
    for n in lens:
        t, lab = tokens[at:at + n], labels[at:at + n]
        at += n
        if all(x == _IGNORE for x in lab) and all(x == pad_id for x in t) and len(docs):
            continue  # the pack's padding
        docs.append((t, lab))
    return docs


def _histogram(lengths: Sequence[int], width: int = 40, bins: int = 8) -> list[str]:
    """Text bars of how many samples fall in each length range (between the shortest and longest)."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - lo) // step)] += 1
    peak = max(counts) or 1
    return [f"  {lo + i * step:>7}-{lo + (i + 1) * step - 1:<7} {c:>7}  {'#' * round(width * c / peak)}".rstrip()
            for i, c in enumerate(counts) if lo + i * step <= hi]


def _packing_efficiency(ds: Any, pad_id: int) -> float:
    real = total = 0
    for i in range(len(ds)):
        s = ds[i]
        total += len(s["tokens"])
        real += sum(len(t) for t, _ in _documents(s, pad_id))
    return real / total if total else 0.0


def _lengths(ds: Any) -> list[int]:
    inner = getattr(ds, "dataset", ds)
    masks = getattr(inner, "target_masks", None)
    if callable(masks):
        return [len(m) for m in masks()]
    return [len(inner[i]["tokens"]) for i in range(len(inner))]


def _report(ds: Any, tokenizer: Any, *, n: int, color: bool, packed: bool, name: str) -> None:
    from tunekit.data import data_report

    rep = data_report(ds)
    pad_id = int(getattr(tokenizer, "pad_id", 0) or 0)
    shown = 0
    for i in range(len(ds)):
        for tokens, labels in _documents(ds[i], pad_id):
            if shown == n:
                break
            where = ""
            rows = getattr(getattr(ds, "dataset", ds), "rows", None)
            if not packed and isinstance(rows, list) and i < len(rows):
                where = f" ({getattr(ds, 'row_word', 'row')} {rows[i]})"
            print(f"--- {name} sample {shown + 1}{where}: {len(tokens)} tokens, "
                  f"{sum(lab != _IGNORE for lab in labels)} trained")
            print(render_sample(tokenizer, tokens, labels, color=color))
            shown += 1
        if shown == n:
            break
    print(f"--- counts of {rep.source or 'the ' + name + ' split'}:")
    print(f"  samples: {rep.samples} ({rep.truncated} truncated at max_seq_len={rep.max_seq_len}, {rep.dropped} "
          f"dropped: no target token left)")
    print(f"  tokens: {rep.total_tokens} ({rep.target_tokens} trained); 95% of samples fit in {rep.len_for_95pct}")
    if packed:
        print(f"  packed: {len(ds)} packs of {getattr(ds, 'max_seq_len', '?')} tokens, packing efficiency "
              f"{100 * _packing_efficiency(ds, pad_id):.1f}% (non-padding positions)")
    lengths = _lengths(ds)
    if lengths:
        print("  token lengths (before truncation):   count")
        for line in _histogram(lengths):
            print(line)
    for warning in rep.warnings():
        print(f"tunekit: warning: {warning}", file=sys.stderr)


def _report_pairs(ds: Any, tokenizer: Any, *, n: int, color: bool, name: str) -> None:
    """The DPO recipes' preview: each pair's chosen and rejected sequence (reply tokens marked), then counts."""
    for i in range(min(n, len(ds))):
        s = ds[i]
        print(f"--- {name} pair {i + 1} ({ds.row_word} {ds.rows[i]})")
        for side in ("chosen", "rejected"):
            tokens, labels = s[f"{side}_tokens"], s[f"{side}_labels"]
            print(f"  {side}: {len(tokens)} tokens, {sum(lab != _IGNORE for lab in labels)} trained")
            print(render_sample(tokenizer, tokens, labels, color=color))
    lengths = [len(ds[i][f"{side}_tokens"]) for i in range(len(ds)) for side in ("chosen", "rejected")]
    print(f"--- counts of {str(ds.source)!r} ({name} split):")
    print(f"  pairs: {len(ds)} ({ds.truncated} truncated at max_seq_len={ds.max_seq_len}, {len(ds.dropped_rows)} "
          f"dropped: a reply cut away entirely)")
    print(f"  tokens: {sum(lengths)} in {len(lengths)} sequences (chosen and rejected)")
    if lengths:
        print("  token lengths (chosen and rejected):   count")
        for line in _histogram(lengths):
            print(line)


def _preview(args: argparse.Namespace) -> int:
    from tunekit.cli.main import _recipe_and_overrides, _split_hydra_flags
    from tunekit.config import ConfigError, config_problems, instantiate
    from tunekit.config.entrypoint import compose_with_hydra
    from tunekit.config.validate import format_problems

    recipe, items = _recipe_and_overrides(args)
    if recipe is None:
        return 1
    overrides, config_dir, config_name = _split_hydra_flags(items)
    problems: list[str] = []
    try:
        cfg, node = compose_with_hydra(recipe, overrides, user_config_dir=config_dir, config_name=config_name,
                                       collect=problems)
    except ConfigError as exc:
        print(f"tunekit data preview: {exc}", file=sys.stderr)
        return 1
    problems += config_problems(cfg, recipe, node)
    if problems:
        print(format_problems(problems, f"Invalid `{recipe}` config"), file=sys.stderr)
        return 1
    if "dataset" not in cfg or "tokenizer" not in cfg:
        print(f"tunekit data preview: the `{recipe}` recipe trains on no data set (no `dataset` in its config).",
              file=sys.stderr)
        return 1
    from tunekit.run import data
    from tunekit.run.errors import user_errors

    try:
        with user_errors():
            tokenizer = instantiate(cfg.tokenizer)
            validation = args.split == "validation"
            if validation and not cfg.dataset.get("val_fraction", 0):
                raise ConfigError("--split validation: dataset.val_fraction is 0, so there is no validation "
                                  "split; set dataset.val_fraction=0.1 (or preview the train split).")
            if "dpo" in cfg:  # the DPO recipes' own data path: pairs of a chosen and a rejected reply
                from tunekit.run import preference

                pairs = preference.build_preference_datasets(instantiate(cfg.dataset), tokenizer,
                                                             validation=validation)
                _report_pairs(pairs[1] if validation else pairs[0], tokenizer, n=max(0, args.samples),
                              color=args.color == "always" or (args.color == "auto" and sys.stdout.isatty()),
                              name=args.split)
                return 0
            train_ds, val_ds = data.build_datasets(instantiate(cfg.dataset), tokenizer, validation=validation,
                                                   packed=bool(cfg.packed), max_seq_len=int(cfg.max_seq_len))
    except ConfigError as exc:
        print(f"tunekit data preview: {exc}", file=sys.stderr)
        return 1
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    ds = val_ds if validation else train_ds
    _report(ds, tokenizer, n=max(0, args.samples), color=color, packed=bool(cfg.packed) and not validation,
            name=args.split)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``tunekit data ...``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    rest, it = [], iter(args.overrides)
    for item in it:  # our flags may also come after the recipe, among the overrides
        name, eq, value = item.partition("=")
        if name in ("--samples", "-n", "--split", "--color"):
            value = value if eq else next(it, "")
            if name in ("--samples", "-n"):
                if not value.isdigit():
                    print(f"tunekit data preview: --samples wants a whole number >= 0 (the samples to print, "
                          f"e.g. -n 5), got {value!r}.", file=sys.stderr)
                    return 1
                args.samples = int(value)
            elif name == "--split" and value in ("train", "validation"):
                args.split = value
            elif name == "--color" and value in ("auto", "always", "never"):
                args.color = value
            else:
                print(f"tunekit data preview: {name} {value!r} is not valid (see `tunekit data preview -h`).",
                      file=sys.stderr)
                return 1
        else:
            rest.append(item)
    args.overrides = rest
    return _preview(args)


if __name__ == "__main__":
    sys.exit(main())
