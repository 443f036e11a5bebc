"""Per-sample pair losses: the mean over samples equals lightly's batch loss on that pair."""

import pytest
import torch
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss

from hvs_plugins import (
    all_pairs,
    dino_cross_entropy,
    dino_pair_losses,
    invariance_proxy_pair_losses,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
)
from hvs_plugins.multicrop import CombinationSpace

N, M, D = 4, 12, 16


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_negative_cosine_matches_lightly(gen):
    p, z = torch.randn(N, M, D, generator=gen), torch.randn(N, M, D, generator=gen)
    pairs = all_pairs(N)
    losses = negative_cosine_pair_losses(p, z, pairs)
    assert losses.shape == (6, M)
    crit = NegativeCosineSimilarity()
    for row, (k, l) in enumerate(pairs.tolist()):
        ref = 0.5 * (crit(p[k], z[l]) + crit(p[l], z[k]))  # lightly's SimSiam example
        assert abs(float(losses[row].mean() - ref)) < 1e-5


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_lightly(gen, temperature):
    z = torch.randn(N, M, D, generator=gen)
    pairs = all_pairs(N)
    losses = ntxent_pair_losses(z, pairs, temperature)
    crit = NTXentLoss(temperature=temperature)
    for row, (k, l) in enumerate(pairs.tolist()):
        assert abs(float(losses[row].mean() - crit(z[k], z[l]))) < 1e-5
    one_sided = ntxent_pair_losses(z, pairs, temperature, symmetric=False)
    assert not torch.allclose(one_sided, losses)


def test_ntxent_memory_bank_matches_lightly_and_is_read_only(gen):
    q, k = torch.randn(N, M, D, generator=gen), torch.randn(N, M, D, generator=gen)
    crit = NTXentLoss(temperature=0.2, memory_bank_size=(32, D))
    crit.memory_bank.bank.copy_(torch.nn.functional.normalize(torch.randn(32, D, generator=gen), dim=-1))
    bank_before = crit.memory_bank.bank.clone()
    pairs = all_pairs(N, ordered=True)
    losses = ntxent_pair_losses(q, pairs, 0.2, keys=k, memory_bank=crit.memory_bank.bank, symmetric=False)
    assert torch.equal(crit.memory_bank.bank, bank_before)
    for row, (a, b) in enumerate(pairs.tolist()):
        ref = crit(q[a], k[b])  # inputs don't require grad: lightly does not enqueue
        assert abs(float(losses[row].mean() - ref)) < 1e-5
    sym = ntxent_pair_losses(q, all_pairs(N), 0.2, keys=k, memory_bank=bank_before, symmetric=True)
    for row, (a, b) in enumerate(all_pairs(N).tolist()):
        ref = 0.5 * (crit(q[a], k[b]) + crit(q[b], k[a]))
        assert abs(float(sym[row].mean() - ref)) < 1e-5


def _lightly_dino(crit, teacher, student):
    center = crit.center.clone()
    out = crit(teacher, student, epoch=0)
    crit.center.copy_(center)  # DINOLoss.forward updates its center; the reference must not drift
    return out


def test_dino_combination_losses_match_lightly(gen):
    g, l, m, k = 4, 16, 6, 32
    teacher = torch.randn(g, m, k, generator=gen, dtype=torch.float64)
    student = torch.randn(g + l, m, k, generator=gen, dtype=torch.float64)
    crit = DINOLoss(output_dim=k, warmup_teacher_temp_epochs=0, teacher_temp=0.04, student_temp=0.1)
    crit.center.copy_(torch.randn(1, k, generator=gen))
    center = crit.center.clone()
    ce = dino_cross_entropy(teacher, student, crit.center, 0.04, 0.1)
    assert torch.equal(crit.center, center)  # read, never updated
    space = CombinationSpace(g, l, 8, "any")
    combos = space.sample(8, torch.Generator().manual_seed(1))
    values = space.evaluate(ce.double(), combos)  # [C, M]
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        locals_ = (combos.locals_[c] + g).tolist()
        ref = _lightly_dino(
            crit,
            [teacher[ga].float(), teacher[gb].float()],
            [student[ga].float(), student[gb].float()] + [student[j].float() for j in locals_],
        )
        assert abs(float(values[c].mean()) - float(ref)) / float(ref) < 1e-5
    pairs = all_pairs(g)
    two = dino_pair_losses(ce, pairs)
    for row, (a, b) in enumerate(pairs.tolist()):
        ref = _lightly_dino(crit, [teacher[a].float(), teacher[b].float()], [student[a].float(), student[b].float()])
        assert abs(float(two[row].mean()) - float(ref)) / float(ref) < 1e-5


def test_invariance_proxy_is_labelled_and_ranks_distance(gen):
    assert "proxy" in invariance_proxy_pair_losses.__name__
    assert "PROXY" in invariance_proxy_pair_losses.__doc__
    z = torch.zeros(3, 2, 4)
    z[2] = 1.0  # view 2 is far from views 0 and 1
    losses = invariance_proxy_pair_losses(z, all_pairs(3))  # pairs (0,1) (0,2) (1,2)
    assert torch.equal(losses[:, 0], torch.tensor([0.0, 1.0, 1.0]))


def test_loss_input_errors():
    pairs = all_pairs(4)
    with pytest.raises(ValueError, match=r"\[N views, M samples, D\]"):
        negative_cosine_pair_losses(torch.randn(4, 8), torch.randn(4, 8), pairs)
    with pytest.raises(ValueError, match="pairs index views 0..2"):
        ntxent_pair_losses(torch.randn(3, 5, 8), pairs)
    with pytest.raises(ValueError, match="must match"):
        negative_cosine_pair_losses(torch.randn(4, 5, 8), torch.randn(4, 5, 9), pairs)
    with pytest.raises(ValueError, match="temperature"):
        ntxent_pair_losses(torch.randn(4, 5, 8), pairs, temperature=0.0)


def test_ntxent_gathered_negatives_equal_the_full_batch(gen):
    # Two "ranks" holding halves of the batch, negatives gathered from both (lightly's
    # gather_distributed=True): each rank's per-sample losses are the full batch's rows.
    z = torch.randn(N, M, D, generator=gen)
    pairs = all_pairs(N)
    full = ntxent_pair_losses(z, pairs, 0.3)
    half = M // 2
    rank0 = ntxent_pair_losses(z[:, :half], pairs, 0.3, all_embeddings=z, offset=0)
    rank1 = ntxent_pair_losses(z[:, half:], pairs, 0.3, all_embeddings=z, offset=half)
    assert torch.allclose(torch.cat([rank0, rank1], 1), full, atol=1e-5)
    local_only = ntxent_pair_losses(z[:, :half], pairs, 0.3)
    assert not torch.allclose(local_only, rank0)
    with pytest.raises(ValueError, match="offset"):
        ntxent_pair_losses(z[:, :half], pairs, 0.3, all_embeddings=z, offset=half + 1)
