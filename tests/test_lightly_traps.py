"""Issue 18, lightly: the traps a new user fell into with lightly's own objects, each now either
correct or loud (a message that names the fix, and following it works)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("lightly")
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss, SwaVLoss  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.transforms import BYOLTransform, DINOTransform, SimCLRTransform  # noqa: E402
from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform  # noqa: E402
from PIL import Image  # noqa: E402

from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss  # noqa: E402
from lightly_models import BYOL, SimSiam  # noqa: E402


def images(n: int = 6, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def collate(items: list) -> list[torch.Tensor]:
    return torch.utils.data.default_collate(items)  # what a DataLoader does


def state(*modules: nn.Module) -> dict:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in list(m.state_dict().items())}


# ---------------------------------------------------------------- 1. a forward given as a lambda
def test_lambda_forward_without_modules_leaves_batchnorm_untouched():
    """lightly's swav_queue.py-style loops pass a plain function: every module that runs is guarded."""
    torch.manual_seed(0)
    model = SimSiam()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    before = state(model)
    for _ in range(8):
        views = [torch.randn(6, 3, 16, 16) for _ in range(4)]
        crit.select(views, lambda x: model(x))  # no modules=: nothing tells HVS which network runs
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert int(model.backbone[1].num_batches_tracked) == 0


def test_lambda_forward_selects_like_the_module():
    torch.manual_seed(0)
    model = SimSiam()
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)]
    a = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    b = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    a.select(views, model)
    b.select(views, lambda x: model(x))
    assert torch.equal(a.last_selection.index, b.last_selection.index)


# ---------------------------------------------------------------- 2. MoCo without a momentum forward
def test_moco_memory_bank_without_momentum_forward_is_refused():
    torch.manual_seed(0)
    model = BYOL()  # forward -> query, forward_momentum -> key (as lightly's MoCo example)
    crit = HVSLoss(NTXentLoss(temperature=0.2, memory_bank_size=(16, 8)), n_views=4)
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)]
    with pytest.raises(
        ValueError,
        match=r"NTXentLoss with a memory bank \(MoCo\) compares each query with the key of the "
        r"momentum network, but select\(\) got no momentum forward: call select\(views, model, "
        r"model.forward_momentum\)",
    ):
        crit.select(views, model)
    x0, x1 = crit.select(views, model, model.forward_momentum)  # the advice works
    assert x0.shape == (6, 3, 16, 16)
    crit.select(views, model, model)  # keys from the online network, said explicitly


# ---------------------------------------------------------------- 3. BYOL's two pipelines
def byol_candidates(size2: int = 24) -> CandidateViews:
    t = BYOLTransform(BYOLView1Transform(input_size=32, gaussian_blur=0.0), BYOLView2Transform(input_size=size2, gaussian_blur=0.0))
    return CandidateViews(t, n_views=4)


def test_byol_transform_without_groups_is_refused_and_candidates_fix_it():
    torch.manual_seed(0)
    cv = byol_candidates(32)
    views = collate([cv(im) for im in images()])
    model = BYOL()
    plain = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    with pytest.raises(
        ValueError,
        match=r"HVSLoss\(groups=None\) scores all 6 pairs of the 4 candidates, same-pipeline pairs "
        r"included, but the batch comes from CandidateViews\(BYOLTransform\) with two different view pipelines.*"
        r"HVSLoss\(criterion, candidates=candidate_views\)",
    ):
        plain.select(views, model, model.forward_momentum)
    fixed = HVSLoss(NegativeCosineSimilarity(), candidates=cv)  # n_views and groups from one source
    fixed.select(views, model, model.forward_momentum)
    assert fixed.pairs.tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]  # cross pairs only
    on_purpose = HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="all")
    on_purpose.select(views, model, model.forward_momentum)
    assert on_purpose.pairs.shape[0] == 6
    with pytest.raises(ValueError, match=r"HVSLoss\(n_views=6\) disagrees with candidates"):
        HVSLoss(NegativeCosineSimilarity(), n_views=6, candidates=cv)


# ---------------------------------------------------------------- 4. target reuse before update_momentum
def test_target_reuse_before_the_momentum_update_is_refused():
    torch.manual_seed(0)
    model = nn.Module()
    net = BYOL()
    # BatchNorm-free momentum network (reuse is exact only then)
    for name in ("backbone", "backbone_momentum"):
        setattr(net, name, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.projection_head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16))
    net.projection_head_momentum = copy.deepcopy(net.projection_head)
    deactivate_requires_grad(net.backbone_momentum)
    deactivate_requires_grad(net.projection_head_momentum)
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved")
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)]

    def step(select_first: bool) -> torch.Tensor:
        if select_first:  # the order the old README's table suggested
            (x0, x1), (t0, t1) = crit.select(views, net, net.forward_momentum, return_target_out=True)
            update_momentum(net.backbone, net.backbone_momentum, 0.5)
        else:
            update_momentum(net.backbone, net.backbone_momentum, 0.5)
            (x0, x1), (t0, t1) = crit.select(views, net, net.forward_momentum, return_target_out=True)
        return 0.5 * (crit(net(x0), t1) + crit(net(x1), t0))

    with pytest.raises(
        ValueError,
        match=r"return_target_out=True: the momentum network changed between select\(\) and "
        r"the loss \(update_momentum ran after select\).*Call select\(\.\.\., return_target_out=True\) "
        r"after update_momentum",
    ):
        step(select_first=True)
    loss = step(select_first=False)  # the advice works, and the outputs are the fresh ones
    (x0, x1), (t0, t1) = crit.select(views, net, net.forward_momentum, return_target_out=True)
    assert torch.allclose(t1, net.forward_momentum(x1), atol=1e-6) and torch.isfinite(loss)
    del model


