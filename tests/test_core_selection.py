"""Pairs, argmax selection with its tie/non-finite rules, gathering, multi-crop search."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvs_plugins import (
    CombinationSpace,
    Combinations,
    all_pairs,
    argmax_with_fallback,
    cross_pairs,
    gather_pair,
    gather_views,
    make_pairs,
    select_hardest,
)


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_all_pairs_counts(n):
    pairs = all_pairs(n)
    assert pairs.shape == (math.comb(n, 2), 2)
    assert len({tuple(p) for p in pairs.tolist()}) == math.comb(n, 2)
    assert bool((pairs[:, 0] < pairs[:, 1]).all())
    assert all_pairs(n, ordered=True).shape == (n * (n - 1), 2)


def test_cross_pairs_keep_pipelines_apart():
    pairs = cross_pairs([[0, 2], [1, 3]])
    assert pairs.tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]
    with pytest.raises(ValueError, match="partition"):
        make_pairs(4, [[0, 1], [1, 2]])


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_n_views_below_two_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="n_views must be >= 2"):
        all_pairs(bad)


finite_floats = st.floats(min_value=-5, max_value=5, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 6), st.data())
def test_argmax_property(p, m, data):
    # Values from a small set, so ties are common.
    values = data.draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0, float("nan"), float("inf")]), min_size=p * m, max_size=p * m))
    losses = torch.tensor(values).reshape(p, m)
    index, fallback = argmax_with_fallback(losses, torch.Generator().manual_seed(0))
    for i in range(m):
        col = losses[:, i].tolist()
        finite = [j for j, v in enumerate(col) if math.isfinite(v)]
        if not finite:
            assert bool(fallback[i]) and 0 <= int(index[i]) < p
            continue
        best = max(col[j] for j in finite)
        assert not bool(fallback[i])
        assert int(index[i]) == min(j for j in finite if col[j] == best)  # lowest index wins ties


def test_all_nonfinite_fallback_is_seeded_and_counted():
    losses = torch.full((6, 50), float("nan"))
    losses[:, :10] = torch.arange(6.0).unsqueeze(1)
    a, fb = argmax_with_fallback(losses, torch.Generator().manual_seed(3))
    b, _ = argmax_with_fallback(losses, torch.Generator().manual_seed(3))
    c, _ = argmax_with_fallback(losses, torch.Generator().manual_seed(4))
    assert int(fb.sum()) == 40 and not bool(fb[:10].any())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a[:10] == 5).all())
    state = torch.random.get_rng_state()
    argmax_with_fallback(losses, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())  # own generator, global RNG untouched


def test_gather_from_list_and_tensor():
    views = torch.arange(4 * 5 * 2, dtype=torch.float32).reshape(4, 5, 2)  # [N, M, feat]
    pairs = all_pairs(4)
    index = torch.tensor([0, 5, 3, 1, 2])
    a, b = gather_pair(views, pairs, index)
    a2, b2 = gather_pair(list(views), pairs, index)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    for i in range(5):
        k, l = pairs[index[i]].tolist()
        assert torch.equal(a[i], views[k, i]) and torch.equal(b[i], views[l, i])
    sel = select_hardest(torch.randn(6, 5), pairs)
    assert torch.equal(sel.gather(views)[0], gather_views(views, sel.chosen)[0])


def test_gather_errors():
    with pytest.raises(ValueError, match="same shape"):
        gather_views([torch.zeros(2, 3), torch.zeros(2, 4)], torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[M=2, K\]"):
        gather_views([torch.zeros(2, 3)] * 2, torch.zeros(3, 1, dtype=torch.long))


# ---------------------------------------------------------------- multi-crop


def _ce(seed, g=4, l=16, m=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(g, g + l, m, generator=gen, dtype=torch.float64) * 5


@pytest.mark.parametrize("pairing,size", [("any", 77_220), ("cross", 51_480)])
def test_exact_search_equals_brute_force(pairing, size):
    space = CombinationSpace(4, 16, 8, pairing)
    assert space.size == size
    ce = _ce(0)
    everything = space.enumerate_all()
    assert len(everything) == size
    brute = space.evaluate(ce, everything)  # [size, M]
    best = brute.max(0)
    exact = space.exact_search(ce)
    assert torch.allclose(exact.losses, best.values, rtol=0, atol=1e-12)
    # The returned combination really has that loss.
    rescored = space.evaluate(ce, Combinations(exact.globals_, exact.locals_)).diagonal()
    assert torch.allclose(rescored, exact.losses, rtol=0, atol=1e-12)
    assert exact.n_evaluated == size


def test_cross_pairing_is_even_times_odd():
    space = CombinationSpace(4, 16, 8, "cross")
    assert space.global_pairs.tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]


def test_capped_search_respects_cap_and_seed():
    space = CombinationSpace(4, 16, 8)
    ce = _ce(1)
    a = space.search(ce, cap=128, generator=torch.Generator().manual_seed(7))
    b = space.search(ce, cap=128, generator=torch.Generator().manual_seed(7))
    c = space.search(ce, cap=128, generator=torch.Generator().manual_seed(8))
    assert a.n_evaluated == 128 and a.candidate_losses.shape == (128, 5)
    assert torch.equal(a.globals_, b.globals_) and torch.equal(a.locals_, b.locals_)
    assert not torch.equal(a.candidate_losses, c.candidate_losses)
    assert torch.equal(a.losses, a.candidate_losses.max(0).values)
    exact = space.exact_search(ce)
    assert bool((a.losses <= exact.losses + 1e-12).all())
    drawn = space.sample(128, torch.Generator().manual_seed(7))
    assert len({(tuple(g), tuple(l)) for g, l in zip(drawn.globals_.tolist(), drawn.locals_.tolist())}) == 128
    small = CombinationSpace(2, 3, 1)  # 1 pair x 3 locals: the cap covers everything
    assert small.search(_ce(2, 2, 3), cap=128).n_evaluated == 3


@pytest.mark.parametrize("cap", [0, -1, 1.5])
def test_cap_below_one_is_a_clear_error(cap):
    with pytest.raises(ValueError, match="cap must be an int >= 1"):
        CombinationSpace().search(_ce(0), cap=cap)


def test_nonfinite_ce_never_wins_in_search():
    ce = _ce(3)
    ce[0, 1, 0] = float("nan")  # pair (0, 1) broken for sample 0
    exact = CombinationSpace(4, 16, 8).exact_search(ce)
    assert exact.globals_[0].tolist() != [0, 1]
    assert bool(torch.isfinite(exact.losses).all()) and not bool(exact.fallback.any())


def test_ce_shape_is_checked():
    with pytest.raises(ValueError, match=r"ce must be \[G=4, G\+L=20, M\]"):
        CombinationSpace().exact_search(torch.zeros(4, 19, 2))


def test_global_crops_only_space_works():
    space = CombinationSpace(4, 0, 0)
    ce = _ce(0, 4, 0, 3)
    assert space.search(ce, cap=128).n_evaluated == 4
    assert torch.allclose(space.exact_search(ce).losses, space.search(ce, cap=128).losses)
