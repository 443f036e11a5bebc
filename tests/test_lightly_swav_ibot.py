"""SwAV and iBOT with the real lightly: exactness against SwaVLoss / DINOLoss + IBOTPatchLoss,
real HVS training steps, and bitwise side-effect freedom (parameters, buffers, queues,
prototypes, centers, global RNG) of the selection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

lightly = pytest.importorskip("lightly")
from lightly.loss import SwaVLoss  # noqa: E402
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes  # noqa: E402
from lightly.models.modules.memory_bank import MemoryBankModule  # noqa: E402
from lightly.transforms.swav_transform import SwaVTransform  # noqa: E402
from PIL import Image  # noqa: E402

from hvs_plugins import CombinationSpace  # noqa: E402
from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss, supported_losses  # noqa: E402

torch.set_num_threads(1)
D, K = 16, 12


def images(n: int = 8, size: int = 16, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def batch_of(transform, n: int = 8) -> list:
    data = [(transform(im), 0) for im in images(n)]
    return next(iter(torch.utils.data.DataLoader(data, batch_size=n)))[0]


def full_state(*modules: nn.Module) -> list[dict]:
    """Every parameter and buffer (non-persistent ones too: queues), cloned."""
    return [{k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]} for m in modules]


def assert_bitwise_unchanged(before: list[dict], *modules: nn.Module) -> None:
    for snap, m in zip(before, modules):
        now = dict([*m.named_parameters(), *m.named_buffers()])
        assert snap.keys() == now.keys()
        for k in snap:
            assert torch.equal(snap[k], now[k]), f"{type(m).__name__}.{k} changed during selection"


def train_step(loss: torch.Tensor, params: list) -> None:
    opt = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


# ------------------------------------------------------------------ SwAV
class SwaV(nn.Module):
    """lightly's SwaV example model (queue variant), tiny."""

    def __init__(self, queue_length: int = 0) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projection_head = SwaVProjectionHead(8, 16, D)
        self.prototypes = SwaVPrototypes(D, n_prototypes=K)
        self.queues = nn.ModuleList([MemoryBankModule(size=(queue_length, D)) for _ in range(2)]) if queue_length else None

    def features(self, x):
        return F.normalize(self.projection_head(self.backbone(x)), dim=1)

    def forward(self, x):  # the per-view selection forward: prototype scores [B, K]
        return self.prototypes(self.features(x))

    @torch.no_grad()
    def queue_scores(self):  # what the training step passes as queue_outputs (before enqueueing)
        return [self.prototypes(q.bank) for q in self.queues]


def swav_transform(n_low: int = 2):
    return SwaVTransform(
        crop_sizes=(16, 8), crop_counts=(2, n_low), crop_min_scales=(0.5, 0.2), crop_max_scales=(1.0, 0.5), gaussian_blur=0.0
    )


@pytest.mark.parametrize("queue_length", [0, 24])
def test_swav_every_combination_exact_when_the_batch_shares_it(queue_length):
    """Mean of HVS's per-sample losses == lightly SwaVLoss on that combination (every sample on it)."""
    torch.manual_seed(0)
    model = SwaV(queue_length)
    model.prototypes.normalize()
    views = batch_of(CandidateViews(swav_transform()))
    assert len(views) == 4 + 4
    hvs = HVSLoss(SwaVLoss(), cap=10**6)  # cap >= size: every combination, in flat order
    queue = model.queue_scores() if queue_length else None
    hvs.select(views, model, queue=queue)
    losses = hvs.last_selection.candidate_losses  # [C, M]
    combos = CombinationSpace(4, 4, 2).enumerate_all()
    assert losses.shape == (len(combos), 8) == (4 * 6, 8)
    with torch.no_grad():
        scores = [model(v) for v in views]  # per-view batches, as in the training step
    worst = 0.0
    for c in range(len(combos)):
        ga, gb = combos.globals_[c].tolist()
        ref = SwaVLoss()([scores[ga], scores[gb]], [scores[4 + l] for l in combos.locals_[c].tolist()], queue)
        worst = max(worst, abs(float(losses[c].mean()) - float(ref)))
    print(f"swav lightly worst abs diff (queue={queue_length}): {worst:.2e}")
    assert worst < 2e-6, worst


