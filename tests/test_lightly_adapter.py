"""lightly adapter with the real lightly: exactness per loss, real HVS training steps for SimSiam,
SimCLR, BYOL, MoCo (memory bank) and DINO, and side-effect freedom of the selection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

lightly = pytest.importorskip("lightly")
from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import (  # noqa: E402
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.transforms import BYOLTransform, SimCLRTransform, SimSiamTransform  # noqa: E402
from lightly.transforms.dino_transform import DINOTransform  # noqa: E402
from lightly.transforms.moco_transform import MoCoV2Transform  # noqa: E402
from PIL import Image  # noqa: E402

from hvs_plugins import CombinationSpace  # noqa: E402
from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss, register_pair_loss, supported_losses  # noqa: E402
from hvs_plugins.adapters.lightly.loss import lookup  # noqa: E402
from lightly_models import BYOL, SimSiam, backbone  # noqa: E402

torch.set_num_threads(1)
N, M, D = 4, 12, 16


# ------------------------------------------------------------------ helpers
def images(n: int = 16, size: int = 16, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def loader(transform, n: int = 16, batch: int = 8):
    data = [(transform(im), 0) for im in images(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def snapshot(*modules: nn.Module) -> list[dict]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_unchanged(before: list[dict], *modules: nn.Module) -> None:
    for snap, m in zip(before, modules):
        now = m.state_dict()
        assert snap.keys() == now.keys()
        for k in snap:
            assert torch.equal(snap[k], now[k]), f"{type(m).__name__}.{k} changed during selection"


class SimCLR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.projection_head = SimCLRProjectionHead(8, 16, D)

    def forward(self, x):
        return self.projection_head(self.backbone(x))


class MoCo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.projection_head = MoCoProjectionHead(8, 16, D)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.projection_head(self.backbone(x))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


class DINO(nn.Module):
    def __init__(self, out_dim: int = 32) -> None:
        super().__init__()
        self.student_backbone = backbone()
        self.student_head = DINOProjectionHead(8, 16, 8, out_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        self.teacher_head = DINOProjectionHead(8, 16, 8, out_dim)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x):
        return self.student_head(self.student_backbone(x))

    def forward_teacher(self, x):
        return self.teacher_head(self.teacher_backbone(x))


# ------------------------------------------------------------------ exactness: mean of per-sample == lightly
def _pairs_of(hvs: HVSLoss) -> torch.Tensor:
    return hvs.pairs


def test_negative_cosine_simsiam_exact():
    torch.manual_seed(0)
    z, p = torch.randn(N, M, D), torch.randn(N, M, D)
    crit = NegativeCosineSimilarity()
    hvs = HVSLoss(crit, n_views=N)
    losses = lookup(crit).fn(crit, [z, p], None, hvs.pairs)
    for row, (k, l) in enumerate(hvs.pairs.tolist()):
        ref = 0.5 * (crit(z[k], p[l]) + crit(z[l], p[k]))  # lightly's SimSiam example
        assert torch.allclose(losses[row].mean(), ref, atol=1e-6)


def test_negative_cosine_byol_exact():
    torch.manual_seed(1)
    p, z = torch.randn(N, M, D), torch.randn(N, M, D)
    crit = NegativeCosineSimilarity()
    hvs = HVSLoss(crit, n_views=N, groups="interleaved")
    assert hvs.pairs.tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]
    losses = lookup(crit).fn(crit, [p], [z], hvs.pairs)
    for row, (k, l) in enumerate(hvs.pairs.tolist()):
        ref = 0.5 * (crit(p[k], z[l]) + crit(p[l], z[k]))  # lightly's BYOL example
        assert torch.allclose(losses[row].mean(), ref, atol=1e-6)


def test_ntxent_simclr_exact():
    torch.manual_seed(2)
    z = torch.randn(N, M, D)
    crit = NTXentLoss(temperature=0.3)
    hvs = HVSLoss(crit, n_views=N)
    losses = lookup(crit).fn(crit, [z], None, hvs.pairs)
    for row, (k, l) in enumerate(hvs.pairs.tolist()):
        assert torch.allclose(losses[row].mean(), crit(z[k], z[l]), atol=1e-5)


def test_ntxent_moco_memory_bank_exact_and_read_only():
    torch.manual_seed(3)
    q, key = torch.randn(N, M, D), torch.randn(N, M, D)
    crit = NTXentLoss(temperature=0.2, memory_bank_size=(32, D))
    bank = crit.memory_bank.bank.clone()
    hvs = HVSLoss(crit, n_views=N)
    assert hvs.pairs.shape[0] == N * (N - 1)  # ordered: query view k, key view l
    losses = lookup(crit).fn(crit, [q], [key], hvs.pairs)
    for row, (k, l) in enumerate(hvs.pairs.tolist()):
        assert torch.allclose(losses[row].mean(), crit(q[k], key[l]), atol=1e-5)  # no grad: bank not updated
    assert torch.equal(crit.memory_bank.bank, bank)


def test_dino_combination_exact():
    torch.manual_seed(4)
    K, n_local = 32, 3
    crit = DINOLoss(output_dim=K, warmup_teacher_temp_epochs=4)
    crit.center.copy_(torch.randn_like(crit.center) * 0.1)
    teacher = torch.randn(4, M, K, dtype=torch.float64)
    student = torch.randn(4 + 2 * n_local, M, K, dtype=torch.float64)
    from hvs_plugins import dino_cross_entropy

    hvs = HVSLoss(crit)
    epoch = 1
    ce = dino_cross_entropy(teacher, student, crit.center, hvs._teacher_temp(epoch, None), crit.student_temp)
    space = CombinationSpace(4, 2 * n_local, n_local, "cross")
    combos = space.sample(10, torch.Generator().manual_seed(0))
    values = space.evaluate(ce, combos)  # [C, M]
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        locs = (combos.locals_[c] + 4).tolist()
        ref_crit = copy.deepcopy(crit)  # DINOLoss.forward updates its center
        ref = ref_crit([teacher[ga], teacher[gb]], [student[ga], student[gb]] + [student[j] for j in locs], epoch=epoch)
        assert torch.allclose(values[c].mean().double(), ref, rtol=1e-4)


# ------------------------------------------------------------------ transforms
def test_candidate_views_layouts():
    img = images(1)[0]
    t = CandidateViews(SimSiamTransform(input_size=8), n_views=4, return_boxes=True)
    views, boxes = t(img)
    assert len(views) == 4 and views[0].shape == (3, 8, 8) and boxes.shape == (4, 4)
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] > 0).all() and t.groups is None
    t = CandidateViews(BYOLTransform(view_1_transform=None, view_2_transform=None), n_views=4)
    assert len(t(img)) == 4 and t.groups == [[0, 2], [1, 3]]
    t = CandidateViews(DINOTransform(global_crop_size=16, local_crop_size=8, n_local_views=3), return_boxes=True)
    views, boxes = t(img)
    assert [v.shape[-1] for v in views] == [16] * 4 + [8] * 6 and boxes.shape == (10, 4)
    with pytest.raises(ValueError, match="n_views"):
        CandidateViews(SimSiamTransform(input_size=8), n_views=1)


# ------------------------------------------------------------------ errors and registry
def test_unsupported_loss_error_names_fix():
    with pytest.raises(NotImplementedError) as err:
        HVSLoss(nn.MSELoss())
    msg = str(err.value)
    for name in ("NegativeCosineSimilarity", "NTXentLoss", "DINOLoss", "register_pair_loss(MSELoss"):
        assert name in msg
    assert set(supported_losses()) >= {"NegativeCosineSimilarity", "NTXentLoss", "DINOLoss"}


def test_register_custom_loss_and_view_count_error():
    class MyLoss(nn.Module):
        def forward(self, a, b):
            return (a - b).pow(2).sum(-1).mean()

    register_pair_loss(MyLoss, lambda crit, online, target, pairs: (online[0][pairs[:, 0]] - online[0][pairs[:, 1]]).pow(2).sum(-1))
    model = SimCLR()
    hvs = HVSLoss(MyLoss(), n_views=3)
    views = [torch.randn(6, 3, 8, 8) for _ in range(3)]
    x0, x1 = hvs.select(views, model)
    assert x0.shape == (6, 3, 8, 8)
    z = torch.stack([model(v) for v in views]).detach()  # same per-view BN batches as the selection
    losses = (z[hvs.pairs[:, 0]] - z[hvs.pairs[:, 1]]).pow(2).sum(-1)
    assert torch.allclose(hvs.last_selection.pair_losses, losses, atol=1e-5)
    assert torch.equal(hvs.last_selection.index, losses.argmax(0))
    with pytest.raises(ValueError, match="CandidateViews"):
        hvs.select(views[:2], model)


# ------------------------------------------------------------------ real training steps
def _train_step(model, loss, params):
    opt = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_simsiam_training_step():
    torch.manual_seed(0)
    model, crit = SimSiam(), HVSLoss(NegativeCosineSimilarity(), n_views=4)
    (views, boxes), _ = next(iter(loader(CandidateViews(SimSiamTransform(input_size=8), 4, return_boxes=True))))
    snap = snapshot(model)
    rng = torch.get_rng_state()
    x0, x1 = crit.select(views, model, boxes=boxes)
    assert_unchanged(snap, model)
    assert torch.equal(rng, torch.get_rng_state())
    st = crit.last_stats
    assert st.hardness_gap >= 0 and st.lowest_iou_fraction is not None
    chosen = crit.last_selection.chosen
    for i in range(x0.shape[0]):
        assert torch.equal(x0[i], views[chosen[i, 0]][i]) and torch.equal(x1[i], views[chosen[i, 1]][i])
    # the selected losses are the per-sample losses of the chosen pair (per-view BN batches as in training)
    with torch.no_grad():
        outs = [model(v) for v in views]
    model.load_state_dict(snap[0])
    for i in range(x0.shape[0]):
        k, l = chosen[i].tolist()
        (zk, pk), (zl, pl) = outs[k], outs[l]
        ref = 0.5 * (NegativeCosineSimilarity()(zk[i : i + 1], pl[i : i + 1]) + NegativeCosineSimilarity()(zl[i : i + 1], pk[i : i + 1]))
        assert torch.allclose(crit.last_selection.selected_losses[i], ref, atol=1e-5)
    z0, p0 = model(x0)
    z1, p1 = model(x1)
    _train_step(model, 0.5 * (crit(z0, p1) + crit(z1, p0)), list(model.parameters()))


def test_byol_training_step_momentum_untouched():
    torch.manual_seed(0)
    model = BYOL()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved")
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    t = CandidateViews(BYOLTransform(BYOLView1Transform(input_size=8), BYOLView2Transform(input_size=8)), 4)
    views, _ = next(iter(loader(t)))
    snap = snapshot(model)
    x0, x1 = crit.select(views, model, model.forward_momentum)
    assert_unchanged(snap, model)
    chosen = crit.last_selection.chosen
    assert set(chosen[:, 0].tolist()) <= {0, 2} and set(chosen[:, 1].tolist()) <= {1, 3}
    update_momentum(model.backbone, model.backbone_momentum, m=0.99)
    p0, p1 = model(x0), model(x1)
    z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
    _train_step(model, 0.5 * (crit(p0, z1) + crit(p1, z0)), [p for p in model.parameters() if p.requires_grad])


def test_simclr_training_step():
    torch.manual_seed(0)
    model, crit = SimCLR(), HVSLoss(NTXentLoss(), n_views=4)
    views, _ = next(iter(loader(CandidateViews(SimCLRTransform(input_size=8, gaussian_blur=0.0), 4))))
    snap = snapshot(model)
    x0, x1 = crit.select(views, model)
    assert_unchanged(snap, model)
    _train_step(model, crit(model(x0), model(x1)), list(model.parameters()))


def test_moco_training_step_bank_read_only():
    torch.manual_seed(0)
    model = MoCo()
    crit = HVSLoss(NTXentLoss(memory_bank_size=(32, D)), n_views=4)
    views, _ = next(iter(loader(CandidateViews(MoCoV2Transform(input_size=8, gaussian_blur=0.0), 4))))
    mb = crit.criterion.memory_bank
    bank, ptr = mb.bank.clone(), mb.bank_ptr.clone()  # non-persistent buffers: not in state_dict
    snap = snapshot(model)
    x_query, x_key = crit.select(views, model, model.forward_momentum)
    assert_unchanged(snap, model)  # momentum network, BN statistics
    assert torch.equal(mb.bank, bank) and torch.equal(mb.bank_ptr, ptr)  # memory bank read only
    loss = crit(model(x_query), model.forward_momentum(x_key))
    _train_step(model, loss, [p for p in model.parameters() if p.requires_grad])
    assert not torch.equal(mb.bank, bank)  # the training step enqueues


@pytest.mark.parametrize("exact", [False, True])
def test_dino_training_step_center_untouched(exact):
    torch.manual_seed(0)
    model = DINO()
    crit = HVSLoss(DINOLoss(output_dim=32, warmup_teacher_temp_epochs=2), exact=exact, cap=16)
    t = CandidateViews(DINOTransform(global_crop_size=16, local_crop_size=8, n_local_views=2, gaussian_blur=(0, 0, 0)))
    views, _ = next(iter(loader(t)))
    assert len(views) == 4 + 4
    with torch.no_grad():
        crit.criterion.center.add_(0.01)
    snap = snapshot(model, crit)
    out = crit.select(views, model, model.forward_teacher, epoch=0)
    assert_unchanged(snap, model, crit)  # DINO center, teacher, BN statistics
    assert len(out) == 2 + 2 and out[0].shape[-1] == 16 and out[2].shape[-1] == 8
    choice = crit.last_selection
    assert choice.n_evaluated == (4 * 6 if exact else 16)  # 4 cross global pairs x C(4, 2) locals
    for i in range(out[0].shape[0]):
        assert torch.equal(out[0][i], views[choice.globals_[i, 0]][i])
        assert torch.equal(out[2][i], views[4 + choice.locals_[i, 0]][i])
    teacher_out = [model.forward_teacher(v) for v in out[:2]]
    student_out = [model(v) for v in out]
    loss = crit(teacher_out, student_out, epoch=0)
    assert not torch.equal(crit.criterion.center, snap[1]["center"])  # training updates the center
    _train_step(model, loss, [p for p in model.parameters() if p.requires_grad])


def test_dino_exact_beats_capped_search():
    torch.manual_seed(0)
    model = DINO()
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)] + [torch.randn(6, 3, 8, 8) for _ in range(6)]
    exact = HVSLoss(DINOLoss(output_dim=32), exact=True)
    capped = HVSLoss(DINOLoss(output_dim=32), cap=20)
    exact.select(views, model, model.forward_teacher)
    capped.select(views, model, model.forward_teacher)
    assert (exact.last_selection.losses >= capped.last_selection.losses - 1e-6).all()


class LayerNormDINO(DINO):
    """DINO with a BatchNorm-free backbone (LayerNorm, as a ViT): per-sample teacher outputs."""

    def __init__(self, out_dim: int = 32, dropout: float = 0.0) -> None:
        super().__init__(out_dim)
        self.student_backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(8),
            nn.Dropout(dropout),
        )
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        deactivate_requires_grad(self.teacher_backbone)


def _dino_candidates(m: int = 6) -> list:
    return [torch.randn(m, 3, 16, 16) for _ in range(4)] + [torch.randn(m, 3, 8, 8) for _ in range(4)]


@pytest.mark.parametrize("exact", [False, True])
def test_dino_teacher_outputs_are_reused_exactly(exact):
    torch.manual_seed(0)
    model, views = LayerNormDINO(), _dino_candidates()
    crit = HVSLoss(DINOLoss(output_dim=32, warmup_teacher_temp_epochs=2), exact=exact, cap=16)
    with torch.no_grad():
        crit.criterion.center.add_(0.01)
    snap = snapshot(model, crit)
    out, teacher_out = crit.select(views, model, model.forward_teacher, epoch=0, return_teacher_out=True)
    assert_unchanged(snap, model, crit)
    assert len(out) == 2 + 2 and len(teacher_out) == 2
    ref = [model.forward_teacher(v) for v in out[:2]]  # what the training step would compute
    for got, want in zip(teacher_out, ref):
        assert got.shape == want.shape == (6, 32)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    student_out = [model(v) for v in out]
    reference_loss = copy.deepcopy(crit.criterion)(ref, student_out, epoch=0)
    torch.testing.assert_close(crit(teacher_out, student_out, epoch=0), reference_loss, rtol=1e-5, atol=1e-6)


def test_dino_teacher_outputs_on_schedule_off_steps():
    torch.manual_seed(0)
    model, views = LayerNormDINO(), _dino_candidates()
    crit = HVSLoss(DINOLoss(output_dim=32), every=2)
    crit.select(views, model, model.forward_teacher, return_teacher_out=True)  # step 0 selects
    out, teacher_out = crit.select(views, model, model.forward_teacher, return_teacher_out=True)  # step 1: off
    assert torch.equal(out[0], views[0]) and torch.equal(out[1], views[1])
    for got, v in zip(teacher_out, out[:2]):
        assert torch.equal(got, model.forward_teacher(v))


def test_dino_teacher_reuse_refuses_inexact_settings():
    views = _dino_candidates()
    bn = DINO()  # BatchNorm backbone in train mode: batch statistics differ between the two forwards
    with pytest.raises(ValueError, match=r"return_teacher_out=True needs a teacher .* teacher_backbone\.1 \(BatchNorm2d\)"):
        HVSLoss(DINOLoss(output_dim=32)).select(views, bn, bn.forward_teacher, return_teacher_out=True)
    drop = LayerNormDINO(dropout=0.1)
    with pytest.raises(ValueError, match=r"Dropout, p=0\.1"):
        HVSLoss(DINOLoss(output_dim=32)).select(views, drop, drop.forward_teacher, return_teacher_out=True)
    drop.eval()  # no dropout in eval mode: reuse is exact again
    HVSLoss(DINOLoss(output_dim=32)).select(views, drop, drop.forward_teacher, return_teacher_out=True)
    ln = LayerNormDINO()
    with pytest.raises(ValueError, match=r"needs selection at full resolution \(resolution_scale=1\.0, got 0\.5\)"):
        HVSLoss(DINOLoss(output_dim=32), resolution_scale=0.5).select(views, ln, ln.forward_teacher, return_teacher_out=True)
    with pytest.raises(ValueError, match=r"must check the teacher network, but the teacher forward is a plain function"):
        HVSLoss(DINOLoss(output_dim=32)).select(views, lambda x: ln(x), lambda x: ln.forward_teacher(x), return_teacher_out=True)
    HVSLoss(DINOLoss(output_dim=32)).select(views, lambda x: ln(x), lambda x: ln.forward_teacher(x), return_teacher_out=True, modules=[ln])
    with pytest.raises(ValueError, match="return_teacher_out=True is for DINOLoss"):
        HVSLoss(NegativeCosineSimilarity()).select(views[:4], SimSiam(), return_teacher_out=True)


def test_candidate_views_picklable_for_spawned_workers():
    import pickle

    t = CandidateViews(SimSiamTransform(input_size=8), n_views=4, return_boxes=True)
    views, boxes = pickle.loads(pickle.dumps(t))(images(1)[0])
    assert len(views) == 4 and torch.isfinite(boxes).all()


def test_select_accepts_views_with_boxes():
    torch.manual_seed(0)
    model, crit = SimSiam(), HVSLoss(NegativeCosineSimilarity(), n_views=4)
    batch = next(iter(loader(CandidateViews(SimSiamTransform(input_size=8), 4, return_boxes=True))))
    x0, x1 = crit.select(batch[0], model)  # batch[0] == [views, boxes]
    assert x0.shape == (8, 3, 8, 8) and crit.last_stats.lowest_iou_fraction is not None


def test_cost_knobs_every_start_epoch_and_checkpointed_schedule():
    torch.manual_seed(0)
    model = SimSiam()
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)]
    hvs = HVSLoss(NegativeCosineSimilarity(), n_views=4, every=2, start_epoch=1)
    x0, x1 = hvs.select(views, model, epoch=0)  # before start_epoch: plain first pair, no scoring
    assert hvs.last_selection is None and torch.equal(x0, views[0]) and torch.equal(x1, views[1])
    hvs.select(views, model, epoch=1)  # call 1: odd step, off
    assert hvs.last_selection is None
    hvs.select(views, model, epoch=1)  # call 2: selects
    assert hvs.last_selection is not None
    with pytest.raises(ValueError, match="probability"):
        HVSLoss(NegativeCosineSimilarity(), probability=1.5)
    p = HVSLoss(NegativeCosineSimilarity(), probability=0.5, seed=1)
    state = p.selector_state_dict()
    first = [p._active(0) for _ in range(30)]
    p.load_selector_state_dict(state)
    assert [p._active(0) for _ in range(30)] == first and 0 < sum(first) < 30
