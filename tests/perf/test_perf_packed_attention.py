"""Packed rows without a dense mask: doc_ids through sdpa / varlen / flex equal the dense-mask path."""

from __future__ import annotations

import pytest
import torch

from tunekit.data import PackedDataset, packed_collate
from tunekit.models.llama2 import init_on_device, llama2
from tunekit.modules.attention import (
    VarlenDocuments,
    cu_seqlens_from_doc_ids,
    dense_document_mask,
    resolve_attention,
    varlen_attention,
)
from tunekit.training.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss

IGN = -100


def _model(num_kv_heads: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        m = llama2(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads, embed_dim=32,
                   intermediate_dim=64, max_seq_len=64)
    init_on_device(m, "cpu", dtype=torch.float32)
    return m


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    docs = []
    for n in (5, 9, 3, 12, 7, 4, 10):
        toks = torch.randint(3, 64, (n,), generator=g).tolist()
        labels = toks[1:] + [IGN]
        labels[0] = IGN  # a prompt position
        docs.append({"tokens": toks, "labels": labels})
    ds = PackedDataset(docs, max_seq_len=24, pad_id=0)
    return packed_collate([ds[i] for i in range(len(ds))], dense_mask=True)


def _loss_and_grads(model, batch, loss_fn):
    model.zero_grad(set_to_none=True)
    loss, n = loss_fn(model, batch)
    (loss / n).backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_collate_gives_doc_ids_and_offsets_matching_the_dense_mask() -> None:
    b = _batch()
    assert b["doc_ids"].shape == b["tokens"].shape and b["cu_seqlens"].dtype == torch.int32
    assert torch.equal(dense_document_mask(b["doc_ids"]), b["mask"])
    assert torch.equal(cu_seqlens_from_doc_ids(b["doc_ids"]), b["cu_seqlens"])
    s = b["tokens"].shape[1]
    assert b["cu_seqlens"][0] == 0 and b["cu_seqlens"][-1] == b["tokens"].numel()
    assert set(range(0, b["tokens"].numel(), s)) <= set(b["cu_seqlens"].tolist())  # every row starts a doc
    assert "mask" not in packed_collate([PackedDataset([{"tokens": [1, 2], "labels": [2, IGN]}], 4)[0]])


@pytest.mark.parametrize("loss_cls", [CrossEntropyLoss, ChunkedCrossEntropyLoss])
@pytest.mark.parametrize("kv", [4, 2], ids=["mha", "gqa"])
def test_doc_ids_paths_equal_the_dense_mask_loss_and_grads(loss_cls, kv) -> None:
    model, batch = _model(kv), _batch()
    dense = {k: v for k, v in batch.items() if k not in ("doc_ids", "cu_seqlens")}
    packed = {k: v for k, v in batch.items() if k != "mask"}
    ref_loss, ref_grads = _loss_and_grads(model, dense, loss_cls())
    model.set_attention("auto")  # CPU: the dense mask built from doc_ids, bit for bit today's
    loss, grads = _loss_and_grads(model, packed, loss_cls())
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)
    model.set_attention("varlen")  # per-document attention (flash varlen's CPU stand-in)
    for p in (packed, {k: v for k, v in packed.items() if k != "cu_seqlens"}):
        loss, grads = _loss_and_grads(model, p, loss_cls())
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        for k in ref_grads:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
    # negative control: without document isolation the loss differs
    nomask = {k: v for k, v in packed.items() if k not in ("doc_ids", "cu_seqlens")}
    with torch.no_grad():
        assert not torch.allclose(loss_cls()(model, nomask)[0], ref_loss, rtol=1e-4)


def test_flex_block_mask_forward_equals_the_dense_mask() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    model, batch = _model(2), _batch()
    with torch.no_grad():
        ref = model(batch["tokens"], mask=batch["mask"], input_pos=batch["input_pos"])
        model.set_attention("flex")
        out = model(batch["tokens"], doc_ids=batch["doc_ids"], input_pos=batch["input_pos"])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="flex.*CPU"):  # no CPU backward in torch: refused clearly
        model(batch["tokens"], doc_ids=batch["doc_ids"], input_pos=batch["input_pos"])


