"""Core iBOT per-sample loss against lightly's DINOLoss + IBOTPatchLoss (real objects), float64.

Temperatures and masked-token counts are powers of two so that lightly's float32
``torch.tensor(temp)`` and per-image weights ``1 / n`` are exact too."""

import copy

import pytest
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss

from hvs_plugins import CombinationSpace, dino_cross_entropy, ibot_combination_ce, ibot_patch_cross_entropy

G, L, M, K, T = 4, 4, 6, 10, 9  # 2 candidates per crop; 3x3 token grid
TT, TS = 0.0625, 0.125


def _data(gen):
    # masked tokens per image: 0 or a power of two (lightly's per-image weight 1/n is float32)
    counts = torch.tensor([0, 1, 2, 4, 8])[torch.randint(0, 5, (G, M), generator=gen)]
    counts[1, 2] = 0  # an image without masked tokens
    order = torch.rand(G, M, T, generator=gen).argsort(-1)
    masks = [(order[g].argsort(-1) < counts[g].unsqueeze(1)).reshape(M, 3, 3) for g in range(G)]
    t_cls, s_cls = torch.randn(G, M, K, generator=gen, dtype=torch.float64), torch.randn(G + L, M, K, generator=gen, dtype=torch.float64)
    t_patch = [torch.randn(int(mk.sum()), K, generator=gen, dtype=torch.float64) for mk in masks]
    s_patch = [torch.randn(int(mk.sum()), K, generator=gen, dtype=torch.float64) for mk in masks]
    return masks, t_cls, s_cls, t_patch, s_patch


def _split(x, mask):
    """Rows of x ([n, K], row-major over mask) per image."""
    counts = mask.flatten(1).sum(1).tolist()
    return list(torch.split(x, counts))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0)])
def test_every_combination_matches_dino_plus_patch_loss(weights):
    gen = torch.Generator().manual_seed(0)
    dino, patch = DINOLoss(output_dim=K, teacher_temp=TT, student_temp=TS), IBOTPatchLoss(output_dim=K, teacher_temp=TT, student_temp=TS)
    with torch.no_grad():
        dino.center.add_(torch.randn(dino.center.shape, generator=gen) * 0.1)
        patch.center.center.add_(torch.randn(patch.center.center.shape, generator=gen) * 0.1)
    masks, t_cls, s_cls, t_patch, s_patch = _data(gen)
    cls_ce = dino_cross_entropy(t_cls, s_cls, dino.center, TT, TS).double()
    p = torch.stack([ibot_patch_cross_entropy(t_patch[g], s_patch[g], masks[g], patch.center.value, TT, TS) for g in range(G)])
    space = CombinationSpace(G, L, n_local=2)
    ce = ibot_combination_ce(cls_ce, p, space.n_terms, *weights)
    combos = space.enumerate_all()
    losses = space.evaluate(ce, combos)
    worst = 0.0
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        ref_cls = copy.deepcopy(dino)([t_cls[ga], t_cls[gb]], [s_cls[ga], s_cls[gb]] + [s_cls[G + l] for l in combos.locals_[c].tolist()])
        ref_patch = copy.deepcopy(patch)(
            torch.cat([t_patch[ga], t_patch[gb]]), torch.cat([s_patch[ga], s_patch[gb]]), torch.cat([masks[ga], masks[gb]])
        )
        ref = weights[0] * ref_cls + weights[1] * ref_patch
        worst = max(worst, abs(float(losses[c].mean()) - float(ref)))
    print(f"ibot core (float32 [CLS] matrix) worst abs diff (weights={weights}): {worst:.2e}")
    # dino_cross_entropy computes in float32 (as the training step); the patch part is float64
    assert worst < 1e-5, worst
    # with a float64 [CLS] matrix the agreement is to rounding
    cls64 = -torch.einsum(
        "tmk,smk->tsm", torch.softmax((t_cls - dino.center.double().reshape(1, 1, -1)) / TT, -1), torch.log_softmax(s_cls / TS, -1)
    )
    losses64 = space.evaluate(ibot_combination_ce(cls64, p, space.n_terms, *weights), combos)
    worst64 = 0.0
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        ref_cls = copy.deepcopy(dino)([t_cls[ga], t_cls[gb]], [s_cls[ga], s_cls[gb]] + [s_cls[G + l] for l in combos.locals_[c].tolist()])
        ref_patch = copy.deepcopy(patch)(
            torch.cat([t_patch[ga], t_patch[gb]]), torch.cat([s_patch[ga], s_patch[gb]]), torch.cat([masks[ga], masks[gb]])
        )
        worst64 = max(worst64, abs(float(losses64[c].mean()) - float(weights[0] * ref_cls + weights[1] * ref_patch)))
    print(f"ibot core float64 [CLS] worst abs diff (weights={weights}): {worst64:.2e}")
    assert worst64 < 1e-12, worst64


def test_patch_term_per_image_and_bad_input():
    gen = torch.Generator().manual_seed(1)
    masks, _, _, t_patch, s_patch = _data(gen)
    center = torch.zeros(1, K)
    per_image = ibot_patch_cross_entropy(t_patch[1], s_patch[1], masks[1], center, TT, TS)
    assert per_image.shape == (M,) and per_image[2] == 0  # no masked tokens: 0, as lightly's clamp(min=1)
    for i, (tp, sp) in enumerate(zip(_split(t_patch[1], masks[1]), _split(s_patch[1], masks[1]))):
        if len(tp):
            ref = -(torch.softmax(tp / TT, -1) * torch.log_softmax(sp / TS, -1)).sum(-1).mean()
            assert abs(float(per_image[i] - ref)) < 1e-12
    with pytest.raises(ValueError, match="bool"):
        ibot_patch_cross_entropy(t_patch[1], s_patch[1], masks[1].float(), center, TT, TS)
    with pytest.raises(ValueError, match="n masked tokens"):
        ibot_patch_cross_entropy(t_patch[1][:-1], s_patch[1][:-1], masks[1], center, TT, TS)
    with pytest.raises(ValueError, match=r"patch_ce \[G, M\]"):
        ibot_combination_ce(torch.zeros(G, G + L, M), torch.zeros(G, M + 1), 6)