@pytest.mark.parametrize("exact", [False, True])
def test_swav_training_step_with_queue_state_untouched(exact):
    torch.manual_seed(0)
    model = SwaV(queue_length=24)
    crit = HVSLoss(SwaVLoss(), exact=exact, cap=8)
    views = batch_of(CandidateViews(swav_transform()))
    model.prototypes.normalize()  # the host's step; calling it before select scores with these prototypes
    snap, rng = full_state(model, crit), torch.get_rng_state()
    out = crit.select(views, model, queue=model.queue_scores())
    assert_bitwise_unchanged(snap, model, crit)  # prototypes, queues, BN statistics
    assert torch.equal(rng, torch.get_rng_state())
    assert len(out) == 2 + 2 and out[0].shape[-1] == 16 and out[2].shape[-1] == 8
    choice = crit.last_selection
    assert choice.n_evaluated == (4 * 6 if exact else 8)
    for i in range(8):
        assert torch.equal(out[0][i], views[choice.globals_[i, 0]][i])
        assert torch.equal(out[1][i], views[choice.globals_[i, 1]][i])
        assert torch.equal(out[3][i], views[4 + choice.locals_[i, 1]][i])
    # lightly's swav_queue example step on the selected views
    model.prototypes.normalize()
    high = [model.features(x) for x in out[:2]]
    low = [model.features(x) for x in out[2:]]
    queue = [model.prototypes(q(f, update=True)[1].t()) for q, f in zip(model.queues, high)]
    loss = crit([model.prototypes(f) for f in high], [model.prototypes(f) for f in low], queue)
    bank0 = snap[0]["queues.0.bank"]
    train_step(loss, list(model.parameters()))
    assert not torch.equal(model.queues[0].bank, bank0)  # the training step enqueues


def test_swav_exact_search_is_the_best_combination():
    torch.manual_seed(1)
    model = SwaV()
    views = [torch.randn(6, 3, 16, 16) for _ in range(4)] + [torch.randn(6, 3, 8, 8) for _ in range(6)]
    exact, full = HVSLoss(SwaVLoss(), exact=True), HVSLoss(SwaVLoss(), cap=10**6)
    exact.select(views, model)
    full.select(views, model)
    brute = full.last_selection.candidate_losses.max(0).values
    torch.testing.assert_close(exact.last_selection.losses, brute, rtol=0, atol=1e-6)


def test_swav_two_views_only_and_schedule_off_step():
    torch.manual_seed(2)
    model = SwaV()
    views = batch_of(CandidateViews(swav_transform(n_low=0), n_views=4))
    assert len(views) == 4
    out = HVSLoss(SwaVLoss(), exact=True).select(views, model)
    assert len(out) == 2
    off = HVSLoss(SwaVLoss(), enabled=False).select(views, model)
    assert torch.equal(off[0], views[0]) and torch.equal(off[1], views[1])


def test_swav_bad_input_is_refused():
    model = SwaV(queue_length=8)
    views = [torch.randn(4, 3, 16, 16) for _ in range(4)] + [torch.randn(4, 3, 8, 8) for _ in range(3)]
    with pytest.raises(ValueError, match="2 candidates per low-resolution crop"):
        HVSLoss(SwaVLoss()).select(views, model)
    with pytest.raises(ValueError, match="uses one network"):
        HVSLoss(SwaVLoss()).select(views[:4], model, model)
    with pytest.raises(ValueError, match="queue must hold"):
        HVSLoss(SwaVLoss()).select(views[:4], model, queue=model.queue_scores()[:1])
    with pytest.raises(ValueError, match="global_pairing='cross'"):
        HVSLoss(SwaVLoss(), global_pairing="any").select(views[:4], model, queue=model.queue_scores())
    with pytest.raises(ValueError, match="Multi-head prototypes"):
        HVSLoss(SwaVLoss()).select(views[:4], lambda x: [model(x), model(x)], modules=[model])
    assert "SwaVLoss" in supported_losses()


# ------------------------------------------------------------------ iBOT
from lightly.loss import DINOLoss, IBOTPatchLoss  # noqa: E402
from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTorchvision  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.transforms.ibot_transform import IBOTTransform  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

