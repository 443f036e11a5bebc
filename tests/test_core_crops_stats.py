"""Crop-box recording, IoU, selection statistics and figures."""

import math

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F2

from hvs_plugins import CandidateTransform, all_pairs, box_iou, pair_ious, select_hardest, selection_stats


def test_box_iou():
    a = torch.tensor([0.0, 0.0, 0.5, 0.5])
    assert float(box_iou(a, a)) == 1.0
    assert float(box_iou(a, torch.tensor([0.5, 0.5, 0.5, 0.5]))) == 0.0
    assert math.isclose(float(box_iou(a, torch.tensor([0.0, 0.25, 0.5, 0.5]))), 1 / 3, rel_tol=1e-6)


@pytest.mark.parametrize("module", [v2, T])
def test_recorded_boxes_reproduce_the_crop(module):
    torch.manual_seed(0)
    image = torch.rand(3, 40, 60)
    ct = CandidateTransform([module.RandomResizedCrop(16, scale=(0.1, 0.9), antialias=True)], n_per_transform=4)
    views, boxes = ct(image)
    assert len(views) == 4 and boxes.shape == (4, 4)
    for view, (top, left, h, w) in zip(views, boxes.tolist()):
        box = [round(top * 40), round(left * 60), round(h * 40), round(w * 60)]
        again = F2.resized_crop(image, *box, size=[16, 16], antialias=True)
        assert torch.allclose(view, again, atol=1e-6)
    assert len({tuple(b) for b in boxes.tolist()}) == 4


def test_two_pipelines_interleave_and_missing_crop_gives_nan():
    ct = CandidateTransform([v2.RandomResizedCrop(8), v2.Resize(8)], n_per_transform=2)
    views, boxes = ct(torch.rand(3, 20, 20))
    assert ct.n_views == 4
    assert bool(torch.isfinite(boxes[0::2]).all()) and bool(torch.isnan(boxes[1::2]).all())


def test_selection_stats():
    pairs = all_pairs(3)  # (0,1) (0,2) (1,2)
    losses = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 5.0]])  # [P, M]
    sel = select_hardest(losses, pairs)
    # Sample 0: view 2 far from 0; sample 1: all boxes equal except view 1/2 overlap less.
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.5, 0.5], [0.0, 0.1, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]],
            [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.5, 1.0]],
        ]
    )  # [M, N, 4]
    stats = selection_stats(sel, boxes)
    assert sel.index.tolist() == [1, 2]
    assert stats.mean_selected_loss == 4.0 and math.isclose(stats.mean_pair_loss, 11 / 6, rel_tol=1e-6)
    assert stats.hardness_gap > 0 and stats.pair_counts == [0, 1, 1] and stats.n_fallback == 0
    ious = pair_ious(boxes, pairs)
    assert ious.shape == (3, 2)
    # sample 0 picked (0,2): IoU 0 = lowest; sample 1 picked (1,2): IoU 0 = lowest
    assert stats.lowest_iou_fraction == 1.0
    d = stats.as_dict()
    assert d["hvs/hardness_gap"] == stats.hardness_gap and "hvs/lowest_iou_fraction" in d


def test_figures_are_written(tmp_path):
    from hvs_plugins.plotting import plot_candidates, plot_iou_histograms

    p1 = plot_candidates(torch.rand(2, 4, 3, 8, 8), torch.tensor([[0, 1], [2, 3]]), tmp_path / "c.png")
    p2 = plot_iou_histograms({"selected": [0.1, 0.2], "random": [0.5, 0.6]}, tmp_path / "h.png")
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000


def test_candidate_transform_pickles_for_spawned_workers():
    import pickle

    ct = CandidateTransform([v2.RandomResizedCrop(8)], n_per_transform=2)
    clone = pickle.loads(pickle.dumps(ct))
    views, boxes = clone(torch.rand(3, 20, 20))
    assert len(views) == 2 and bool(torch.isfinite(boxes).all())
    assert type(clone.recorders[0]) is type(ct.recorders[0])


def test_select_min_iou_takes_the_least_overlapping_pair():
    from hvs_plugins import all_pairs, pair_ious, select_min_iou

    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(16, 4, 4, generator=gen) * 0.5  # [M, N, 4]: top, left in [0, .5), h, w
    boxes[..., 2:] += 0.1
    pairs = all_pairs(4)
    sel = select_min_iou(boxes, pairs)
    ious = pair_ious(boxes, pairs)  # [P, M]
    assert torch.equal(ious.gather(0, sel.index.unsqueeze(0)).squeeze(0), ious.min(0).values)
    assert torch.equal(sel.pair_losses, -ious)
