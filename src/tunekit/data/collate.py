"""Batch collation: right-padded batches and packed batches with a block-causal mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

CROSS_ENTROPY_IGNORE_IDX = -100


def _as_list(x: Any) -> list[int]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def padded_collate(
    batch: Sequence[Mapping[str, Any]], pad_id: int, ignore_index: int = CROSS_ENTROPY_IGNORE_IDX
) -> dict[str, torch.Tensor]:
    """Right-pad ``tokens`` with ``pad_id`` and ``labels`` with ``ignore_index`` to the longest sample.

    Args:
        batch: samples ``{"tokens": list[int], "labels": list[int]}`` of equal length each.
        pad_id: token id written into padded positions.
        ignore_index: label of padded positions.

    Returns:
        ``{"tokens": LongTensor[b, s], "labels": LongTensor[b, s]}``.
    """
    if not batch:
        raise ValueError("padded_collate() got an empty batch")
    toks = [_as_list(s["tokens"]) for s in batch]
    labs = [_as_list(s["labels"]) for s in batch]
    for i, (t, lab) in enumerate(zip(toks, labs)):
        if len(t) != len(lab):
            raise ValueError(f"sample {i} of the batch has {len(t)} tokens but {len(lab)} labels")
    s = max(len(t) for t in toks)
    tokens = torch.full((len(batch), s), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), s), ignore_index, dtype=torch.long)
    for i, (t, lab) in enumerate(zip(toks, labs)):
        tokens[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    return {"tokens": tokens, "labels": labels}


def block_causal_mask(seq_lens: Sequence[int]) -> torch.Tensor:
    """Bool[s, s] mask, True where query i may attend key j: same document and j <= i."""
    lens = torch.as_tensor(_as_list(seq_lens), dtype=torch.long)
    doc = torch.repeat_interleave(torch.arange(len(lens)), lens)  # [s] document index
    s = doc.numel()
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    return (doc[:, None] == doc[None, :]) & causal


def packed_collate(batch: Sequence[Mapping[str, Any]], *, dense_mask: bool = False) -> dict[str, torch.Tensor]:
    """Stack packed samples (from ``PackedDataset``) with what attention needs to keep documents apart.

    The model attends block-causally within documents from ``doc_ids`` without a dense mask
    (``TransformerDecoder.set_attention``: flash varlen or flex attention on CUDA), so a batch
    costs memory linear in its length. ``dense_mask=True`` adds today's ``[b, s, s]`` mask
    (which the model then uses instead).

    Returns:
        ``tokens``, ``labels``, ``input_pos``: LongTensor[b, s]; ``doc_ids``: LongTensor[b, s], the
        document index of each position within its row; ``cu_seqlens``: IntTensor[n_docs + 1],
        the documents' offsets in the flattened ``[b * s]`` batch (flash varlen's input);
        with ``dense_mask``, ``mask``: BoolTensor[b, s, s], True where attention is allowed
        (SDPA convention), each document seeing only itself.
    """
    if not batch:
        raise ValueError("packed_collate() got an empty batch")
    lengths = {len(_as_list(s["tokens"])) for s in batch}
    if len(lengths) != 1:
        raise ValueError(f"packed_collate() needs samples of one length, got lengths {sorted(lengths)}")
    out = {k: torch.tensor([_as_list(s[k]) for s in batch], dtype=torch.long)
           for k in ("tokens", "labels", "input_pos")}
    row_len = out["tokens"].shape[1]
    seq_lens = [_as_list(s["seq_lens"]) for s in batch]
    for i, lens in enumerate(seq_lens):
        if sum(lens) != row_len or any(n < 1 for n in lens):
            raise ValueError(f"sample {i}: seq_lens {lens} must be positive and add up to its length {row_len}")
    out["doc_ids"] = torch.stack([torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
                                  for lens in seq_lens])
    flat = torch.tensor([n for lens in seq_lens for n in lens], dtype=torch.int32)
    out["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int32), flat.cumsum(0, dtype=torch.int32)])
    if dense_mask:
        out["mask"] = torch.stack([block_causal_mask(lens) for lens in seq_lens])
    return out
