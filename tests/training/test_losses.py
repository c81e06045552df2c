import pytest
import torch
from _training_helpers import TinyLM, collate, make_samples

from tunekit.training.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss


def _loss_and_grads(loss_fn, model, batch):
    model.zero_grad(set_to_none=True)
    loss_sum, n = loss_fn(model, batch)
    (loss_sum / n).backward()
    return loss_sum.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("num_chunks,checkpoint_chunks,select", [(1, False, True), (3, True, True), (8, True, True), (8, False, True), (3, True, False)])
def test_chunked_equals_full(num_chunks, checkpoint_chunks, select):
    torch.manual_seed(0)
    model = TinyLM()
    batch = collate(make_samples(6, seed=3))
    ref_loss, ref_n, ref_grads = _loss_and_grads(CrossEntropyLoss(), model, batch)
    loss, n, grads = _loss_and_grads(
        ChunkedCrossEntropyLoss(num_chunks=num_chunks, checkpoint_chunks=checkpoint_chunks,
                                select_positions=select), model, batch
    )
    assert n == ref_n == batch["labels"].ne(-100).sum()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6)


def test_loss_is_token_sum():
    torch.manual_seed(0)
    model = TinyLM()
    batch = collate(make_samples(4, seed=4))
    loss_sum, n = CrossEntropyLoss()(model, batch)
    logits = model(batch["tokens"])
    mean = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
    torch.testing.assert_close(loss_sum / n, mean)


def test_chunked_bf16_model_upcasts_inside_chunk():
    torch.manual_seed(0)
    model = TinyLM().to(torch.bfloat16)
    batch = collate(make_samples(4, seed=5))
    loss_sum, n = ChunkedCrossEntropyLoss(num_chunks=4)(model, batch)
    assert loss_sum.dtype == torch.float32 and torch.isfinite(loss_sum)
    ref, _ = CrossEntropyLoss()(model, batch)
    torch.testing.assert_close(loss_sum, ref, rtol=1e-2, atol=1e-2)


def test_all_ignored_gives_zero():
    model = TinyLM()
    batch = {"tokens": torch.ones(2, 5, dtype=torch.long), "labels": torch.full((2, 5), -100)}
    for fn in (CrossEntropyLoss(), ChunkedCrossEntropyLoss()):
        loss_sum, n = fn(model, batch)
        assert float(loss_sum.detach()) == 0.0 and int(n) == 0


def test_real_llama_chunked_equals_full():
    llama2 = pytest.importorskip("tunekit.models.llama2")
    torch.manual_seed(0)
    try:
        model = llama2.llama2(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              embed_dim=32, intermediate_dim=64, max_seq_len=32)
    except Exception as err:  # the model is built by another team; skip while in flux
        pytest.skip(f"llama2 builder not usable yet: {err}")
    tokens = torch.randint(0, 64, (2, 10))
    labels = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], 1)
    labels[:, :3] = -100
    batch = {"tokens": tokens, "labels": labels}
    ref_loss, _, ref_grads = _loss_and_grads(CrossEntropyLoss(), model, batch)
    loss, _, grads = _loss_and_grads(ChunkedCrossEntropyLoss(num_chunks=3), model, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
