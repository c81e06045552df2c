import pytest
from _training_helpers import collate, make_samples

from tunekit.training.data_loading import StatefulSampler, build_dataloader


def test_order_depends_on_seed_and_epoch_only():
    a, b = StatefulSampler(10, seed=3), StatefulSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b) and sorted(b) == list(range(10))
    assert list(StatefulSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_state_round_trip_mid_epoch():
    s = StatefulSampler(11, seed=7)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_index=4)
    state = s.state_dict()
    t = StatefulSampler(11, seed=0)
    t.load_state_dict(state)
    assert list(t) == full[4:]
    assert list(t) == list(t.epoch_indices())  # the skip applies to one iteration only


def test_changed_dataset_is_refused():
    state = StatefulSampler(10).state_dict()
    with pytest.raises(ValueError, match="num_samples: checkpoint has 10, this run has 12"):
        StatefulSampler(12).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_partition(drop_last):
    shards = [StatefulSampler(10, seed=1, rank=r, world_size=3, drop_last=drop_last) for r in range(3)]
    got = [list(s) for s in shards]
    assert len({len(g) for g in got}) == 1
    flat = sorted(i for g in got for i in g)
    if drop_last:
        assert len(flat) == 9 and len(set(flat)) == 9
    else:
        assert set(flat) == set(range(10)) and len(flat) == 12


def test_build_dataloader_resume_position():
    loader = build_dataloader(make_samples(10), 3, collate, shuffle=True, seed=5)
    loader.sampler.set_epoch(1)
    batches = [b["tokens"].tolist() for b in loader]
    loader.sampler.set_epoch(1, start_index=2 * 3)
    assert [b["tokens"].tolist() for b in loader] == batches[2:]
    assert len(loader) == 4
