"""More lightly losses with the real lightly: DCLLoss, DCLWLoss, MACLLoss, TiCoLoss, DirectCLRLoss
(exact per pair when every sample is on it, float64), the labelled invariance proxy for
BarlowTwinsLoss / VICRegLoss (off unless proxy=True), real training steps and bitwise state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

lightly = pytest.importorskip("lightly")
from lightly.loss import (  # noqa: E402
    BarlowTwinsLoss,
    DCLLoss,
    DCLWLoss,
    DirectCLRLoss,
    MACLLoss,
    NTXentLoss,
    TiCoLoss,
    VICRegLoss,
)
from lightly.loss.vicreg_loss import invariance_loss  # noqa: E402
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402

from hvs_plugins import all_pairs  # noqa: E402
from hvs_plugins.adapters.lightly import HVSLoss, supported_losses  # noqa: E402
from hvs_plugins.adapters.lightly.loss import lookup  # noqa: E402

torch.set_num_threads(1)
N, M, D = 4, 10, 12


def _z(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*(shape or (N, M, D)), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _worst(losses: torch.Tensor, pairs: torch.Tensor, host) -> float:
    return max(abs(float(losses[row].mean()) - float(host(k, l))) for row, (k, l) in enumerate(pairs.tolist()))


@pytest.mark.parametrize(
    "crit",
    [DCLLoss(temperature=0.2), DCLWLoss(temperature=0.2, sigma=0.5), DCLLoss(weight_fn=lambda a, b: ((a - b) ** 2).sum(1))],
    ids=["dcl", "dclw", "dcl-weight-fn"],
)
def test_dcl_exact_per_pair(crit):
    z = _z(0)
    pairs = all_pairs(N)
    losses = lookup(crit).fn(crit, [z], None, pairs)
    worst = _worst(losses, pairs, lambda k, l: crit(z[k], z[l]))
    print(f"{type(crit).__name__} float64 worst abs diff: {worst:.2e}")
    assert worst < 1e-12, worst


def test_macl_exact_per_pair():
    crit = MACLLoss(temperature=0.2, alpha=0.5, A_0=0.1)
    z = _z(1)
    pairs = all_pairs(N)
    worst = _worst(lookup(crit).fn(crit, [z], None, pairs), pairs, lambda k, l: crit(z[k], z[l]))
    print(f"MACLLoss float64 worst abs diff: {worst:.2e}")
    assert worst < 1e-12, worst


@pytest.mark.parametrize("warm", [False, True])
def test_tico_exact_per_ordered_pair_and_covariance_read_only(warm):
    crit = TiCoLoss(beta=0.9, rho=8.0)
    if warm:  # a covariance from an earlier step
        crit(_z(7, M, D), _z(8, M, D))
    c_before = None if crit.C is None else crit.C.clone()
    za, zb = _z(2), _z(3)
    hvs = HVSLoss(crit, n_views=N)
    assert hvs.selector.pairs.shape[0] == N * (N - 1)  # ordered: z_a's covariance makes it asymmetric
    losses = hvs.spec.fn(crit, [za], [zb], hvs.selector.pairs)
    assert (crit.C is None) == (c_before is None) and (c_before is None or torch.equal(crit.C, c_before))

    def host(k, l):
        return copy.deepcopy(crit)(za[k], zb[l])  # forward updates C

    worst = _worst(losses, hvs.selector.pairs, host)
    print(f"TiCoLoss float64 worst abs diff (warm={warm}): {worst:.2e}")
    assert worst < 1e-12, worst


def test_directclr_exact_on_its_first_dimensions():
    crit = DirectCLRLoss(loss_dim=5, temperature=0.3)
    z = _z(4, N, M, 3, 2, 2)  # a feature map: flattened, then its first loss_dim entries
    pairs = all_pairs(N)
    assert lookup(crit).fn.__name__ == "_directclr"  # not NTXentLoss's (full-dimension) pair loss
    worst = _worst(lookup(crit).fn(crit, [z], None, pairs), pairs, lambda k, l: crit(z[k], z[l]))
    print(f"DirectCLRLoss worst abs diff: {worst:.2e}")
    assert worst < 1e-5, worst  # lightly's NT-Xent path is float32 in the core, as for NTXentLoss


def test_proxy_off_unless_asked_and_labelled():
    for crit in (BarlowTwinsLoss(), VICRegLoss()):
        with pytest.raises(
            NotImplementedError, match=r"(?s)no per-sample loss for .*not sample-decomposable.*proxy=True.*register_pair_loss"
        ):
            HVSLoss(crit, n_views=N)
        hvs = HVSLoss(crit, n_views=N, proxy=True)
        assert hvs.scoring == "proxy"
    assert HVSLoss(DCLLoss(), n_views=N).scoring == "exact"
    with pytest.raises(ValueError, match="drop proxy=True"):
        HVSLoss(NTXentLoss(), n_views=N, proxy=True)
    # what the proxy is: VICReg's invariance term per sample (mean over the batch == lightly's term)
    z = _z(5)
    pairs = all_pairs(N)
    hvs = HVSLoss(VICRegLoss(), n_views=N, proxy=True)
    worst = _worst(hvs.spec.fn(hvs.criterion, [z], None, pairs), pairs, lambda k, l: invariance_loss(z[k], z[l]))
    assert worst < 1e-6
    names = supported_losses()
    for name in ("DCLLoss", "DCLWLoss", "MACLLoss", "TiCoLoss", "DirectCLRLoss"):
        assert name in names


# ------------------------------------------------------------------ real training steps
class Net(nn.Module):
    def __init__(self, dim: int = D) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, dim))
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)

    def forward(self, x):
        return self.head(self.backbone(x))

    def forward_momentum(self, x):
        return self.head_momentum(self.backbone_momentum(x)).detach()


def _full_state(*modules):
    return [{k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]} for m in modules]


def _assert_same(before, *modules):
    for snap, m in zip(before, modules):
        now = dict([*m.named_parameters(), *m.named_buffers()])
        assert snap.keys() == now.keys() and all(torch.equal(snap[k], now[k]) for k in snap)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DCLLoss(),
        lambda: DCLWLoss(),
        lambda: MACLLoss(),
        lambda: DirectCLRLoss(loss_dim=6),
        lambda: TiCoLoss(),
        lambda: BarlowTwinsLoss(),
        lambda: VICRegLoss(),
    ],
    ids=["dcl", "dclw", "macl", "directclr", "tico", "barlow-proxy", "vicreg-proxy"],
)
def test_training_step_state_untouched(make):
    torch.manual_seed(0)
    model, crit = Net(), make()
    momentum = isinstance(crit, TiCoLoss)
    if momentum:
        crit(torch.randn(8, D), torch.randn(8, D))  # a running covariance from an earlier step
    c_before = crit.C.clone() if momentum else None
    hvs = HVSLoss(crit, n_views=4, proxy=isinstance(crit, (BarlowTwinsLoss, VICRegLoss)))
    views = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    snap, rng = _full_state(model, hvs), torch.get_rng_state()
    x0, x1 = hvs.select(views, model, model.forward_momentum if momentum else None)
    _assert_same(snap, model, hvs)
    assert torch.equal(rng, torch.get_rng_state())
    if momentum:
        assert torch.equal(crit.C, c_before)
    chosen = hvs.last_selection.chosen
    for i in range(8):
        assert torch.equal(x0[i], views[chosen[i, 0]][i]) and torch.equal(x1[i], views[chosen[i, 1]][i])
    if momentum:
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        loss = hvs(model(x0), model.forward_momentum(x1))
        assert not torch.equal(crit.C, c_before)  # the training step updates the covariance
    else:
        loss = hvs(model(x0), model(x1))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(b, p) for b, p in zip(before, params))
