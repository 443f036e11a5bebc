"""Static colour during selection (paper Fig. 4 right) with lightly's real transforms and loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("lightly")

from lightly.loss import NegativeCosineSimilarity  # noqa: E402
from lightly.transforms import BYOLTransform, SimCLRTransform, SimSiamTransform  # noqa: E402
from PIL import Image  # noqa: E402

from hvs_plugins.adapters.lightly import HVSLoss, StaticColourViews  # noqa: E402
from hvs_plugins.adapters.lightly.static_colour import split_view_transform  # noqa: E402


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def test_split_keeps_lightly_pipeline_order():
    t = SimSiamTransform(input_size=16, gaussian_blur=0.0)
    geo, photo, tail = split_view_transform(t.transforms[0])
    names = lambda ops: [type(o).__name__ for o in ops]  # noqa: E731
    assert names(geo)[0] == "RandomResizedCrop" and "RandomHorizontalFlip" in names(geo)
    assert names(photo) == ["RandomApply", "RandomGrayscale", "GaussianBlur"]
    assert names(tail) == ["ToTensor", "Normalize"]


def test_shared_colour_for_selection_independent_colour_for_training():
    # a uniform image: every crop is the same image, so views differ by colour only
    flat = Image.new("RGB", (32, 32), (40, 160, 90))
    t = StaticColourViews(SimCLRTransform(input_size=16, gaussian_blur=0.0, cj_prob=1.0, random_gray_scale=0.0), n_views=4)
    torch.manual_seed(0)
    select_views, train_views, boxes = t(flat)
    assert len(select_views) == len(train_views) == 4 and boxes.shape == (4, 4)
    for v in select_views[1:]:
        assert torch.equal(v, select_views[0])  # one colour draw shared by the candidates
    assert not all(torch.equal(v, train_views[0]) for v in train_views[1:])  # independent draws


def test_same_crop_in_both_lists_and_boxes_match():
    img = _image(1)
    t = StaticColourViews(SimSiamTransform(input_size=16, gaussian_blur=0.0, cj_prob=0.0, random_gray_scale=0.0), n_views=3)
    torch.manual_seed(3)
    select_views, train_views, boxes = t(img)
    # no photometric change: the selection and training copies of a candidate are the same crop
    for s, tr in zip(select_views, train_views):
        assert torch.equal(s, tr)
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()


def test_refuses_asymmetric_transform_and_bad_n_views():
    with pytest.raises(ValueError, match="one view pipeline"):
        StaticColourViews(BYOLTransform(), n_views=4)
    with pytest.raises(ValueError, match="n_views must be >= 2"):
        StaticColourViews(SimSiamTransform(input_size=16), n_views=1)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8))
        self.p = torch.nn.Linear(8, 8)

    def forward(self, x):
        z = self.f(x)
        return z.detach(), self.p(z)


def test_select_scores_views_and_returns_train_views():
    torch.manual_seed(0)
    model = _Tiny()
    views = [torch.randn(5, 3, 16, 16) for _ in range(4)]
    train_views = [v + 100.0 for v in views]  # recognisable copies
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    x0, x1 = crit.select(views, model, train_views=train_views)
    ref = HVSLoss(NegativeCosineSimilarity(), n_views=4).select(views, model)
    assert torch.equal(x0, ref[0] + 100.0) and torch.equal(x1, ref[1] + 100.0)
    chosen = crit.last_selection.chosen
    for i in range(5):
        assert torch.equal(x0[i], train_views[int(chosen[i, 0])][i])
    off = HVSLoss(NegativeCosineSimilarity(), n_views=4, enabled=False)
    a, b = off.select(views, model, train_views=train_views)
    assert torch.equal(a, train_views[0]) and torch.equal(b, train_views[1])
    with pytest.raises(ValueError, match="same candidates"):
        crit.select(views, model, train_views=train_views[:3])


def test_static_flip_shares_the_flip_during_selection_only():
    img = _image(2)
    kw = dict(input_size=16, gaussian_blur=0.0, cj_prob=0.0, random_gray_scale=0.0, min_scale=1.0, hf_prob=0.5)
    geo, photo, _ = split_view_transform(SimSiamTransform(**kw).transforms[0], flips_with_colour=True)
    assert "RandomHorizontalFlip" not in [type(o).__name__ for o in geo]
    assert type(photo[0]).__name__ == "RandomHorizontalFlip"
    # scale 1: every crop is the whole image, so the candidates differ by their flip only
    torch.manual_seed(5)
    select_views, train_views, _ = StaticColourViews(SimSiamTransform(**kw), n_views=8, static_flip=True)(img)
    assert all(torch.equal(v, select_views[0]) for v in select_views)
    assert not all(torch.equal(v, train_views[0]) for v in train_views)  # independent flips for training
    torch.manual_seed(5)
    plain_select, _, _ = StaticColourViews(SimSiamTransform(**kw), n_views=8)(img)
    assert not all(torch.equal(v, plain_select[0]) for v in plain_select)  # flips are per candidate otherwise