def test_auto_picks_flash_varlen_on_cuda_bf16_and_dense_on_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attention("auto", device=cpu, dtype=torch.bfloat16, head_dim=128) == "sdpa"
    assert resolve_attention("auto", device=cuda, dtype=torch.bfloat16, head_dim=128) == "varlen"
    assert resolve_attention("auto", device=cuda, dtype=torch.float32, head_dim=128) == "flex"
    assert resolve_attention("flex", device=cpu, dtype=torch.float32, head_dim=128) == "flex"
    with pytest.raises(ValueError, match="attention='dense' is not one of"):
        resolve_attention("dense", device=cpu, dtype=torch.float32, head_dim=64)
    with pytest.raises(ValueError, match="not one of"):
        _model().set_attention("flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["varlen", "flex"])
def test_cuda_document_attention_matches_dense_bf16(impl) -> None:
    torch.manual_seed(0)
    b, s, n, kv, hd = 2, 256, 8, 2, 64
    lens = [[40, 100, 116], [256]]
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(x)), torch.tensor(x)) for x in lens]).cuda()
    q = torch.randn(b, s, n, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, s, kv, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, s, kv, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = dense_document_mask(doc_ids).unsqueeze(1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float().repeat_interleave(n // kv, 1),
        v.transpose(1, 2).float().repeat_interleave(n // kv, 1), attn_mask=mask).transpose(1, 2)
    if impl == "varlen":
        out = varlen_attention(q, k, v, VarlenDocuments(cu_seqlens_from_doc_ids(doc_ids), s))
    else:
        from tunekit.modules.attention import flex_document_attention, flex_document_mask

        out = flex_document_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                      flex_document_mask(doc_ids)).transpose(1, 2)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_the_attention_setting_reaches_the_model_and_is_validated() -> None:
    from tunekit.run.settings import train_settings
    from tunekit.training import prepare_model

    model = _model()
    prepare_model(model, train_settings(device="cpu", attention="varlen"))
    assert model.attention == "varlen"
    with pytest.raises(ValueError, match="attention must be one of auto, sdpa, flex, varlen, got 'dense'"):
        prepare_model(model, train_settings(device="cpu", attention="dense"))


@pytest.mark.parametrize("api", ["window_size+enable_gqa", "is_causal"])
def test_flash_varlen_call_adapts_to_the_torch_release(monkeypatch, api) -> None:
    """torch's varlen_attn keywords changed across releases; the call adapts (checked with a stand-in kernel)."""
    from tunekit.modules import attention

    seen = {}

    def window_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False):
        seen.update(window_size=window_size, enable_gqa=enable_gqa, kv_heads=k.shape[1])
        return attention._varlen_reference(q, k, v, cu_q)

    def causal_kernel(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):
        seen.update(is_causal=is_causal, kv_heads=k.shape[1])
        return attention._varlen_reference(q, k, v, cu_q)

    kernel = window_kernel if api.startswith("window") else causal_kernel
    import inspect

    monkeypatch.setattr(attention, "_VARLEN", [(kernel, frozenset(inspect.signature(kernel).parameters))])
    batch = _batch()
    b, s = batch["tokens"].shape
    torch.manual_seed(0)
    q, k, v = torch.randn(b * s, 4, 8), torch.randn(b * s, 2, 8), torch.randn(b * s, 2, 8)
    docs = VarlenDocuments(batch["cu_seqlens"], s)
    out = attention._flash_varlen(q, k, v, docs)
    torch.testing.assert_close(out, attention._varlen_reference(q, k, v, batch["cu_seqlens"]))
    if api.startswith("window"):
        assert seen == {"window_size": (-1, 0), "enable_gqa": True, "kv_heads": 2}
    else:
        assert seen == {"is_causal": True, "kv_heads": 4}  # K/V heads repeated for an API without GQA
