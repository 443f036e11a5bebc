"""HardViewSelectionHook(score_layer=...): APPROXIMATE layer scoring with the real MMSelfSup /
MMPretrain (mmengine Runner, CPU, tiny images; helpers from test_mmselfsup_hook)."""

from __future__ import annotations

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from test_mmselfsup_hook import (  # noqa: E402
    _batch,
    _hook,
    _one_thread,
    _same_state,
    _state,
    _to_mmpretrain,
    hvs_mm,
    make_cfg,
)

from hvs_plugins import HardViewSelector, resize_views  # noqa: E402
from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook  # noqa: E402
from hvs_plugins.layer_scoring import select_by_layer  # noqa: E402

__all__ = ["_one_thread"]  # its module-scoped autouse fixture (1 intra-op thread) applies here too
LAYER = "backbone.layer1"


@pytest.fixture(scope="module")
def simsiam(tmp_path_factory):
    """SimSiam, 2 iterations with layer scoring at half resolution (shared by the tests below)."""
    runner = Runner.from_cfg(make_cfg("SimSiam", tmp_path_factory.mktemp("layer"), score_layer=LAYER, resolution_scale=0.5))
    runner.train()
    return runner


def test_runs_and_logs_as_approximate(simsiam):
    assert simsiam.iter == 2
    scalars = simsiam.message_hub.log_scalars
    assert "train/hvs_layer/selected_loss" in scalars and "train/hvs/selected_loss" not in scalars
    # every scalar of an approximate run carries the label, its time included (issue 18)
    assert "train/hvs_layer/time" in scalars and not [k for k in scalars if k.startswith("train/hvs/")]


def test_agrees_with_core_and_leaves_state_untouched(simsiam):
    runner = simsiam
    model, hook = runner.model, _hook(runner)
    model.train()
    batch = _batch(runner)
    raw = list(batch["inputs"])
    ran_layer2 = []
    handle = model.backbone.layer2.register_forward_hook(lambda *a: ran_layer2.append(1))
    before, rng = _state(model), torch.get_rng_state()
    try:
        hook.before_train_iter(runner, 0, batch)
    finally:
        handle.remove()
    # parameters, BN running statistics and the global RNG bitwise unchanged; stopped after layer1
    assert _same_state(before, _state(model)) == []
    assert torch.equal(rng, torch.get_rng_state())
    assert ran_layer2 == []
    sel = hook.last_selection
    a, b = batch["inputs"]
    for i, (k, l) in enumerate(sel.chosen.tolist()):
        assert torch.equal(a[i], raw[k][i]) and torch.equal(b[i], raw[l][i])

    # the core's select_by_layer on the same views (same selector settings) chooses the same pairs
    views = hook._preprocess(model, raw)
    core = HardViewSelector(4, resolution_scale=0.5, seed=0)
    ref = select_by_layer(core, lambda x: model.neck(model.backbone(x)), views, model, LAYER)
    torch.testing.assert_close(sel.pair_losses, ref.pair_losses, rtol=0, atol=1e-6)
    assert torch.equal(sel.chosen, ref.chosen)

    # and those scores are 1 - cos of the layer1 activations, computed here by hand
    feats = []
    grab = model.backbone.layer1.register_forward_hook(lambda m, i, o: feats.append(o.flatten(1)))
    try:
        with core.scoring([model]):
            for v in views:
                model.backbone(resize_views(v, 0.5))
    finally:
        grab.remove()
    f = F.normalize(torch.stack(feats), dim=-1)  # [N, M, D]
    by_hand = torch.stack([1 - (f[k] * f[l]).sum(-1) for k, l in hook.selector.pairs.tolist()])
    torch.testing.assert_close(sel.pair_losses, by_hand, rtol=0, atol=1e-5)
    assert not torch.equal(sel.pair_losses, torch.zeros_like(sel.pair_losses))


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"backbone\.layer9.*valid names: .*backbone\.layer1"):
        Runner.from_cfg(make_cfg("SimSiam", tmp_path, score_layer="backbone.layer9")).train()


def test_momentum_network_is_not_a_score_layer(tmp_path):
    """A module the selection forward never runs (BYOL's target network) is refused up front."""
    with pytest.raises(ValueError, match=r"not on the online path.*valid names: backbone"):
        Runner.from_cfg(make_cfg("BYOL", tmp_path, score_layer="target_net.module.0.layer1")).train()


def test_refusals():
    with pytest.raises(ValueError, match="two different approximations"):
        HardViewSelectionHook(score_layer=LAYER, proxy=True)
    with pytest.raises(TypeError, match="module name"):
        HardViewSelectionHook(score_layer=1)


def test_swav_multicrop_is_refused(tmp_path):
    with pytest.raises(ValueError, match="score_layer is for two-view selection.*SwAV"):
        Runner.from_cfg(make_cfg("SwAV", tmp_path, n_local=2, score_layer=LAYER)).train()


@pytest.mark.skipif(not hvs_mm.registered_in.count("mmpretrain"), reason="MMPretrain not installed")
def test_mmpretrain_byol_neck(tmp_path):
    """MMPretrain, the asymmetric pipelines (cross pairs), scored on the neck's projection."""
    from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS
    from test_mmselfsup_hook import HVSTinyImages

    PRETRAIN_DATASETS.register_module(name="HVSTinyImagesPretrain", module=HVSTinyImages, force=True)
    runner = Runner.from_cfg(_to_mmpretrain(make_cfg("BYOL", tmp_path, score_layer="neck"), "BYOL"))
    runner.train()
    model, hook = runner.model, _hook(runner)
    assert runner.iter == 2 and type(model).__module__.startswith("mmpretrain")
    batch = _batch(runner)
    raw = list(batch["inputs"])
    before = _state(model)
    hook.before_train_iter(runner, 0, batch)
    assert _same_state(before, _state(model)) == []
    views = hook._preprocess(model, raw)
    ref = select_by_layer(HardViewSelector(4, groups=hook.groups), lambda x: model.neck(model.backbone(x)), views, model, "neck")
    torch.testing.assert_close(hook.last_selection.pair_losses, ref.pair_losses, rtol=0, atol=1e-6)
    assert torch.equal(hook.last_selection.chosen, ref.chosen)