# ---------------------------------------------------------------- 5. a batch HVS cannot score
def test_one_sample_batch_trains_on_a_plain_pair_with_a_lambda_forward():
    """The BatchNorm is found only when the lambda runs: the torch error becomes the fallback."""
    from hvs_plugins import HVSUnscorableWarning

    torch.manual_seed(0)
    model = SimSiam()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    views = [torch.randn(1, 3, 16, 16) for _ in range(4)]
    before = state(model)
    with pytest.warns(
        HVSUnscorableWarning,
        match=r"HVS could not score a batch \(BatchNorm in train mode got one value per "
        r"channel .*plain random pair",
    ):
        x0, x1 = crit.select(views, lambda x: model(x))
    assert torch.equal(x0, views[0]) and torch.equal(x1, views[1]) and crit.unscorable_batches == 1
    assert all(torch.equal(v, state(model)[k]) for k, v in before.items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit.select([torch.randn(4, 3, 16, 16) for _ in range(4)], lambda x: model(x))  # scores again, no warning
    assert crit.unscorable_batches == 1


# ---------------------------------------------------------------- 8. multi-crop without CandidateViews
@pytest.mark.parametrize("kind", ["dino", "swav"])
def test_multicrop_plain_transform_says_wrap_it(kind):
    t = DINOTransform(global_crop_size=32, local_crop_size=16, n_local_views=6, gaussian_blur=(0, 0, 0), solarization_prob=0)
    views = collate([t(im) for im in images(4)])  # 2 global + 6 local: one view per crop
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16))
    crit = HVSLoss(DINOLoss(output_dim=16)) if kind == "dino" else HVSLoss(SwaVLoss())
    name = "DINO" if kind == "dino" else "SwAV"
    with pytest.raises(
        ValueError,
        match=rf"{name} HVS expects 4 global candidates \(2 per global crop\) of one size first, "
        r"then 2 candidates per local crop; got 8 views \(2 x 32x32, 6 x 16x16\).*wrap it with "
        r"CandidateViews\(transform\)",
    ):
        crit.select(views, net, epoch=0) if kind == "swav" else crit.select(views, net, net, epoch=0)
    cv = CandidateViews(t)  # the advice: 4 global + 12 local candidates
    views = collate([cv(im) for im in images(4)])
    out = crit.select(views, net, epoch=0) if kind == "swav" else crit.select(views, net, net, epoch=0)
    assert len(out) == 8 and out[0].shape[-1] == 32 and out[2].shape[-1] == 16


# ---------------------------------------------------------------- 9. BYOL with two view sizes
def test_byol_two_view_sizes_train_with_cross_pairs():
    torch.manual_seed(0)
    cv = byol_candidates(24)
    views = collate([cv(im) for im in images()])
    assert [v.shape[-1] for v in views] == [32, 24, 32, 24]
    model = BYOL()
    crit = HVSLoss(NegativeCosineSimilarity(), candidates=cv)
    x0, x1 = crit.select(views, model, model.forward_momentum)
    assert x0.shape[-1] == 32 and x1.shape[-1] == 24  # slot 1 from view transform 1, slot 2 from 2
    loss = 0.5 * (crit(model(x0), model.forward_momentum(x1)) + crit(model(x1), model.forward_momentum(x0)))
    assert torch.isfinite(loss)
    # every pair on purpose, with mixed sizes: the message says what to do
    with pytest.raises(
        ValueError,
        match=r"candidate views differ in size \(sizes by candidate: 0: 32x32, 1: 24x24, 2: 32x32, "
        r"3: 24x24\).*HVSLoss\(criterion, candidates=candidate_views\).*groups='interleaved'",
    ):
        HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="all").select(views, model, model.forward_momentum)


def test_simclr_transform_with_candidates_keeps_all_pairs():
    cv = CandidateViews(SimCLRTransform(input_size=16, gaussian_blur=0.0), n_views=4)
    crit = HVSLoss(NTXentLoss(), candidates=cv)
    assert crit.pairs.shape[0] == 6


# ---------------------------------------------------------------- issue 19: the geometric control
def test_select_by_min_iou_runs_no_forward_and_takes_the_lowest_iou_pair():
    from hvs_plugins import pair_ious

    cv = CandidateViews(SimCLRTransform(input_size=16, gaussian_blur=0.0), n_views=4, return_boxes=True)
    items = [cv(im) for im in images(8)]
    views = collate([it[0] for it in items])
    boxes = torch.stack([it[1] for it in items])  # [M, N, 4]

    def no_forward(x):
        raise AssertionError("min_iou must not run the model")

    crit = HVSLoss(NTXentLoss(), candidates=cv, select_by="min_iou")
    assert crit.scoring == "geometric"
    x0, x1 = crit.select(views, no_forward, boxes=boxes)
    ious = pair_ious(boxes, crit.pairs)
    chosen = crit.last_selection.index
    assert torch.equal(ious.gather(0, chosen.unsqueeze(0)).squeeze(0), ious.min(0).values)
    assert crit.last_stats.lowest_iou_fraction == 1.0 and x0.shape == (8, 3, 16, 16)
    with pytest.raises(
        ValueError,
        match=r"select_by='min_iou' needs the crop boxes: CandidateViews\(transform, "
        r"return_boxes=True\)",
    ):
        crit.select(views, no_forward)
    with pytest.raises(ValueError, match=r"select_by must be 'loss' \(HVS\) or 'min_iou'"):
        HVSLoss(NTXentLoss(), select_by="iou")
    with pytest.raises(ValueError, match=r"select_by='min_iou' is for two-view losses"):
        HVSLoss(DINOLoss(output_dim=16), select_by="min_iou")
