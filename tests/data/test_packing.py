"""PackedDataset / packed_collate: exact layout, block-causal mask, and loss equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunekit.data import InstructDataset, PackedDataset, block_causal_mask, packed_collate, padded_collate
from tunekit.tokenizers import tiny_tokenizer

IGN = -100


def _sample(tokens: list[int]) -> dict[str, list[int]]:
    return {"tokens": tokens, "labels": tokens[1:] + [IGN]}


DOCS = [_sample([1, 11, 12]), _sample([1, 21, 22, 23]), _sample([1, 31]), _sample([1, 41, 42, 43, 44])]


def test_greedy_packing_exact() -> None:
    packed = PackedDataset(DOCS, max_seq_len=8, pad_id=0)
    assert len(packed) == 2
    assert packed[0] == {
        "tokens": [1, 11, 12, 1, 21, 22, 23, 0],
        "labels": [11, 12, IGN, 21, 22, 23, IGN, IGN],
        "input_pos": [0, 1, 2, 0, 1, 2, 3, 0],
        "seq_lens": [3, 4, 1],
    }
    assert packed[1] == {
        "tokens": [1, 31, 1, 41, 42, 43, 44, 0],
        "labels": [31, IGN, 41, 42, 43, 44, IGN, IGN],
        "input_pos": [0, 1, 0, 1, 2, 3, 4, 0],
        "seq_lens": [2, 5, 1],
    }
    # A sample longer than max_seq_len is cut and keeps its true targets.
    long = PackedDataset([_sample(list(range(1, 8)))], max_seq_len=4, pad_id=0)
    assert long[0] == {"tokens": [1, 2, 3, 4], "labels": [2, 3, 4, 5], "input_pos": [0, 1, 2, 3], "seq_lens": [4]}


def test_packing_real_samples_in_order() -> None:
    ds = InstructDataset(tiny_tokenizer(), "alpaca_tiny", split="val")
    packed = PackedDataset(ds, max_seq_len=512)
    assert packed.pad_id == 2  # from ds.tokenizer.pad_id
    samples = [ds[i] for i in range(len(ds))]
    # Greedy reference: fill a pack while the next sample fits.
    groups: list[list[dict]] = [[]]
    for smp in samples:
        if sum(len(x["tokens"]) for x in groups[-1]) + len(smp["tokens"]) > 512:
            groups.append([])
        groups[-1].append(smp)
    assert len(packed) == len(groups) == 11
    for pack, group in zip(packed, groups):
        pad = 512 - sum(len(x["tokens"]) for x in group)
        assert pack["tokens"] == [t for x in group for t in x["tokens"]] + [2] * pad
        assert pack["labels"] == [t for x in group for t in x["labels"]] + [IGN] * pad
        assert pack["seq_lens"] == [len(x["tokens"]) for x in group] + ([pad] if pad else [])


def test_block_causal_mask_exact() -> None:
    m = block_causal_mask([2, 3, 1]).int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    batch = packed_collate(list(PackedDataset(DOCS, max_seq_len=8, pad_id=0)), dense_mask=True)
    assert batch["mask"].shape == (2, 8, 8) and batch["mask"].dtype == torch.bool
    assert torch.equal(batch["mask"][1], block_causal_mask([2, 5, 1]))
    assert torch.equal(batch["input_pos"][0], torch.tensor([0, 1, 2, 0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="one length"):
        packed_collate([{"tokens": [1], "labels": [IGN], "input_pos": [0], "seq_lens": [1]},
                        {"tokens": [1, 2], "labels": [2, IGN], "input_pos": [0, 1], "seq_lens": [2]}])


# ---- loss equivalence: packed batch == the same samples unpacked -----------------------------


class _TinyCausalLM(torch.nn.Module):
    """Self-contained check model: absolute positions from input_pos, one SDPA attention layer."""

    def __init__(self, vocab: int = 512, dim: int = 32, heads: int = 4, max_pos: int = 512) -> None:
        super().__init__()
        self.heads = heads
        self.emb = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(max_pos, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, tokens, *, mask=None, input_pos=None):
        b, s = tokens.shape
        if input_pos is None:
            input_pos = torch.arange(s).expand(b, s)
        h = self.emb(tokens) + self.pos(input_pos)
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x [b, h, s, d]
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.out(h + a.transpose(1, 2).reshape(b, s, -1))


def _tunekit_llama2():
    llama2 = pytest.importorskip("tunekit.models.llama2").llama2
    return llama2(vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
                  intermediate_dim=64, max_seq_len=256)


def _samples() -> list[dict[str, list[int]]]:
    # Real instruction samples, cut to 40 tokens with the loss on every token so that every
    # position (both sides of each document boundary) is compared.
    ds = InstructDataset(tiny_tokenizer(), "alpaca_tiny", split="all", max_seq_len=40, train_on_input=True)
    return [ds[i] for i in range(7)]


def _per_token_losses(model, samples, max_seq_len):
    """(unpacked per-token losses, packed per-token losses), both in document order."""
    unpacked = []
    for s in samples:
        b = padded_collate([s], pad_id=2)
        logits = model(b["tokens"])
        loss = F.cross_entropy(logits[0], b["labels"][0], ignore_index=IGN, reduction="none")
        unpacked.append(loss[b["labels"][0] != IGN])
    packed_ds = PackedDataset(samples, max_seq_len=max_seq_len, pad_id=2)
    batch = packed_collate([packed_ds[i] for i in range(len(packed_ds))], dense_mask=True)
    logits = model(batch["tokens"], mask=batch["mask"], input_pos=batch["input_pos"])
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGN, reduction="none")
    packed = loss[batch["labels"].flatten() != IGN]
    nomask = model(batch["tokens"])  # negative control: no document isolation, no position reset
    loss_nomask = F.cross_entropy(nomask.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGN, reduction="none")
    return torch.cat(unpacked), packed, loss_nomask[batch["labels"].flatten() != IGN], len(packed_ds)


@pytest.mark.parametrize("make_model", [_TinyCausalLM, _tunekit_llama2], ids=["sdpa_reference", "tunekit_llama2"])
def test_packed_loss_equals_unpacked(make_model) -> None:
    torch.manual_seed(0)
    model = make_model().eval()
    samples = _samples()
    assert all(len(s["tokens"]) == 40 for s in samples)
    with torch.no_grad():
        unpacked, packed, nomask, n_packs = _per_token_losses(model, samples, max_seq_len=128)
    assert n_packs == 3  # 3 + 3 + 1 documents of 40 tokens, padded to 128
    assert unpacked.shape == packed.shape == (7 * 40,)  # truncated: the last label is kept
    torch.testing.assert_close(packed, unpacked, rtol=0, atol=1e-5)
    assert math.isclose(packed.mean().item(), unpacked.mean().item(), rel_tol=1e-6)
    assert (nomask - unpacked).abs().max() > 1e-3  # the mask and input_pos really matter
