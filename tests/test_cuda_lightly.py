"""The lightly adapter on every device (``device`` fixture): HVSLoss.select with the networks, the
loss and the views on the device (SimSiam, BYOL, SimCLR, MoCo with its memory bank, DINO exact and
capped, DINO teacher reuse), bitwise state checks, bf16 autocast, resolution_scale, and no
host-device synchronisation inside ``select`` with ``stats=False`` (CUDA sync debug mode)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("lightly")
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import (  # noqa: E402
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    SimSiamPredictionHead,
    SimSiamProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad  # noqa: E402

from hvs_plugins import CombinationSpace, HVSFallbackWarning, dino_cross_entropy  # noqa: E402
from hvs_plugins.adapters.lightly import HVSLoss  # noqa: E402
from hvs_plugins.adapters.lightly.loss import lookup  # noqa: E402

D = 16


def backbone(norm: str = "bn") -> nn.Module:
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8), nn.ReLU()] if norm == "bn" else [nn.GELU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, *([nn.LayerNorm(8)] if norm == "ln" else []))


class TwoView(nn.Module):
    """SimSiam ((z, p)), BYOL (p; momentum z), SimCLR (z) and MoCo (z; momentum z) in one class."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.backbone = backbone()
        if method == "simsiam":
            self.projection_head = SimSiamProjectionHead(8, 16, D)
            self.prediction_head = SimSiamPredictionHead(D, 8, D)
        else:
            self.projection_head = BYOLProjectionHead(8, 16, D)
            self.prediction_head = BYOLPredictionHead(D, 16, D) if method == "byol" else nn.Identity()
        if method in ("byol", "moco"):
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        z = self.projection_head(self.backbone(x))
        if self.method == "simsiam":
            return z.detach(), self.prediction_head(z)
        return self.prediction_head(z)

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


class DINO(nn.Module):
    def __init__(self, norm: str = "bn") -> None:
        super().__init__()
        self.student_backbone = backbone(norm)
        self.student_head = DINOProjectionHead(8, 16, 8, 32, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = DINOProjectionHead(8, 16, 8, 32)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x):
        return self.student_head(self.student_backbone(x))

    def forward_teacher(self, x):
        return self.teacher_head(self.teacher_backbone(x))


def criterion(method: str) -> nn.Module:
    if method in ("simsiam", "byol"):
        return NegativeCosineSimilarity()
    if method == "simclr":
        return NTXentLoss(temperature=0.3)
    return NTXentLoss(temperature=0.2, memory_bank_size=(32, D))


def _views(n=4, m=6, size=12, seed=0):  # on the host, as a DataLoader yields them
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, size, size, generator=gen) for _ in range(n)]


def _dino_views(m=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, 12, 12, generator=gen) for _ in range(4)] + [torch.randn(m, 3, 8, 8, generator=gen) for _ in range(4)]


def _everything(*modules: nn.Module) -> dict:
    """Every parameter and buffer (persistent or not: the memory bank), bitwise."""
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in list(m.named_parameters()) + list(m.named_buffers())}


def _assert_unchanged(before: dict, *modules: nn.Module) -> None:
    now = _everything(*modules)
    assert before.keys() == now.keys()
    for k in before:
        assert torch.equal(before[k], now[k]), f"{k} changed during selection"


