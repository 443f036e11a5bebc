"""HardViewSelectionHook(reuse_target=True): BYOL / MoCo v3 loss() reuses the selection's momentum
outputs, with the real MMSelfSup / MMPretrain (mmengine Runner, CPU, tiny images; helpers from
test_mmselfsup_hook)."""

from __future__ import annotations

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from test_mmselfsup_hook import (  # noqa: E402
    HVSTinyImages,
    _batch,
    _hook,
    _one_thread,
    _same_state,
    _state,
    _to_mmpretrain,
    hvs_mm,
    make_cfg,
)

from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook  # noqa: E402
from hvs_plugins.adapters.mmselfsup.target_reuse import MOMENTUM_NETWORK  # noqa: E402

__all__ = ["_one_thread"]  # its module-scoped autouse fixture (1 intra-op thread) applies here too


def bn_free_cfg(algo, work_dir, host="mmselfsup", **hook_kwargs):
    """The tiny config with a per-sample momentum network: GroupNorm ResNet, LayerNorm neck (the
    online predictor keeps its BatchNorm: it is not part of the momentum network)."""
    cfg = make_cfg(algo, work_dir, reuse_target=True, **hook_kwargs)
    if host == "mmpretrain":
        from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS

        PRETRAIN_DATASETS.register_module(name="HVSTinyImagesPretrain", module=HVSTinyImages, force=True)
        cfg = _to_mmpretrain(cfg, algo)
    cfg.model.backbone = dict(cfg.model.backbone, norm_cfg=dict(type="GN", num_groups=4))
    cfg.model.neck = dict(cfg.model.neck, norm_cfg=dict(type="LN"), with_last_bn=False)
    return cfg


def _preprocessed(model, batch):
    """What train_step hands loss(): MMPretrain's preprocessor returns a dict, MMSelfSup's a tuple."""
    out = model.data_preprocessor(batch, True)
    return (out["inputs"], out["data_samples"]) if isinstance(out, dict) else (out[0], out[1])


CASES = [("BYOL", "mmselfsup"), ("MoCoV3", "mmselfsup")]
if hvs_mm.registered_in.count("mmpretrain"):
    CASES.append(("BYOL", "mmpretrain"))


@pytest.mark.parametrize("algo,host", CASES)
def test_reused_loss_equals_real_forward_loss(tmp_path, algo, host):
    runner = Runner.from_cfg(bn_free_cfg(algo, tmp_path, host))
    runner.train()  # two real iterations with reuse (the training step ran with cached outputs)
    assert runner.iter == 2
    assert runner.message_hub.get_scalar("train/hvs/target_reused").current() == 2.0
    model, hook = runner.model, _hook(runner)
    target = getattr(model, MOMENTUM_NETWORK[algo])
    model.train()
    batch = _batch(runner)
    before, rng = _state(model), torch.get_rng_state()
    hook.before_train_iter(runner, 0, batch)  # selection + cache; the model is not touched
    assert _same_state(before, _state(model)) == []
    assert torch.equal(rng, torch.get_rng_state())
    assert "forward" in vars(target)

    inputs, samples = _preprocessed(model, batch)
    with torch.no_grad():
        reused = model.loss(inputs, samples)["loss"]  # steps the momentum net
    assert hook.reuse.hits == 2 and hook.reuse.misses == 0  # both momentum forwards skipped
    stepped = _state(model)
    hook.after_train_iter(runner, 0, batch)
    assert "forward" not in vars(target)  # the temporary forward is gone after the iteration

    model.load_state_dict(before)  # the same step again, with the momentum network's real forward
    with torch.no_grad():
        real = model.loss(inputs, samples)["loss"]
    assert _same_state(stepped, _state(model)) == []  # the same momentum update in both
    torch.testing.assert_close(reused, real, rtol=0, atol=1e-6)


def test_other_inputs_run_the_real_forward(tmp_path):
    runner = Runner.from_cfg(bn_free_cfg("BYOL", tmp_path, max_epochs=1))
    runner.train()
    model, hook = runner.model, _hook(runner)
    batch = _batch(runner)
    hook.before_train_iter(runner, 0, batch)
    x = _preprocessed(model, batch)[0][0]
    with torch.no_grad():
        model.target_net.update_parameters(torch.nn.Sequential(model.backbone, model.neck))
        out = model.target_net(x + 1)[0]  # not a chosen view: the real network runs
    assert hook.reuse.hits == 0 and hook.reuse.misses == 1
    hook.reuse.remove()
    with torch.no_grad():
        assert torch.equal(out, model.target_net(x + 1)[0])


@pytest.mark.parametrize("algo", ["BYOL", "MoCoV3"])
def test_batchnorm_momentum_network_is_refused(tmp_path, algo):
    """The standard layout (ResNet + BatchNorm) couples the samples of a batch: not exact."""
    net = MOMENTUM_NETWORK[algo]
    with pytest.raises(ValueError, match=rf"not exact for this {algo}: its momentum network \({net}\).*BatchNorm"):
        Runner.from_cfg(make_cfg(algo, tmp_path, reuse_target=True)).train()


def test_unsupported_algorithm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reuse_target=True is for BYOL and MoCoV3.*SimSiam"):
        Runner.from_cfg(make_cfg("SimSiam", tmp_path, reuse_target=True)).train()


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(resolution_scale=0.5), "full resolution"),
        (dict(score_layer="backbone.layer1"), "cannot be combined with score_layer"),
        (dict(proxy=True), "not with proxy=True"),
        (dict(autocast_dtype="bfloat16"), "float32"),
    ],
)
def test_inexact_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        HardViewSelectionHook(reuse_target=True, **options)


def test_refusal_uses_the_core_per_sample_scan():
    """The hook's scan is the core's (issue 18): e.g. torchvision's StochasticDepth in train mode,
    which the adapter's own scan missed, is refused with the same wording."""
    from mmengine.model import ExponentialMovingAverage
    from torchvision.ops import StochasticDepth

    import hvs_plugins.per_sample
    from hvs_plugins.adapters.mmselfsup import target_reuse

    assert target_reuse.per_sample_violations is hvs_plugins.per_sample.per_sample_violations
    model = torch.nn.Module()
    model.target_net = ExponentialMovingAverage(torch.nn.Sequential(torch.nn.Linear(4, 4), StochasticDepth(0.1, "row")))
    with pytest.raises(
        ValueError,
        match=r"not exact for this BYOL: its momentum network \(target_net\) has 1 "
        r"module\(s\) .*: module\.1 \(StochasticDepth, p=0\.1\)",
    ):
        target_reuse.check_reuse_model("BYOL", model)
    model.target_net.eval()  # eval mode: per-sample and deterministic, accepted
    assert target_reuse.check_reuse_model("BYOL", model) is model.target_net
