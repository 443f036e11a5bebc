"""Core SwAV per-sample loss against lightly's SwaVLoss (the real object).

"Exact" for SwAV: the mean of the per-sample combination losses equals SwaVLoss on that
combination when every sample of the batch is on it (Sinkhorn couples the batch)."""

from functools import partial

import pytest
import torch
from lightly.loss import SwaVLoss
from lightly.loss.swav_loss import sinkhorn

from hvs_plugins import CombinationSpace, all_pairs, swav_codes, swav_cross_entropy, swav_pair_losses

G, L, M, K = 4, 6, 10, 12  # 2 candidates per crop: 2 globals, 3 locals


def _scores(n, gen, dtype=torch.float64):
    return (torch.randn(n, M, K, generator=gen, dtype=dtype)).div(2)


def _setup(gen, dtype=torch.float64, queue_len=0):
    crit = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    glob, loc = _scores(G, gen, dtype), _scores(L, gen, dtype)
    queue = [torch.randn(queue_len, K, generator=gen, dtype=dtype) / 2 for _ in range(2)] if queue_len else None
    sk = partial(sinkhorn, iterations=crit.sinkhorn_iterations, epsilon=crit.sinkhorn_epsilon)
    codes = swav_codes(glob, sk, queue)
    ce = swav_cross_entropy(codes, torch.cat([glob, loc]), crit.temperature)
    return crit, glob, loc, queue, ce


@pytest.mark.parametrize("queue_len", [0, 16])
def test_every_combination_matches_swav_loss_when_the_batch_shares_it(queue_len):
    gen = torch.Generator().manual_seed(0)
    crit, glob, loc, queue, ce = _setup(gen, queue_len=queue_len)
    space = CombinationSpace(G, L, n_local=3)
    combos = space.enumerate_all()
    losses = space.evaluate(ce, combos)  # [C, M]
    worst = 0.0
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        ref = crit([glob[ga], glob[gb]], [loc[l] for l in combos.locals_[c].tolist()], queue)
        worst = max(worst, abs(float(losses[c].mean()) - float(ref)))
    print(f"swav core float64 worst abs diff (queue={queue_len}): {worst:.2e}")
    assert worst < 1e-12, worst


def test_two_view_pairs_match_swav_loss():
    gen = torch.Generator().manual_seed(1)
    crit = SwaVLoss()
    scores = _scores(4, gen)
    codes = swav_codes(scores, partial(sinkhorn, iterations=3, epsilon=0.05))
    pairs = all_pairs(4)
    losses = swav_pair_losses(swav_cross_entropy(codes, scores, crit.temperature), pairs)
    for row, (k, l) in enumerate(pairs.tolist()):
        assert abs(float(losses[row].mean()) - float(crit([scores[k], scores[l]], []))) < 1e-12


def test_float32_close_and_exact_search_is_the_argmax():
    gen = torch.Generator().manual_seed(2)
    crit, glob, loc, queue, ce = _setup(gen, dtype=torch.float32)
    assert ce.dtype == torch.float32
    c = 5
    space = CombinationSpace(G, L, n_local=3)
    combos = space.enumerate_all()
    ga, gb = combos.globals_[c].tolist()
    ref = crit([glob[ga], glob[gb]], [loc[l] for l in combos.locals_[c].tolist()])
    assert abs(float(space.evaluate(ce, combos)[c].mean()) - float(ref)) < 1e-5
    brute = space.evaluate(ce, combos).max(0).values
    assert torch.allclose(space.exact_search(ce).losses, brute, atol=1e-6)


def test_mixed_selection_is_not_the_shared_batch_value():
    """Documents the limit of the claim: when samples are on different combinations the host
    recomputes its codes over the mixed batch, so per-sample values need not average to it."""
    gen = torch.Generator().manual_seed(3)
    crit, glob, loc, _, ce = _setup(gen)
    space = CombinationSpace(G, L, n_local=3)
    choice = space.exact_search(ce)
    m = torch.arange(M)
    sel_glob = [glob[choice.globals_[:, j], m] for j in range(2)]
    sel_loc = [loc[choice.locals_[:, j], m] for j in range(3)]
    host = float(crit(sel_glob, sel_loc))
    assert abs(float(choice.losses.mean()) - host) > 1e-6


def test_inputs_unchanged_and_bad_shapes_are_refused():
    gen = torch.Generator().manual_seed(4)
    scores = _scores(G, gen)
    before = scores.clone()
    queue = [torch.randn(8, K, dtype=torch.float64) for _ in range(2)]
    qb = [q.clone() for q in queue]
    swav_codes(scores, partial(sinkhorn, iterations=3, epsilon=0.05), queue)
    assert torch.equal(scores, before) and all(torch.equal(a, b) for a, b in zip(queue, qb))
    with pytest.raises(ValueError, match=r"\[G global candidates"):
        swav_codes(scores[0], sinkhorn)
    with pytest.raises(ValueError, match="queue entry"):
        swav_codes(scores, sinkhorn, [torch.zeros(8, K + 1)])
    with pytest.raises(ValueError, match="queue_slot"):
        swav_codes(scores, sinkhorn, queue, queue_slot=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="disagree"):
        swav_cross_entropy(scores, scores[:, :3], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        swav_cross_entropy(scores, scores, 0.0)