from hvs_plugins.adapters.lightly import IBOTLoss  # noqa: E402

KI, GRID = 32, 4  # head output dim; 16 px globals / 4 px patches = 4x4 tokens


class IBOT(nn.Module):
    """lightly's iBOT example model (student and teacher ViT + DINO heads shared for [CLS] and
    patches), tiny; teacher/student take a [B, H, W] token mask as the selection forwards."""

    def __init__(self) -> None:
        super().__init__()
        vit = VisionTransformer(image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32)
        self.teacher_backbone = MaskedVisionTransformerTorchvision(vit=vit)
        self.student_backbone = copy.deepcopy(self.teacher_backbone)
        self.teacher_head = DINOProjectionHead(16, 16, 8, KI)
        self.student_head = DINOProjectionHead(16, 16, 8, KI, freeze_last_layer=1)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def teacher(self, x, mask):
        f = self.teacher_backbone.encode(x)
        return self.teacher_head(f[:, 0]), self.teacher_head(f[:, 1:][mask.flatten(1)])

    def student(self, x, mask):
        if mask is None:
            return self.student_head(self.student_backbone.encode(x)[:, 0]), None
        f = self.student_backbone.encode(x, mask=F.pad(mask.flatten(1), (1, 0)))  # no mask on [CLS]
        return self.student_head(f[:, 0]), self.student_head(f[:, 1:][mask.flatten(1)])


def ibot_criterion(**kw) -> IBOTLoss:
    crit = IBOTLoss(DINOLoss(output_dim=KI, warmup_teacher_temp_epochs=3), IBOTPatchLoss(output_dim=KI), **kw)
    with torch.no_grad():  # non-trivial centers, so that reading them is tested
        crit.dino_loss.center.add_(torch.randn(crit.dino_loss.center.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
        crit.patch_loss.center.center.add_(0.05)
    return crit


def ibot_views_and_masks(m: int = 6, seed: int = 0):
    t = IBOTTransform(global_crop_size=16, local_crop_size=8, n_local_views=2, gaussian_blur=(0, 0, 0), solarization_prob=0)
    views = batch_of(CandidateViews(t), n=m)
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.rand(m, GRID, GRID, generator=gen) < 0.4 for _ in range(4)]  # random_block_mask on a 4x4 grid
    masks[0][0] = False  # an image without masked tokens (lightly: batch_mask_ratio < 1)
    return views, masks


def ibot_host_loss(model, crit, views, masks, epoch=None, teacher_temp=None):
    """lightly's iBOT example step (teacher on the concatenated globals, masks applied)."""
    glob, block = torch.cat(views[:2]), torch.cat(masks)
    t_cls, t_patch = model.teacher(glob, block)
    s_cls, s_patch = model.student(glob, block)
    s_loc = [model.student(v, None)[0] for v in views[2:]]
    return crit(t_cls.chunk(2), list(s_cls.chunk(2)) + s_loc, t_patch, s_patch, block, teacher_temp=teacher_temp, epoch=epoch)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0)])
def test_ibot_every_combination_exact(weights):
    torch.manual_seed(0)
    model = IBOT()
    views, masks = ibot_views_and_masks()
    assert len(views) == 4 + 4 and masks[0].any()
    crit = HVSLoss(ibot_criterion(cls_weight=weights[0], patch_weight=weights[1]), cap=10**6)
    crit.select(views, model.student, model.teacher, masks=masks, epoch=1)
    losses = crit.last_selection.candidate_losses  # [C, M], every combination in flat order
    combos = CombinationSpace(4, 4, 2).enumerate_all()
    worst = 0.0
    with torch.no_grad():
        for c in range(len(combos)):
            ga, gb = combos.globals_[c].tolist()
            vs = [views[ga], views[gb]] + [views[4 + l] for l in combos.locals_[c].tolist()]
            ref = ibot_host_loss(model, copy.deepcopy(crit.criterion), vs, [masks[ga], masks[gb]], epoch=1)
            worst = max(worst, abs(float(losses[c].mean()) - float(ref)))
    print(f"ibot lightly worst abs diff (weights={weights}): {worst:.2e}")
    assert worst < 5e-6, worst


