import math

import pytest
import torch

from tunekit.training.lr_schedulers import constant_with_warmup, cosine_with_warmup


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_values():
    lrs = _lrs(cosine_with_warmup(_opt(2.0), num_warmup_steps=4, num_training_steps=14), 16)
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    # halfway through the decay: half the base lr
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 10)))
    assert lrs[14] == pytest.approx(0.0, abs=1e-12)
    assert lrs[15] == pytest.approx(0.0, abs=1e-12)  # stays at the floor past the end


def test_cosine_min_lr_ratio():
    lrs = _lrs(cosine_with_warmup(_opt(1.0), 0, 10, min_lr_ratio=0.1), 12)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)


def test_constant_with_warmup():
    lrs = _lrs(constant_with_warmup(_opt(3.0), num_warmup_steps=3), 6)
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    assert _lrs(constant_with_warmup(_opt(3.0), 0, num_training_steps=5), 2) == [3.0, 3.0]


def test_state_dict_round_trip():
    s1 = cosine_with_warmup(_opt(), 2, 10)
    _lrs(s1, 5)
    s2 = cosine_with_warmup(_opt(), 2, 10)
    s2.optimizer.load_state_dict(s1.optimizer.state_dict())
    s2.load_state_dict(s1.state_dict())
    assert _lrs(s2, 3) == _lrs(s1, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_warmup_steps"):
        cosine_with_warmup(_opt(), -1, 10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        cosine_with_warmup(_opt(), 1, 10, min_lr_ratio=2.0)
