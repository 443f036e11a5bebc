"""SwAV (two-view and multi-crop) and Barlow Twins (labelled proxy) with HardViewSelectionHook on the
real MMSelfSup / MMPretrain (mmengine Runner, CPU, tiny images; helpers from test_mmselfsup_hook)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import hvs_plugins.adapters.mmselfsup as hvs_mm  # noqa: E402
from hvs_plugins.adapters.mmselfsup.scoring import score_pairs  # noqa: E402
from test_mmselfsup_hook import (  # noqa: E402,F401 (_one_thread: autouse fixture)
    BATCH,
    HVSTinyImages,
    SIZE,
    _batch,
    _hook,
    _one_thread,
    _same_state,
    _state,
    _to_mmpretrain,
    make_cfg,
)


def _swav_queue(model, length=8, seed=0):
    """A filled queue (what SwAVHook sets from epoch_queue_starts on; its own hook builds it with
    .cuda(), so the CPU tests set it directly, as the host's loss reads it)."""
    g = torch.Generator().manual_seed(seed)
    loss = model.head.loss
    loss.queue = torch.nn.functional.normalize(torch.randn(2, length, 16, generator=g), dim=-1)
    loss.use_queue = False


def _swav_reference(model, views, data_samples):
    """SwAV's own loss() on these crops (every sample on them), on a copy: loss() normalises the
    prototypes in place, enqueues and switches use_queue."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        return float(ref.loss(list(views), data_samples)["loss"])


def _swav_state(model):
    loss = model.head.loss
    return _state(model), None if loss.queue is None else loss.queue.clone(), loss.use_queue


@pytest.fixture(scope="module")
def swav_runs(tmp_path_factory):
    runs = {}
    for name, n_local in (("two_view", 0), ("multicrop", 2)):
        runner = Runner.from_cfg(make_cfg("SwAV", tmp_path_factory.mktemp(f"swav_{name}"), n_local=n_local, cap=8))
        runner.train()
        runs[name] = runner
    return runs


@pytest.mark.parametrize("queue", [False, True])
def test_swav_two_view_pair_losses_equal_swav_loss(swav_runs, queue):
    """Two views: one joint forward per pair (as loss() forwards its two crops), so the mean of a
    pair's per-sample losses equals loss() on that pair with every sample on it; with a queue the
    pairs are ordered (crop 1 meets queue half 1, crop 2 half 2)."""
    runner = swav_runs["two_view"]
    model, hook = runner.model, _hook(runner)
    assert runner.iter == 2 and "train/hvs/selected_loss" in runner.message_hub.log_scalars
    assert hook.selector.pairs.shape[0] == 12  # ordered
    model.train()
    _swav_queue(model) if queue else setattr(model.head.loss, "queue", None)
    batch = _batch(runner)
    raw = list(batch["inputs"])
    with torch.no_grad():
        model.head.loss.prototypes.weight.mul_(2.0)  # unnormalised: an in-place normalisation would show
    before, rng = _swav_state(model), torch.get_rng_state()
    hook.before_train_iter(runner, 0, batch)
    after = _swav_state(model)
    assert _same_state(before[0], after[0]) == [] and torch.equal(rng, torch.get_rng_state())
    assert (before[1] is None and after[1] is None) or torch.equal(before[1], after[1])
    assert before[2] == after[2]
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        losses = score_pairs("SwAV", model, hook.selector, views)
    errs = []
    for p, (k, l) in enumerate(hook.selector.pairs.tolist()):
        ref = _swav_reference(model, [views[k], views[l]], batch["data_samples"])
        errs.append(abs(float(losses[p].mean()) - ref))
        torch.testing.assert_close(float(losses[p].mean()), ref, rtol=1e-5, atol=1e-5)
    if queue:  # the queue changes the codes, and crop 1 / crop 2 differ
        assert not torch.allclose(losses[0], losses[1 + hook.selector.pairs[1:].tolist().index([1, 0])])


def test_swav_multicrop_combination_equals_swav_loss(swav_runs):
    """Multi-crop: 4 global + 4 local candidates for 2 + 2 crops. In train mode the two combinations
    the scorer forwards as the host's batches (globals 0, 1 + locals 0, 1; globals 2, 3 + locals 2, 3)
    are exact when every sample is on them; with per-sample normalisation (BatchNorm in eval mode)
    every combination's mean equals loss() on it with every sample on it."""
    runner = swav_runs["multicrop"]
    model, hook = runner.model, _hook(runner)
    space = hook.space
    assert runner.iter == 2 and space is not None and space.global_pairing == "cross" and space.n_local == 2
    assert "train/hvs/combinations" in runner.message_hub.log_scalars
    batch = _batch(runner)
    raw = list(batch["inputs"])
    assert len(raw) == 8 and raw[4].shape[-1] == SIZE // 2
    model.train()
    _swav_queue(model)
    before, rng = _swav_state(model), torch.get_rng_state()
    hook.before_train_iter(runner, 0, batch)
    after = _swav_state(model)
    assert _same_state(before[0], after[0]) == [] and torch.equal(rng, torch.get_rng_state())
    assert torch.equal(before[1], after[1]) and before[2] == after[2]
    choice = hook.last_selection
    out = batch["inputs"]
    assert len(out) == 4 and out[2].shape[-1] == SIZE // 2
    for i in range(BATCH):
        assert torch.equal(out[0][i], raw[choice.globals_[i, 0]][i]) and torch.equal(out[1][i], raw[choice.globals_[i, 1]][i])
        assert torch.equal(out[2][i], raw[4 + choice.locals_[i, 0]][i])
    from hvs_plugins import Combinations
    from hvs_plugins.adapters.mmselfsup.swav import swav_multicrop_ce

    def check(ce, views, combos):
        for combo in combos:
            crops = [views[g] for g in combo.globals_[0].tolist()] + [views[4 + j] for j in combo.locals_[0].tolist()]
            ref = _swav_reference(model, crops, batch["data_samples"])
            torch.testing.assert_close(float(space.evaluate(ce, combo)[0].mean()), ref, rtol=1e-5, atol=1e-5)

    with hook.selector.scoring([model]):  # train mode
        views = hook._preprocess(model, raw)
        ce = swav_multicrop_ce(model, hook.selector, views[:4], views[4:])
    check(
        ce,
        views,
        [Combinations(torch.tensor([[0, 1]]), torch.tensor([[0, 1]])), Combinations(torch.tensor([[2, 3]]), torch.tensor([[2, 3]]))],
    )
    model.eval()
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        ce = swav_multicrop_ce(model, hook.selector, views[:4], views[4:])
    check(ce, views, [space.unrank(torch.tensor([flat])) for flat in (0, 7, space.size - 1)])
    model.train()


def test_swav_misconfigurations_name_the_fix(tmp_path):
    runner = Runner.from_cfg(make_cfg("SwAV", tmp_path / "a", n_views=4, num_views=[4, 2]))
    with pytest.raises(ValueError, match=r"SwAV with num_crops=\[2\] needs MultiView num_views=\[4\]"):
        runner.train()
    runner = Runner.from_cfg(make_cfg("SwAV", tmp_path / "b", chunk_size=2))
    with pytest.raises(ValueError, match="remove chunk_size"):
        runner.train()


def test_barlowtwins_needs_proxy_and_logs_it_as_proxy(tmp_path):
    runner = Runner.from_cfg(make_cfg("BarlowTwins", tmp_path / "off"))
    with pytest.raises(NotImplementedError, match=r"BarlowTwins has no per-sample loss .*proxy=True"):
        runner.train()
    runner = Runner.from_cfg(make_cfg("BarlowTwins", tmp_path / "on", proxy=True))
    runner.train()
    model, hook = runner.model, _hook(runner)
    scalars = runner.message_hub.log_scalars
    assert runner.iter == 2 and "train/hvs_proxy/selected_loss" in scalars and "train/hvs/selected_loss" not in scalars
    # every scalar of a proxy run is labelled as such, its time included (issue 18: was hvs/time)
    assert "train/hvs_proxy/time" in scalars and not [k for k in scalars if k.startswith("train/hvs/")]
    batch = _batch(runner)
    raw = list(batch["inputs"])
    before, rng = _state(model), torch.get_rng_state()
    hook.before_train_iter(runner, 0, batch)
    assert _same_state(before, _state(model)) == [] and torch.equal(rng, torch.get_rng_state())
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        losses = score_pairs("BarlowTwins", model, hook.selector, views)
        z = [model.neck(model.backbone(v))[0] for v in views]
    for p, (k, l) in enumerate(hook.selector.pairs.tolist()):  # the proxy: mean squared embedding distance
        torch.testing.assert_close(losses[p], (z[k] - z[l]).pow(2).mean(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hvs_mm.registered_in.count("mmpretrain"), reason="MMPretrain not installed")
@pytest.mark.parametrize("n_local", [0, 2])
def test_mmpretrain_swav(tmp_path, n_local):
    from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS

    PRETRAIN_DATASETS.register_module(name="HVSTinyImagesPretrain", module=HVSTinyImages, force=True)
    cfg = _to_mmpretrain(make_cfg("SwAV", tmp_path, n_local=n_local, cap=8), "SwAV")
    view = cfg.train_dataloader.dataset.pipeline[0].transforms[0]
    if n_local:
        small = [dict(view[0], scale=SIZE // 2), view[1]]
        cfg.train_dataloader.dataset.pipeline[0] = dict(type="MultiView", num_views=[4, 4], transforms=[view, small])
    runner = Runner.from_cfg(cfg)
    runner.train()
    model, hook = runner.model, _hook(runner)
    assert runner.iter == 2 and type(model).__module__.startswith("mmpretrain")
    loss_module = model.head.loss_module
    loss_module.queue = torch.nn.functional.normalize(torch.randn(2, 8, 16), dim=-1)
    batch = _batch(runner)
    raw = list(batch["inputs"])
    before, queue = _state(model), loss_module.queue.clone()
    hook.before_train_iter(runner, 0, batch)
    assert _same_state(before, _state(model)) == [] and torch.equal(queue, loss_module.queue)
    if n_local:
        return
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        losses = score_pairs("SwAV", model, hook.selector, views)
    for p, (k, l) in enumerate(hook.selector.pairs.tolist()):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            value = float(ref.loss([views[k], views[l]], batch["data_samples"])["loss"])
        torch.testing.assert_close(float(losses[p].mean()), value, rtol=1e-5, atol=1e-5)
