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
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
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
    return SwaVTransform(crop_sizes=(16, 8), crop_counts=(2, n_low), crop_min_scales=(0.5, 0.2),
                         crop_max_scales=(1.0, 0.5), gaussian_blur=0.0)


@pytest.mark.parametrize("queue_length", [0, 24])
def test_swav_every_combination_exact_when_the_batch_shares_it(queue_length):
    """Mean of HVS's per-sample losses == lightly SwaVLoss on that combination (every sample on it)."""
    torch.manual_seed(0)
    model = SwaV(queue_length)
    model.prototypes.normalize()
    views = batch_of(CandidateViews(swav_transform()))
    assert len(views) == 4 + 4
    hvs = HVSLoss(SwaVLoss(), cap=10 ** 6)  # cap >= size: every combination, in flat order
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
    exact, full = HVSLoss(SwaVLoss(), exact=True), HVSLoss(SwaVLoss(), cap=10 ** 6)
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
    assert "SwaVLoss" in supported_losses()