def _rng(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _setup(method, device, **kw):
    torch.manual_seed(0)
    model = TwoView(method).to(device).train()
    crit = HVSLoss(criterion(method), n_views=4, groups="interleaved" if method == "byol" else None, **kw).to(device)
    target = model.forward_momentum if method in ("byol", "moco") else None
    return model, crit, target


@pytest.mark.parametrize("method", ["simsiam", "byol", "simclr", "moco"])
def test_two_view_select_on_device(device, method):
    model, crit, target = _setup(method, device)
    views = _views()
    before, rng = _everything(model, crit), _rng(device)
    x0, x1 = crit.select(views, model, target)
    _assert_unchanged(before, model, crit)
    assert _rng(device)[0].equal(rng[0]) and (rng[1] is None or _rng(device)[1].equal(rng[1]))
    assert x0.device.type == x1.device.type == device.type
    sel = crit.last_selection
    assert sel.pair_losses.device.type == device.type
    ref_model = copy.deepcopy(model)  # per-view BatchNorm batches, as the selection forward
    with torch.no_grad():
        dev_views = [v.to(device) for v in views]
        online = [torch.stack(o) for o in zip(*[_as_tuple(ref_model(v)) for v in dev_views])]
        tgt = [torch.stack([ref_model.forward_momentum(v) for v in dev_views])] if target is not None else None
    ref = lookup(crit.criterion).fn(crit.criterion, online, tgt, crit.pairs)
    torch.testing.assert_close(sel.pair_losses, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel.index, ref.argmax(0))
    for i, (k, l) in enumerate(sel.chosen.tolist()):
        assert torch.equal(x0[i].cpu(), views[k][i]) and torch.equal(x1[i].cpu(), views[l][i])
    assert crit.last_stats is not None and crit.last_stats.hardness_gap >= 0


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("exact", [True, False])
def test_dino_select_on_device(device, exact):
    torch.manual_seed(0)
    model = DINO().to(device).train()
    crit = HVSLoss(DINOLoss(output_dim=32, warmup_teacher_temp_epochs=2), exact=exact, cap=16).to(device)
    with torch.no_grad():
        crit.criterion.center.add_(0.01)
    views = _dino_views()
    before, rng = _everything(model, crit), _rng(device)
    out = crit.select(views, model, model.forward_teacher, epoch=0)
    _assert_unchanged(before, model, crit)
    assert torch.equal(rng[0], torch.get_rng_state())
    assert len(out) == 4 and all(v.device.type == device.type for v in out)
    choice = crit.last_selection
    assert choice.globals_.device.type == device.type
    if exact:  # the same combination as the exact search over reference cross-entropies on the host
        ref_model = copy.deepcopy(model)
        with torch.no_grad():
            dv = [v.to(device) for v in views]
            t = torch.stack([ref_model.forward_teacher(v) for v in dv[:4]])
            s = torch.cat([torch.stack([ref_model(v) for v in dv[:4]]), torch.stack([ref_model(v) for v in dv[4:]])])
        ce = dino_cross_entropy(
            t.cpu().double(), s.cpu().double(), crit.criterion.center.cpu(), crit._teacher_temp(0, None), float(crit.criterion.student_temp)
        )
        ref = CombinationSpace(4, 4, 2).exact_search(ce)
        assert torch.equal(choice.globals_.cpu(), ref.globals_) and torch.equal(choice.locals_.cpu(), ref.locals_)
    for i in range(6):
        assert torch.equal(out[0][i].cpu(), views[int(choice.globals_[i, 0])][i])
        assert torch.equal(out[2][i].cpu(), views[4 + int(choice.locals_[i, 0])][i])


def test_dino_teacher_reuse_on_device(device):
    torch.manual_seed(0)
    model = DINO(norm="ln").to(device).train()
    crit = HVSLoss(DINOLoss(output_dim=32), exact=True).to(device)
    out, teacher_out = crit.select(_dino_views(), model, model.forward_teacher, return_teacher_out=True)
    for got, v in zip(teacher_out, out[:2]):
        assert got.device.type == device.type
        torch.testing.assert_close(got, model.forward_teacher(v), rtol=1e-5, atol=1e-6)


def test_bf16_and_resolution_scale_on_device(device):
    model, full, _ = _setup("simsiam", device)
    model.eval()
    views = _views(size=16)
    before = _everything(model)
    full.select(views, model)
    for kw in (dict(autocast_dtype=torch.bfloat16), dict(resolution_scale=0.5), dict(autocast_dtype=torch.bfloat16, resolution_scale=0.5)):
        crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, **kw)
        x0, _ = crit.select(views, model)
        got = crit.last_selection.pair_losses
        assert got.dtype == torch.float32 and bool(torch.isfinite(got).all()) and x0.shape == (6, 3, 16, 16)
        assert x0.device.type == device.type
        if "resolution_scale" not in kw:
            torch.testing.assert_close(got, full.last_selection.pair_losses, rtol=0, atol=5e-2)
    _assert_unchanged(before, model)


def test_stats_off_defers_fallback_warnings(device):
    model, crit, _ = _setup("simsiam", device, stats=False)
    broken = lambda x: tuple(o * float("nan") for o in model(x))  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crit.select(_views(), broken, modules=[model])
        crit._deferred.poll(wait=True)
    assert crit.last_stats is None and bool(crit.last_selection.fallback.all())
    assert [w.category for w in caught] == [HVSFallbackWarning] and "6 of 6 samples" in str(caught[0].message)
    assert len(crit._deferred) == 0


@pytest.mark.parametrize("method", ["simsiam", "byol", "simclr", "moco", "dino", "dino capped"])
@pytest.mark.cuda_only  # host-device synchronisation exists on CUDA only (sync debug mode)
def test_select_does_not_synchronise(device, no_sync, method):
    if method.startswith("dino"):
        torch.manual_seed(0)
        model = DINO().to(device).train()
        crit = HVSLoss(DINOLoss(output_dim=32), exact=method == "dino", stats=False, autocast_dtype=torch.bfloat16).to(device)
        views, target = [v.to(device) for v in _dino_views()], model.forward_teacher
    else:
        model, crit, target = _setup(method, device, stats=False, autocast_dtype=torch.bfloat16)
        views = [v.to(device) for v in _views()]
    crit.select(views, model, target)  # warm-up: lazy CUDA/cuDNN initialisation
    with no_sync(device):
        out = crit.select(views, model, target)
    assert out[0].shape == views[0].shape
