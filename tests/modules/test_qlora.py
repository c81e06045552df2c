"""QLoRA's NF4 base: the format against an independent reference of the paper's, and the layers'
forward/gradients against LoRA on the dequantized weights (plain, dropout, DoRA, disabled,
activation checkpointing, compile), the whole-model helpers and the merges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchao")

from tunekit.models.llama2 import llama2  # noqa: E402
from tunekit.modules.peft import (  # noqa: E402
    NF4_CODE,
    LoRALinear,
    LoRASpec,
    NF4Linear,
    dequantize,
    get_adapter_state_dict,
    get_merged_state_dict,
    is_nf4,
    merge_lora_weights_,
    quantize_base_,
    quantize_nf4,
    quantized_base_names,
    set_trainable_params,
)
from tunekit.modules.peft._nf4 import require_torchao  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _reference_nf4(w: torch.Tensor, block: int = 64, scaler_block: int = 256) -> torch.Tensor:
    """The QLoRA storage format written from its description (not from torchao's code): each
    block of 64 values is ``code[i] * absmax``, ``i`` the nearest entry of the NF4 table; the
    absmax values, their mean removed, are stored as int8 in blocks of 256 with the factor
    ``256 / (2 * max|.|)`` of their block (torchao's double quantization)."""
    code = torch.tensor(NF4_CODE, dtype=torch.float64).round(decimals=4).to(w.dtype)  # torchao keeps 4 decimals
    blocks = w.flatten().view(-1, block)
    absmax = blocks.abs().max(dim=1).values
    idx = (blocks / absmax[:, None]).unsqueeze(-1).sub(code).abs().argmin(-1)
    mean = absmax.mean()
    centred = (absmax - mean).view(-1, scaler_block)
    factor = 256 / (2 * centred.abs().max(dim=1).values)
    q = (centred * factor[:, None]).round().clamp(-128, 127)
    scales = (q / factor[:, None]).flatten().to(w.dtype) + mean
    return (code[idx] * scales[:, None]).view_as(w)


def test_code_table_is_the_papers():
    nf4 = require_torchao()
    table = nf4.to_nf4(torch.randn(64, 256)).nf4.double()
    torch.testing.assert_close(table, torch.tensor(NF4_CODE, dtype=torch.float64), atol=5e-5, rtol=0)
    assert table[7] == 0 and table[0] == -1 and table[15] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_dequantize_equals_the_reference_format(dtype):
    torch.manual_seed(0)
    w = (torch.randn(128, 256) * 0.02).to(dtype)
    q = quantize_nf4(w)
    assert is_nf4(q) and not is_nf4(w) and q.shape == w.shape and q.dtype == dtype
    assert q.block_size == 64 and q.scaler_block_size == 256
    assert q.quantized_data.dtype == torch.uint8 and q.quantized_data.numel() == w.numel() // 2  # 4 bits
    assert q.quantized_scalers.dtype == torch.int8
    torch.testing.assert_close(dequantize(q), _reference_nf4(w), atol=0, rtol=0)
    assert dequantize(q, torch.float32).dtype == torch.float32
    # Lossy as 4 bits are: close to the input, and a fixed point of quantize(dequantize(.)).
    assert (dequantize(q).float() - w.float()).abs().max() < 0.3 * w.float().abs().max()


def test_odd_shapes_use_a_smaller_scaler_block_and_non_multiples_are_refused():
    q = quantize_nf4(torch.randn(352, 128))  # 704 blocks: 256 does not divide, 176 does
    assert q.scaler_block_size == 176
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_nf4(torch.randn(3, 7))


def test_sharded_format_splits_into_whole_blocks_equal_to_rows_of_the_whole():
    # FSDP2 cuts an NF4 weight into equal row chunks: each must hold whole scaler blocks, and its
    # dequantized values must be the matching rows of the whole weight's.
    torch.manual_seed(0)
    w = torch.randn(128, 128)
    q = quantize_nf4(w, shards=2)
    assert q.scaler_block_size == 128  # 256 blocks: 256 would not split in two; 128 does
    parts = torch.chunk(q, 2, dim=0)
    torch.testing.assert_close(torch.cat([dequantize(p) for p in parts]), dequantize(q), atol=0, rtol=0)
    with torch.device("meta"):  # published shapes keep the paper's 256 for 1-8 ranks
        for shards in (1, 2, 4, 8):
            assert quantize_nf4(torch.empty(11008, 4096), shards=shards).scaler_block_size == 256
            assert quantize_nf4(torch.empty(1024, 4096), shards=shards).scaler_block_size == 256
    with pytest.raises(ValueError, match="split into 3 equal row shards"):
        quantize_nf4(torch.randn(128, 128), shards=3)


def test_sharded_qlora_over_a_rank_count_that_does_not_divide_the_widths_is_one_paragraph():
    from functools import partial

    from tunekit.config import ConfigError
    from tunekit.models.llama2 import llama2_tiny
    from tunekit.run.model import build_training_model
    from tunekit.run.settings import train_settings

    spec = LoRASpec(rank=4, alpha=8.0, targets=["q_proj", "v_proj"], quantize_base="nf4")
    with pytest.raises(ConfigError) as err:  # refused on the meta device, before any collective
        build_training_model(partial(llama2_tiny), None, settings=train_settings(device="cpu"), lora=spec,
                             world_size=3, rank=0)
    text = str(err.value)
    assert "lora.quantize_base=nf4 over 3 ranks" in text and "use a number of GPUs" in text and "\n" not in text


def _pair(use_dora=False, dropout=0.0, bias=False):
    torch.manual_seed(0)
    lin = LoRALinear(128, 96, rank=4, alpha=8.0, dropout=dropout, bias=bias, use_dora=use_dora)
    with torch.no_grad():
        lin.lora_b.weight.normal_(std=0.1)
    lin.weight.requires_grad_(False)
    if bias:
        lin.bias.requires_grad_(False)
    q = LoRALinear(128, 96, rank=4, alpha=8.0, dropout=dropout, bias=bias, use_dora=use_dora)
    q.load_state_dict(lin.state_dict())
    q.weight.requires_grad_(False)
    if bias:
        q.bias.requires_grad_(False)
    q.quantize_base_()
    with torch.no_grad():  # the reference: plain LoRA on the dequantized weight
        lin.weight.copy_(dequantize(q.weight))
    return lin, q


@pytest.mark.parametrize("use_dora,dropout,bias", [(False, 0.0, False), (False, 0.0, True), (False, 0.1, False),
                                                   (True, 0.0, False), (True, 0.1, True)])
def test_qlora_forward_and_grads_equal_lora_on_the_dequantized_weight(use_dora, dropout, bias):
    ref, q = _pair(use_dora, dropout, bias)
    assert q.quantized and is_nf4(q.weight) and not q.weight.requires_grad
    x = torch.randn(2, 5, 128)
    xr, xq = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(1)
    out_r = ref(xr)
    torch.manual_seed(1)
    out_q = q(xq)
    torch.testing.assert_close(out_q, out_r, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(out_r)
    out_r.backward(g)
    out_q.backward(g)
    torch.testing.assert_close(xq.grad, xr.grad, atol=1e-6, rtol=1e-5)
    for name, p in q.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, dict(ref.named_parameters())[name].grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(q.merged_weight(), ref.merged_weight(), atol=0, rtol=0)
    q.disabled = True
    torch.testing.assert_close(q(x), F.linear(x, ref.weight, ref.bias))


def test_backward_keeps_the_nf4_weight_not_a_full_precision_copy():
    _, q = _pair()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        q(torch.randn(4, 128, requires_grad=True)).sum().backward()
    assert any(is_nf4(t) for t in saved)
    assert not any(tuple(t.shape) == (96, 128) and not is_nf4(t) for t in saved)


def _tiny(spec):
    torch.manual_seed(0)
    m = llama2(vocab_size=128, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, intermediate_dim=128,
               max_seq_len=64, lora=spec)
    for mod in m.modules():
        if isinstance(mod, LoRALinear):
            torch.nn.init.normal_(mod.lora_b.weight, std=0.05)
    set_trainable_params(m)
    return m


def _dequantized_copy(spec, q):
    ref = _tiny(spec)
    with torch.no_grad():
        sd = q.state_dict()
        for n, p in ref.named_parameters():
            p.copy_(dequantize(sd[n]).to(p.dtype))
    return ref


@pytest.mark.parametrize("use_dora", [False, True])
def test_whole_model_quantize_merge_and_checkpointing(use_dora):
    from tunekit.training.activation_checkpointing import apply_activation_checkpointing

    spec = LoRASpec(rank=4, targets=["q_proj", "v_proj", "w2"], use_dora=use_dora, quantize_base="nf4")
    q = _tiny(spec)
    plain_keys = set(q.state_dict())
    names = quantize_base_(q)
    # every projection of every layer (adapted or frozen), never embeddings / norms / output
    assert sorted(names) == sorted(f"layers.{i}.{p}" for i in range(2) for p in (
        "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "mlp.w1", "mlp.w2", "mlp.w3"))
    assert quantized_base_names(q) == names and quantize_base_(q) == []  # idempotent
    assert isinstance(q.layers[0].attn.k_proj, NF4Linear) and set(q.state_dict()) == plain_keys
    assert not is_nf4(q.output.weight) and not is_nf4(q.tok_embeddings.weight)
    assert all(p.requires_grad == ("lora" in n) for n, p in q.named_parameters())

    ref = _dequantized_copy(spec, q)
    apply_activation_checkpointing(q)
    tokens = torch.randint(0, 128, (2, 12))
    lq, lr = q(tokens), ref(tokens)
    torch.testing.assert_close(lq, lr, atol=1e-5, rtol=1e-5)
    lq.square().mean().backward()
    lr.square().mean().backward()
    grads_r = dict(ref.named_parameters())
    for n, p in q.named_parameters():
        if p.requires_grad:
            key = n.replace("._checkpoint_wrapped_module", "")
            torch.testing.assert_close(p.grad, grads_r[key].grad, atol=1e-6, rtol=1e-4)

    merged = get_merged_state_dict(q)  # merge_base=dequantized: plain tensors, plain keys
    assert not any(is_nf4(v) for v in merged.values())
    assert set(k.replace("._checkpoint_wrapped_module", "") for k in merged) == {
        k for k in plain_keys if "lora" not in k}
    adapter = get_adapter_state_dict(q)
    assert adapter and all("lora" in k for k in adapter)
    with torch.no_grad():
        plain = merge_lora_weights_(ref)
        torch.testing.assert_close(plain(tokens), lq.detach(), atol=1e-5, rtol=1e-5)


def test_compiles_with_the_nf4_base():
    ref, q = _pair()
    x = torch.randn(3, 128)
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)  # one graph: no break at the NF4 weight
    xq = x.clone().requires_grad_()
    out = compiled(xq)
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=1e-5)
    out.sum().backward()
    assert xq.grad is not None and q.lora_a.weight.grad is not None


def test_spec_refuses_unknown_quantization_and_merge_base():
    with pytest.raises(ValueError, match="quantize_base.*nf8") as err:
        LoRASpec(quantize_base="nf8", merge_base="both")
    assert "merge_base" in str(err.value)
    assert LoRASpec(quantize_base="nf4").merge_base == "dequantized"


def test_fresh_dora_adapter_on_the_nf4_base_starts_as_that_base():
    # the magnitude is the row norm of the dequantized base (PEFT's DoRA init on a 4-bit base), so
    # before training the model equals the quantized base (DPO: policy == reference, loss log 2)
    from tunekit.modules.peft import disable_adapters

    torch.manual_seed(0)
    q = llama2(vocab_size=128, num_layers=1, num_heads=4, num_kv_heads=2, embed_dim=64, intermediate_dim=128,
               max_seq_len=64, lora=LoRASpec(rank=4, targets=["q_proj", "w2"], use_dora=True, quantize_base="nf4"))
    quantize_base_(q)
    tokens = torch.randint(0, 128, (2, 12))
    with torch.no_grad(), disable_adapters(q):
        base = q(tokens)
    torch.testing.assert_close(q(tokens).detach(), base, atol=1e-6, rtol=0)
    m = q.layers[0].attn.q_proj
    torch.testing.assert_close(m.lora_magnitude.detach(), torch.linalg.norm(dequantize(m.weight).float(), dim=1))
