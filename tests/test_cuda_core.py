"""The core on every device (``device`` fixture: cpu always, cuda where present): views and models
on the device, the selector's CPU generator and fallbacks with device losses, bf16 autocast,
resolution_scale, the exact DINO search on device tensors, bitwise state checks, and no host-device
synchronisation inside ``select`` (CUDA: ``torch.cuda.set_sync_debug_mode('error')``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hvs_plugins import (
    CombinationSpace,
    HardViewSelector,
    all_pairs,
    negative_cosine_pair_losses,
    resize_views,
)


class Net(nn.Module):
    """Conv + train-mode BatchNorm + a buffer the forward writes; returns SimSiam's (p, z)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Linear(8, 6)
        self.pred = nn.Linear(6, 6)
        self.register_buffer("seen", torch.zeros(8))

    def forward(self, x):
        h = self.bn(self.conv(x)).relu().mean((2, 3))
        self.seen.add_(h.detach().mean(0))  # a side effect the guard must undo
        z = self.proj(h)
        return self.pred(z), z


def _views(device, n=4, m=6, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, size, size, generator=gen).to(device) for _ in range(n)]


def _loss(p, z, pairs):
    return negative_cosine_pair_losses(p, z, pairs)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _rng(device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _assert_same_rng(before, device):
    cpu, cuda = _rng(device)
    assert torch.equal(before[0], cpu), "global CPU RNG moved"
    if cuda is not None:
        assert torch.equal(before[1], cuda), "global CUDA RNG moved"


def _model(device):
    torch.manual_seed(0)
    model = Net().to(device).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 12, 12, device=device))  # non-trivial running statistics
    return model


def test_select_on_device_equals_reference_and_leaves_state_bitwise(device):
    model, views = _model(device), _views(device)
    before, rng = _state(model), _rng(device)
    sel = HardViewSelector(4).select(model, views, _loss, [model])
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed on {device}"
    _assert_same_rng(rng, device)
    assert model.bn.track_running_stats and model.training
    assert sel.pair_losses.device.type == sel.index.device.type == device.type
    ref_model = copy.deepcopy(model)  # the same per-view BatchNorm batches, without the guard
    with torch.no_grad():
        outs = [ref_model(v) for v in views]
    p, z = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
    ref = negative_cosine_pair_losses(p, z, all_pairs(4))
    torch.testing.assert_close(sel.pair_losses, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel.index, ref.argmax(0))
    a, b = sel.gather(views)
    assert a.device.type == device.type
    for i, (k, l) in enumerate(sel.chosen.tolist()):
        assert torch.equal(a[i], views[k][i]) and torch.equal(b[i], views[l][i])


def test_fallback_draws_come_from_the_selector_generator_and_match_the_cpu(device):
    losses = torch.randn(6, 40)
    losses[:, 5:] = float("nan")  # 35 samples fall back
    losses[2, 7] = float("inf")
    rng = _rng(device)
    on_dev = HardViewSelector(4, seed=3).choose(losses.to(device))
    on_cpu = HardViewSelector(4, seed=3).choose(losses)
    _assert_same_rng(rng, device)  # the selector's own generator, never the global RNG
    assert on_dev.index.device.type == device.type
    assert torch.equal(on_dev.index.cpu(), on_cpu.index)  # same draws on every device
    assert torch.equal(on_dev.fallback.cpu(), torch.arange(40) >= 5)
    assert torch.equal(on_dev.index[:5].cpu(), losses[:, :5].argmax(0))
    other = HardViewSelector(4, seed=4).choose(losses.to(device))
    assert not torch.equal(other.index, on_dev.index)
    sel = HardViewSelector(4, seed=3)
    state = sel.state_dict()
    first = sel.choose(losses.to(device)).index
    sel.load_state_dict(state)
    assert torch.equal(sel.choose(losses.to(device)).index, first)


def test_autocast_bfloat16_on_device(device):
    model, views = _model(device).eval(), _views(device, m=8)
    before = _state(model)
    full = HardViewSelector(4).select(model, views, _loss, [model]).pair_losses
    bf16 = HardViewSelector(4, autocast_dtype=torch.bfloat16).select(model, views, _loss, [model]).pair_losses
    assert bf16.dtype == torch.float32 and bf16.device.type == device.type
    assert not torch.equal(full, bf16)  # the forward really ran in bfloat16
    torch.testing.assert_close(bf16, full, rtol=0, atol=5e-2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_resolution_scale_on_device(device):
    seen = []

    def forward(x):
        seen.append((tuple(x.shape[-2:]), x.device.type))
        return x.mean((2, 3)), x.mean((2, 3))

    sel = HardViewSelector(4, resolution_scale=0.5).select(forward, _views(device, size=16), _loss, [])
    assert set(seen) == {((8, 8), device.type)} and sel.pair_losses.device.type == device.type
    small = resize_views(torch.full((2, 3, 8, 8), 200, dtype=torch.uint8, device=device), 0.5)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 4, 4) and bool((small == 200).all())
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(resize_views(x.to(device), 0.75).cpu(), resize_views(x, 0.75), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pairing", ["cross", "any"])
def test_exact_dino_search_on_device_equals_brute_force(device, pairing):
    gen = torch.Generator().manual_seed(0)
    ce = torch.rand(4, 20, 5, generator=gen, dtype=torch.float64) * 5
    space = CombinationSpace(4, 16, 8, pairing)
    exact = space.exact_search(ce.to(device))
    for t in (exact.globals_, exact.locals_, exact.losses, exact.fallback):
        assert t.device.type == device.type
    brute = space.evaluate(ce, space.enumerate_all()).max(0)  # all 51,480 / 77,220 on the CPU
    torch.testing.assert_close(exact.losses.cpu(), brute.values, rtol=0, atol=1e-12)
    cpu = space.exact_search(ce)
    assert torch.equal(exact.globals_.cpu(), cpu.globals_) and torch.equal(exact.locals_.cpu(), cpu.locals_)
    capped_dev = space.search(ce.to(device), 128, torch.Generator().manual_seed(7))
    capped_cpu = space.search(ce, 128, torch.Generator().manual_seed(7))
    assert torch.equal(capped_dev.globals_.cpu(), capped_cpu.globals_)
    assert torch.equal(capped_dev.locals_.cpu(), capped_cpu.locals_)


@pytest.mark.cuda_only  # host-device synchronisation exists on CUDA only (sync debug mode)
def test_select_does_not_synchronise(device, no_sync):
    model, views = _model(device), _views(device)
    selector = HardViewSelector(4, resolution_scale=0.5, autocast_dtype=torch.bfloat16)
    selector.select(model, views, _loss, [model])  # warm-up: lazy CUDA/cuDNN initialisation
    nan = torch.full((6, 6), float("nan"), device=device)
    with no_sync(device):
        sel = selector.select(model, views, _loss, [model])
        a, b = sel.gather(views)
        fb = selector.choose(nan)  # fallbacks: generator draws copied to the device, no read back
        fb.gather(views)
        space = CombinationSpace(4, 16, 8)
        ce = torch.rand(4, 20, 6, device=device)
        choice = space.exact_search(ce, selector.generator)
        capped = space.search(ce, 128, selector.generator)
    assert bool(fb.fallback.all()) and a.shape == views[0].shape
    assert choice.globals_.shape == capped.globals_.shape == (6, 2)
