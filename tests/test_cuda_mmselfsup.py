"""HardViewSelectionHook on every device (``device`` fixture): the real MMSelfSup algorithm on the
device, raw uint8 views from the host as the loader gives them, bitwise state checks (parameters,
BatchNorm statistics, MoCo queue, momentum encoder, RNG), and the device's pair losses equal to
those of a host copy of the model. Skipped with the reason where MMSelfSup is not installed."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")
from mmengine.registry import init_default_scope  # noqa: E402
from mmselfsup.registry import MODELS  # noqa: E402
from mmselfsup.structures import SelfSupDataSample  # noqa: E402

import hvs_plugins.adapters.mmselfsup  # noqa: E402,F401  (registers the hook, repairs registries)
from hvs_plugins import HardViewSelector  # noqa: E402
from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook  # noqa: E402

PRE = dict(type="SelfSupDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
BACKBONE = dict(type="ResNet", depth=18, base_channels=8, in_channels=3, out_indices=[4], norm_cfg=dict(type="BN"))
FEAT = 64
CONFIGS = {
    "SimSiam": dict(
        type="SimSiam",
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=16,
            out_channels=16,
            num_layers=3,
            with_last_bn_affine=False,
            with_avg_pool=True,
        ),
        head=dict(
            type="LatentPredictHead",
            loss=dict(type="CosineSimilarityLoss"),
            predictor=dict(
                type="NonLinearNeck",
                in_channels=16,
                hid_channels=8,
                out_channels=16,
                with_avg_pool=False,
                with_last_bn=False,
                with_last_bias=True,
            ),
        ),
    ),
    "SimCLR": dict(
        type="SimCLR",
        neck=dict(type="NonLinearNeck", in_channels=FEAT, hid_channels=16, out_channels=8, num_layers=2, with_avg_pool=True),
        head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.1),
    ),
    "MoCo": dict(
        type="MoCo",
        queue_len=16,
        feat_dim=8,
        momentum=0.9,
        neck=dict(type="MoCoV2Neck", in_channels=FEAT, hid_channels=16, out_channels=8, with_avg_pool=True),
        head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.2),
    ),
}
M, SIZE = 4, 16


def _build(algo: str, device: torch.device):
    init_default_scope("mmselfsup")
    torch.manual_seed(0)
    model = MODELS.build(dict(CONFIGS[algo], data_preprocessor=PRE, backbone=BACKBONE))
    return model.to(device).train()


def _hook(algo: str, ordered: bool = False) -> HardViewSelectionHook:
    hook = HardViewSelectionHook(n_views=4, log_stats=False)
    hook.algorithm = algo
    hook.selector = HardViewSelector(4, ordered=ordered)
    return hook


def _runner(model):
    runner = type("RunnerStub", (), {})()
    runner.model, runner.iter, runner.epoch, runner.message_hub = model, 0, 0, None
    return runner


def _raw_views(seed: int = 0) -> list[torch.Tensor]:  # uint8 BGR views, as PackSelfSupInputs gives them
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (M, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8) for _ in range(4)]


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("algo", list(CONFIGS))
def test_hook_selects_on_device_without_side_effects(device, algo):
    model = _build(algo, device)
    hook = _hook(algo, ordered=algo == "MoCo")
    raw = _raw_views()
    data = {"inputs": list(raw), "data_samples": [SelfSupDataSample() for _ in range(M)]}
    before, rng = _state(model), torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    host_model = copy.deepcopy(model).cpu()  # the same weights and statistics on the host
    hook.before_train_iter(_runner(model), 0, data)
    now = _state(model)
    assert [k for k in before if not torch.equal(before[k], now[k])] == []
    assert torch.equal(rng, torch.get_rng_state())
    if cuda_rng is not None:
        assert torch.equal(cuda_rng, torch.cuda.get_rng_state(device))
    sel = hook.last_selection
    assert sel.pair_losses.device.type == device.type
    a, b = data["inputs"]
    for i, (k, l) in enumerate(sel.chosen.tolist()):
        assert torch.equal(a[i], raw[k][i]) and torch.equal(b[i], raw[l][i])
    host_hook = _hook(algo, ordered=algo == "MoCo")
    host_hook.before_train_iter(_runner(host_model), 0, {"inputs": list(raw), "data_samples": data["data_samples"]})
    torch.testing.assert_close(sel.pair_losses.cpu(), host_hook.last_selection.pair_losses, rtol=1e-4, atol=1e-4)


def test_hook_bf16_and_resolution_scale_on_device(device):
    model = _build("SimSiam", device)
    for kw in (dict(autocast_dtype=torch.bfloat16), dict(resolution_scale=0.5)):
        hook = _hook("SimSiam")
        hook.selector = HardViewSelector(4, **kw)
        data = {"inputs": _raw_views(1), "data_samples": [SelfSupDataSample() for _ in range(M)]}
        hook.before_train_iter(_runner(model), 0, data)
        losses = hook.last_selection.pair_losses
        assert losses.dtype == torch.float32 and losses.device.type == device.type
        assert bool(torch.isfinite(losses).all()) and data["inputs"][0].shape == (M, 3, SIZE, SIZE)
