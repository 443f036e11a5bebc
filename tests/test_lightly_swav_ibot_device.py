"""SwAV, iBOT and the extra two-view losses on every device (``device`` fixture: cpu, and cuda where
present): selection with the networks, losses, queue and masks on the device gives the CPU's
scores, and leaves every parameter, buffer, center, queue and the RNG bitwise unchanged."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lightly")
from lightly.loss import DCLWLoss, SwaVLoss, TiCoLoss  # noqa: E402

from hvs_plugins.adapters.lightly import HVSLoss  # noqa: E402

from test_lightly_swav_ibot import IBOT, SwaV, assert_bitwise_unchanged, full_state, ibot_criterion  # noqa: E402


def _rng(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _scores_on(device, make_model, make_loss, call):
    """Selection scores on ``device`` (the model and loss copied there) and the CPU reference."""
    out = {}
    for dev in (torch.device("cpu"), device):
        torch.manual_seed(0)  # the same weights on both devices (weight-normed heads do not deepcopy)
        m, crit = make_model().to(dev), HVSLoss(make_loss().to(dev), cap=10**6)
        snap, rng = full_state(m, crit), _rng(dev)
        call(crit, m, dev)
        assert_bitwise_unchanged(snap, m, crit)
        now = _rng(dev)
        assert torch.equal(rng[0], now[0]) and (rng[1] is None or torch.equal(rng[1], now[1]))
        out[dev.type] = crit.last_selection.candidate_losses
    return out


def test_swav_with_queue_on_device(device):
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 16, 16, generator=g) for _ in range(4)] + [torch.randn(6, 3, 8, 8, generator=g) for _ in range(4)]

    def call(crit, m, dev):
        assert crit.select(views, m, queue=m.queue_scores())[0].device.type == dev.type

    out = _scores_on(device, lambda: SwaV(queue_length=16), SwaVLoss, call)
    torch.testing.assert_close(out[device.type].cpu(), out["cpu"], rtol=1e-4, atol=1e-5)


def test_ibot_on_device(device):
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(5, 3, 16, 16, generator=g) for _ in range(4)] + [torch.randn(5, 3, 8, 8, generator=g) for _ in range(4)]
    masks = [torch.rand(5, 4, 4, generator=g) < 0.4 for _ in range(4)]

    def call(crit, m, dev):
        out, ms = crit.select(views, m.student, m.teacher, masks=masks, epoch=0)
        assert out[0].device.type == dev.type and ms[0].device.type == dev.type

    out = _scores_on(device, IBOT, ibot_criterion, call)
    torch.testing.assert_close(out[device.type].cpu(), out["cpu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_loss", [DCLWLoss, TiCoLoss], ids=["dclw", "tico"])
def test_two_view_losses_on_device(device, make_loss):
    from test_lightly_losses_extra import Net

    views = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    res = {}
    for dev in (torch.device("cpu"), device):
        torch.manual_seed(0)
        m, crit = Net().to(dev), HVSLoss(make_loss(), n_views=4)
        snap, rng = full_state(m, crit), _rng(dev)
        crit.select(views, m, m.forward_momentum if make_loss is TiCoLoss else None)
        assert_bitwise_unchanged(snap, m, crit)
        assert torch.equal(rng[0], _rng(dev)[0])
        res[dev.type] = crit.last_selection.pair_losses
    torch.testing.assert_close(res[device.type].cpu(), res["cpu"], rtol=1e-4, atol=1e-5)
