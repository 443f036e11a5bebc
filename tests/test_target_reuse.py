"""HVSLoss.select(..., return_target_out=True): BYOL / MoCo momentum outputs of the selected views
reused by the training step — equal to the momentum forward the step would run (BatchNorm-free
momentum network), the loss unchanged, state bitwise unchanged; refused where it would not be exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("lightly")
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import BYOLProjectionHead  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402

from hvs_plugins.adapters.lightly import HVSLoss  # noqa: E402

D = 8


def ln_backbone(dropout: float = 0.0) -> nn.Module:  # BatchNorm-free, as a ViT: per-sample outputs
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Dropout(dropout)
    )


class Momentum(nn.Module):
    """BYOL (forward -> prediction p) or MoCo (forward -> projection q); forward_momentum -> key."""

    def __init__(self, method: str = "byol", bn_heads: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = ln_backbone(dropout)
        self.projection_head = BYOLProjectionHead(8, 16, D) if bn_heads else nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, D))
        self.prediction_head = nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D)) if method == "byol" else nn.Identity()
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


def _views(m=6, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, 12, 12, generator=gen).to(device) for _ in range(4)]


def _state(*modules):
    return [{k: v.detach().clone() for k, v in list(m.named_parameters()) + list(m.named_buffers())} for m in modules]


def _criterion(method):
    if method == "byol":
        return HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved")
    return HVSLoss(NTXentLoss(temperature=0.2, memory_bank_size=(16, D)), n_views=4)


@pytest.mark.parametrize("method", ["byol", "moco"])
def test_target_outputs_equal_the_training_steps_momentum_forward(device, method):
    torch.manual_seed(0)
    model, crit = Momentum(method).to(device).train(), _criterion(method).to(device)
    update_momentum(model.backbone, model.backbone_momentum, m=0.9)  # select after the momentum update
    views = _views(device=device)
    before = _state(model, crit)
    (x0, x1), (t0, t1) = crit.select(views, model, model.forward_momentum, return_target_out=True)
    for b, a in zip(before, _state(model, crit)):
        assert all(torch.equal(b[k], a[k]) for k in b)
    ref0, ref1 = model.forward_momentum(x0), model.forward_momentum(x1)  # what the step would compute
    assert t0.shape == ref0.shape == (6, D) and t0.device.type == device.type
    torch.testing.assert_close(t0, ref0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t1, ref1, rtol=1e-5, atol=1e-6)
    if method == "byol":
        p0, p1 = model(x0), model(x1)
        loss, ref = 0.5 * (crit(p0, t1) + crit(p1, t0)), 0.5 * (crit(p0, ref1) + crit(p1, ref0))
    else:  # the bank is read by both losses and updated by neither (no grad in the keys... the query has grad)
        q = model(x0)
        ref = copy.deepcopy(crit)(q, ref1)
        loss = crit(q, t1)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()  # the step trains as before


def test_target_outputs_on_schedule_off_steps():
    torch.manual_seed(0)
    model, crit = Momentum(), HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved", every=2)
    views = _views()
    crit.select(views, model, model.forward_momentum, return_target_out=True)  # step 0 selects
    (x0, x1), (t0, t1) = crit.select(views, model, model.forward_momentum, return_target_out=True)  # step 1: off
    assert torch.equal(x0, views[0]) and torch.equal(x1, views[1])
    assert torch.equal(t0, model.forward_momentum(x0)) and torch.equal(t1, model.forward_momentum(x1))


def test_target_reuse_refuses_inexact_settings():
    views = _views()
    bn = Momentum(bn_heads=True)  # lightly's BYOL head: BatchNorm1d in train mode
    before = _state(bn)
    with pytest.raises(ValueError, match=r"needs a momentum network .* has: projection_head_momentum\.layers\.1 \(BatchNorm1d\)\.") as err:
        _criterion("byol").select(views, bn, bn.forward_momentum, return_target_out=True)
    assert "projection_head.layers" not in str(err.value)  # the online network's BatchNorm does not count
    assert all(torch.equal(v, _state(bn)[0][k]) for k, v in before[0].items())  # the refusal left no trace
    bn.backbone_momentum.eval(), bn.projection_head_momentum.eval()  # running statistics: per sample again
    (x0, _), (t0, _) = _criterion("byol").select(views, bn, bn.forward_momentum, return_target_out=True)
    torch.testing.assert_close(t0, bn.forward_momentum(x0), rtol=1e-5, atol=1e-6)
    drop = Momentum(dropout=0.1)
    with pytest.raises(ValueError, match=r"Dropout, p=0\.1"):
        _criterion("byol").select(views, drop, drop.forward_momentum, return_target_out=True)
    ok = Momentum()
    with pytest.raises(ValueError, match=r"full resolution \(resolution_scale=1\.0, got 0\.5\)"):
        HVSLoss(NegativeCosineSimilarity(), n_views=4, resolution_scale=0.5).select(views, ok, ok.forward_momentum, return_target_out=True)
    with pytest.raises(ValueError, match="needs the momentum/target forward"):
        HVSLoss(NegativeCosineSimilarity(), n_views=4).select(views, lambda x: (ok(x), ok(x)), modules=[ok], return_target_out=True)
    with pytest.raises(ValueError, match="cannot be combined with score_layer"):
        HVSLoss(NegativeCosineSimilarity(), n_views=4, score_layer="backbone.0").select(
            views, ok, ok.forward_momentum, return_target_out=True
        )
    with pytest.raises(ValueError, match="drop train_views"):
        _criterion("byol").select(views, ok, ok.forward_momentum, return_target_out=True, train_views=views)
    # a plain function works too: the modules the target forward ran are what is checked
    (x0, _), (t0, _) = _criterion("byol").select(views, ok, lambda x: ok.forward_momentum(x), return_target_out=True)
    torch.testing.assert_close(t0, ok.forward_momentum(x0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="use return_teacher_out=True"):
        HVSLoss(DINOLoss(output_dim=D)).select(views, ok, ok.forward_momentum, return_target_out=True)
