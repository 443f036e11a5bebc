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


def _batch(t: StaticColourViews, images: list, seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    items = [t(im) for im in images]
    n = len(items[0][0])
    return (
        [torch.stack([it[0][c] for it in items]) for c in range(n)],
        [torch.stack([it[1][c] for it in items]) for c in range(n)],
        torch.stack([it[2] for it in items]),
    )


def test_deferred_colours_only_the_chosen_crops_after_selection():
    kw = dict(input_size=16, gaussian_blur=0.0)
    images = [_image(s) for s in range(6)]
    eager, deferred = StaticColourViews(SimSiamTransform(**kw), 4), StaticColourViews(SimSiamTransform(**kw), 4, deferred=True)
    sel_e, _, boxes_e = _batch(eager, images)
    sel_d, crops, boxes_d = _batch(deferred, images)
    assert deferred.batched and not eager.batched and boxes_d.shape == boxes_e.shape == (6, 4, 4)
    assert crops[0].dtype == torch.uint8 and crops[0].shape == (6, 3, 16, 16)
    # without photometric ops, the chosen crops coloured after the selection are the scored views
    plain = StaticColourViews(SimSiamTransform(cj_prob=0.0, random_gray_scale=0.0, **kw), 4, deferred=True)
    sel_p, crops_p, _ = _batch(plain, images)
    chosen = torch.tensor([[0, 1], [3, 2], [1, 3], [0, 2], [2, 3], [1, 0]])
    x0, x1 = plain.colour_chosen(crops_p)(chosen)
    for m in range(6):
        assert torch.allclose(x0[m], sel_p[int(chosen[m, 0])][m], atol=1e-6)
        assert torch.allclose(x1[m], sel_p[int(chosen[m, 1])][m], atol=1e-6)
    # with colour: independent draws per training view (not the shared selection colour)
    flat = [Image.new("RGB", (32, 32), (40, 160, 90))] * 3
    t = StaticColourViews(SimCLRTransform(input_size=16, gaussian_blur=0.0, cj_prob=1.0, random_gray_scale=0.0), 4, deferred=True)
    _, crops_f, _ = _batch(t, flat)
    a, b = t.colour_chosen(crops_f)(torch.tensor([[0, 1]] * 3))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="deferred=True"):
        eager.colour_chosen(crops)


def test_select_with_deferred_train_views():
    torch.manual_seed(0)
    model = _Tiny()
    kw = dict(input_size=16, gaussian_blur=0.0, cj_prob=0.0, random_gray_scale=0.0)
    t = StaticColourViews(SimSiamTransform(**kw), 4, deferred=True)
    views, crops, boxes = _batch(t, [_image(s) for s in range(5)])
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    x0, x1 = crit.select(views, model, boxes=boxes, train_views=t.colour_chosen(crops))
    ref = HVSLoss(NegativeCosineSimilarity(), n_views=4).select(views, model)
    assert torch.allclose(x0, ref[0], atol=1e-6) and torch.allclose(x1, ref[1], atol=1e-6)
    off = HVSLoss(NegativeCosineSimilarity(), n_views=4, enabled=False)
    a, b = off.select(views, model, train_views=t.colour_chosen(crops))
    assert torch.allclose(a, views[0], atol=1e-6) and torch.allclose(b, views[1], atol=1e-6)
    with pytest.raises(ValueError, match="two tensors"):
        crit.select(views, model, train_views=lambda chosen: views[0])


def test_batched_shared_colour_matches_the_pil_kernels():
    from torchvision import tv_tensors

    t = StaticColourViews(
        SimCLRTransform(input_size=16, gaussian_blur=0.0, cj_prob=1.0, cj_hue=0.2, random_gray_scale=0.0), 4, deferred=True
    )
    torch.manual_seed(0)
    crops, _ = t.crops(_image(4))
    state = torch.get_rng_state()
    batch = t.tail(t.photometric(tv_tensors.Image(torch.stack([torch.from_numpy(np.asarray(c).copy()).permute(2, 0, 1) for c in crops]))))
    for c, crop in enumerate(crops):  # the same draw through PIL's kernels, candidate by candidate
        torch.set_rng_state(state)
        ref = t.tail(t.photometric(crop))
        d = (batch[c] - ref).abs() * 0.225 * 255  # in uint8 levels
        assert d.max() <= 8 and d.mean() <= 1.0  # the kernels round (PIL: HSV in uint8) differently
    flat = StaticColourViews(SimCLRTransform(input_size=16, gaussian_blur=0.0, cj_prob=1.0), 4, deferred=True)
    views, _, _ = flat(Image.new("RGB", (32, 32), (40, 160, 90)))
    assert all(torch.equal(v, views[0]) for v in views)  # one draw for the candidates


def test_chosen_pair_colouring_equals_the_view_by_view_pipeline():
    t = StaticColourViews(SimCLRTransform(input_size=16, gaussian_blur=0.0), 4, deferred=True)
    names = [type(o).__name__ for o in t.crops.transforms[0].transforms + t.photometric.transforms]
    assert "GaussianBlur" not in names and "RandomVerticalFlip" not in names  # switched-off ops are out
    _, crops, _ = _batch(t, [_image(s) for s in range(5)])
    chosen = torch.tensor([[0, 1], [3, 2], [1, 3], [0, 2], [2, 3]])
    torch.manual_seed(7)
    x0, x1 = t.colour_chosen(crops)(chosen)
    torch.manual_seed(7)  # the same draws, view by view through the PIL pipeline and its tail
    ref = [[t.tail(t.photometric(Image.fromarray(crops[c][m].permute(1, 2, 0).numpy()))) for c in chosen[m].tolist()] for m in range(5)]
    assert torch.equal(x0, torch.stack([r[0] for r in ref])) and torch.equal(x1, torch.stack([r[1] for r in ref]))
