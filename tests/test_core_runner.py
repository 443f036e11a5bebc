"""The selection runner: side-effect guard, chunking, resolution scale, autocast, input checks."""

import pytest
import torch
from torch import nn

from hvs_plugins import HardViewSelector, negative_cosine_pair_losses, preserve_state, resize_views


class TinyNet(nn.Module):
    """Conv + train-mode BatchNorm + dropout + a buffer the forward writes (like a center/queue)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.proj = nn.Linear(8, 6)
        self.pred = nn.Linear(6, 6)
        self.register_buffer("seen", torch.zeros(8))

    def forward(self, x):
        h = self.bn(self.conv(x)).relu().mean((2, 3))
        self.seen.add_(h.detach().mean(0))  # a side effect the guard must undo
        z = self.proj(self.drop(h))
        return self.pred(z), z


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _views(n=4, m=6, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, size, size, generator=gen) for _ in range(n)]


def _loss(p, z, pairs):
    return negative_cosine_pair_losses(p, z, pairs)


def test_selection_leaves_every_buffer_parameter_and_rng_bitwise_equal():
    torch.manual_seed(0)
    model = TinyNet().train()
    model(torch.randn(4, 3, 16, 16))  # non-trivial running stats
    before = _state(model)
    rng = torch.random.get_rng_state()
    sel = HardViewSelector(4).select(model, _views(), _loss, [model])
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(rng, torch.random.get_rng_state())
    assert model.bn.track_running_stats and model.training
    assert sel.pair_losses.shape == (6, 6) and sel.index.shape == (6,)
    # Without the guard the same forward does move the state: the check above can fail.
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    assert not torch.equal(before["bn.running_mean"], model.state_dict()["bn.running_mean"])
    assert not torch.equal(before["seen"], model.seen)


def test_guard_uses_batch_statistics_in_train_mode():
    model = TinyNet().train()
    x = torch.randn(8, 3, 16, 16)
    with preserve_state([model]), torch.no_grad():
        h_guarded = model.bn(model.conv(x))
    with torch.no_grad():
        h_train = model.bn(model.conv(x))  # train mode: batch statistics (and moves running stats)
    assert torch.allclose(h_guarded, h_train)


def test_guard_raises_if_parameters_are_written():
    model = TinyNet()
    with pytest.raises(RuntimeError, match="parameters were modified"):
        with preserve_state([model]), torch.no_grad():
            model.proj.weight.add_(1.0)


def test_guard_restores_replaced_buffers():
    model = TinyNet()
    original = model.seen
    with preserve_state([model]):
        model.seen = torch.ones(8)  # a module that re-assigns its buffer
    assert model.seen is original and torch.equal(model.seen, torch.zeros(8))


def test_chunking_and_joint_views_give_the_same_losses_without_batchnorm_coupling():
    torch.manual_seed(0)
    model = TinyNet().eval()
    views = _views(m=10)
    ref = HardViewSelector(4).select(model, views, _loss, [model]).pair_losses
    for kwargs in ({"chunk_size": 3}, {"chunk_size": 1000}, {"joint_views": True}, {"chunk_size": 4, "joint_views": True}):
        got = HardViewSelector(4, **kwargs).select(model, views, _loss, [model]).pair_losses
        assert torch.allclose(got, ref, atol=1e-5), kwargs


def test_resolution_scale_feeds_smaller_views():
    seen = []

    def forward(x):
        seen.append(tuple(x.shape[-2:]))
        return x.mean((2, 3)), x.mean((2, 3))

    HardViewSelector(4, resolution_scale=0.5).select(forward, _views(size=32), _loss, [])
    assert set(seen) == {(16, 16)}
    small = resize_views(torch.full((2, 3, 8, 8), 200, dtype=torch.uint8), 0.5)
    assert small.dtype == torch.uint8 and small.shape == (2, 3, 4, 4) and bool((small == 200).all())


def test_autocast_bfloat16_selection_runs_and_stays_close():
    torch.manual_seed(0)
    model = TinyNet().eval()
    views = _views(m=8)
    full = HardViewSelector(4).select(model, views, _loss, [model]).pair_losses
    bf16 = HardViewSelector(4, autocast_dtype=torch.bfloat16).select(model, views, _loss, [model]).pair_losses
    assert bf16.dtype == torch.float32
    assert torch.allclose(full, bf16, atol=5e-2)


def test_selection_is_reproducible_and_leaves_generator_state_in_checkpoint():
    a, b = HardViewSelector(4, seed=5), HardViewSelector(4, seed=5)
    nan = torch.full((6, 20), float("nan"))
    assert torch.equal(a.choose(nan).index, b.choose(nan).index)
    state = a.state_dict()
    first = a.choose(nan).index
    a.load_state_dict(state)
    assert torch.equal(a.choose(nan).index, first)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_views": 1}, "n_views must be >= 2"),
        ({"resolution_scale": 0.0}, r"resolution_scale must be in \(0, 1\]"),
        ({"resolution_scale": 1.5}, r"resolution_scale must be in \(0, 1\]"),
        ({"chunk_size": 0}, "chunk_size must be None or an int >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HardViewSelector(**kwargs)


def test_view_count_and_shape_mismatch_are_clear_errors():
    model = TinyNet()
    sel = HardViewSelector(4)
    with pytest.raises(ValueError, match="expected 4 candidate views per sample, got 3"):
        sel.select(model, _views(n=3), _loss, [model])
    views = _views()
    views[2] = torch.randn(6, 3, 12, 12)
    with pytest.raises(ValueError, match="same shape"):
        sel.select(model, views, _loss, [model])
    assert model.bn.track_running_stats  # the guard is undone after an error too


def test_chunk_bounds_cover_the_batch_and_never_leave_one_sample():
    from hvs_plugins.runner import chunk_bounds

    assert chunk_bounds(4, 3) == [(0, 4)]
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(5, 64) == [(0, 5)]
    assert chunk_bounds(6, None) == [(0, 6)]
    model = TinyNet().train()  # train-mode BN would fail on a 1-sample chunk
    HardViewSelector(4, chunk_size=3).select(model, _views(m=4), _loss, [model])
