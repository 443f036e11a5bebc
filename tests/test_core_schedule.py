import pytest
import torch

from hvs_plugins import HVSSchedule


def test_every_k_and_start_epoch():
    s = HVSSchedule(every=3, start_epoch=2)
    assert [s.active(step, epoch=2) for step in range(7)] == [True, False, False, True, False, False, True]
    assert not any(s.active(step, epoch=1) for step in range(7))


def test_probability_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    s1, s2 = HVSSchedule(probability=0.5, seed=1), HVSSchedule(probability=0.5, seed=1)
    draws1 = [s1.active(i) for i in range(400)]
    assert draws1 == [s2.active(i) for i in range(400)]
    assert 150 < sum(draws1) < 250
    assert torch.equal(state, torch.random.get_rng_state())
    saved = s1.state_dict()
    nxt = [s1.active(i) for i in range(20)]
    s1.load_state_dict(saved)
    assert [s1.active(i) for i in range(20)] == nxt


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"probability": 1.5}, {"start_epoch": -1}])
def test_bad_schedule_is_a_clear_error(kwargs):
    with pytest.raises(ValueError):
        HVSSchedule(**kwargs)