@pytest.mark.parametrize("exact", [False, True])
def test_ibot_training_step_centers_untouched(exact):
    torch.manual_seed(0)
    model = IBOT()
    crit = HVSLoss(ibot_criterion(), exact=exact, cap=8)
    views, masks = ibot_views_and_masks(m=8)
    snap, rng = full_state(model, crit), torch.get_rng_state()
    out, chosen_masks = crit.select(views, model.student, model.teacher, masks=masks, teacher_temp=0.05)
    assert_bitwise_unchanged(snap, model, crit)  # both centers, teacher, student
    assert torch.equal(rng, torch.get_rng_state())
    choice = crit.last_selection
    assert choice.n_evaluated == (4 * 6 if exact else 8)
    for i in range(8):
        for j in range(2):
            assert torch.equal(out[j][i], views[choice.globals_[i, j]][i])
            assert torch.equal(chosen_masks[j][i], masks[choice.globals_[i, j]][i])  # each candidate's own mask
    update_momentum(model.student_backbone, model.teacher_backbone, m=0.99)
    loss = ibot_host_loss(model, crit, out, chosen_masks, teacher_temp=0.05)
    assert not torch.equal(crit.criterion.dino_loss.center, snap[1]["criterion.dino_loss.center"])
    assert not torch.equal(crit.criterion.patch_loss.center.center, snap[1]["criterion.patch_loss.center.center"])
    train_step(loss, [p for p in model.parameters() if p.requires_grad])


def test_ibot_exact_search_is_the_best_combination_and_off_steps():
    torch.manual_seed(1)
    model = IBOT()
    views, masks = ibot_views_and_masks(m=6, seed=3)
    exact, full = HVSLoss(ibot_criterion(), exact=True), HVSLoss(ibot_criterion(), cap=10**6)
    exact.select(views, model.student, model.teacher, masks=masks)
    full.select(views, model.student, model.teacher, masks=masks)
    brute = full.last_selection.candidate_losses.max(0).values
    torch.testing.assert_close(exact.last_selection.losses, brute, rtol=0, atol=1e-6)
    out, ms = HVSLoss(ibot_criterion(), enabled=False).select(views, model.student, model.teacher, masks=masks)
    assert len(out) == 4 and torch.equal(out[1], views[1]) and torch.equal(out[2], views[4]) and ms[1] is masks[1]


def test_ibot_chunked_selection_equals_whole_batch_and_stats_off():
    torch.manual_seed(2)
    model = IBOT()
    views, masks = ibot_views_and_masks(m=7, seed=4)
    whole, chunked = HVSLoss(ibot_criterion(), cap=10**6), HVSLoss(ibot_criterion(), cap=10**6, chunk_size=3, stats=False)
    whole.select(views, model.student, model.teacher, masks=masks)
    chunked.select(views, model.student, model.teacher, masks=masks)  # chunks of 3, 4 samples: masks sliced alike
    torch.testing.assert_close(chunked.last_selection.candidate_losses, whole.last_selection.candidate_losses, rtol=1e-5, atol=1e-6)


def test_ibot_bad_input_is_refused():
    model = IBOT()
    views, masks = ibot_views_and_masks(m=4)
    hvs = HVSLoss(ibot_criterion())
    with pytest.raises(ValueError, match="one token mask"):
        hvs.select(views, model.student, model.teacher)
    with pytest.raises(ValueError, match="needs the teacher forward"):
        hvs.select(views, model.student, masks=masks)
    with pytest.raises(ValueError, match=r"bool tensor \[M=4, H, W\]"):
        hvs.select(views, model.student, model.teacher, masks=[m.float() for m in masks])
    with pytest.raises(ValueError, match="resolution_scale=1.0"):
        HVSLoss(ibot_criterion(), resolution_scale=0.5).select(views, model.student, model.teacher, masks=masks)
    with pytest.raises(TypeError, match="DINOLoss and IBOTPatchLoss"):
        IBOTLoss(IBOTPatchLoss(output_dim=KI), DINOLoss(output_dim=KI))
    assert "IBOTLoss" in supported_losses()
