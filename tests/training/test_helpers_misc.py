import random

import numpy as np
import pytest
import torch
from _training_helpers import TinyLM, collate, make_samples

from tunekit.training.activation_checkpointing import apply_activation_checkpointing, is_checkpointed
from tunekit.training.compile import compile_loss, compile_model
from tunekit.training.device import get_device
from tunekit.training.losses import ChunkedCrossEntropyLoss, CrossEntropyLoss
from tunekit.training.memory import memory_stats
from tunekit.training.precision import get_dtype
from tunekit.training.seed import get_rng_state, set_rng_state, set_seed


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trip_is_plain_data():
    import json

    set_seed(123)
    state = get_rng_state()
    json.dumps(state)  # plain data: saves as JSON or with torch.save(weights_only loads)
    first = _draw()
    _draw()
    set_rng_state(json.loads(json.dumps(state)))
    assert _draw() == first


def test_selective_activation_checkpointing_keeps_names_and_values():
    torch.manual_seed(0)
    model = TinyLM(num_layers=4)
    batch = collate(make_samples(4))
    ref = CrossEntropyLoss()(model, batch)[0]
    keys = list(model.state_dict())
    assert apply_activation_checkpointing(model, every_k_layers=2) == [0, 2]
    assert [is_checkpointed(layer) for layer in model.layers] == [True, False, True, False]
    assert apply_activation_checkpointing(model, every_k_layers=2) == [0, 2]  # idempotent
    assert list(model.state_dict()) == keys
    out = CrossEntropyLoss()(model, batch)[0]
    torch.testing.assert_close(out, ref)
    out.backward()


def test_matmul_preserving_checkpointing_runs():
    torch.manual_seed(0)
    model = TinyLM()
    apply_activation_checkpointing(model, save_matmuls=True)
    loss, _ = CrossEntropyLoss()(model, collate(make_samples(2)))
    loss.backward()
    assert model.layers[0].fc1.weight.grad is not None


def test_compile_switch_keeps_names():
    torch.manual_seed(0)
    model = TinyLM()
    keys = list(model.state_dict())
    assert compile_model(model, enabled=False) is model
    compile_model(model, backend="eager")
    loss_fn = compile_loss(ChunkedCrossEntropyLoss(num_chunks=2), backend="eager")
    batch = collate(make_samples(2))
    loss, _ = loss_fn(model, batch)
    loss.backward()
    assert list(model.state_dict()) == keys


def test_device_and_dtype():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type in ("cpu", "cuda")
    assert get_dtype("bf16") is torch.bfloat16 and get_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="loss scaling"):
        get_dtype("fp16")
    with pytest.raises(ValueError, match="one of"):
        get_dtype("int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")
    assert memory_stats(torch.device("cpu")) == {}


def test_compile_after_full_checkpointing_keeps_checkpoint_outside_the_graph():
    from torch.utils.checkpoint import checkpoint as _ckpt  # noqa: F401

    torch.manual_seed(0)
    ref_model = TinyLM(num_layers=2)
    model = TinyLM(num_layers=2)
    model.load_state_dict(ref_model.state_dict())
    batch = collate(make_samples(2))
    apply_activation_checkpointing(model)
    compile_model(model, backend="aot_eager")
    compile_model(model, backend="aot_eager")  # idempotent
    for layer in model.layers:
        assert is_checkpointed(layer)
        inner = layer.forward.args[0]  # partial(_checkpointed_forward, compiled body, False)
        assert inner is not layer._tunekit_inner_forward and not layer.forward.args[1]
    ref, _ = CrossEntropyLoss()(ref_model, batch)
    out, _ = CrossEntropyLoss()(model, batch)
    torch.testing.assert_close(out, ref)
    ref.backward()
    out.backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert list(model.state_dict()) == list(ref_model.state_dict())
