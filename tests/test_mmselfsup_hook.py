"""HardViewSelectionHook with the real MMSelfSup (mmengine Runner, CPU, tiny images).

Skipped with a visible reason where MMSelfSup is not installed.
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import BaseDataset  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import hvs_plugins.adapters.mmselfsup as hvs_mm  # noqa: E402
from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook  # noqa: E402
from hvs_plugins.adapters.mmselfsup.scoring import check_supported, score_pairs  # noqa: E402
from mmselfsup.registry import DATASETS  # noqa: E402

SIZE = 16  # crop size
_RUN_IDS = itertools.count()
BATCH = 4


@DATASETS.register_module(force=True)
class HVSTinyImages(BaseDataset):
    """Deterministic random 24x24 BGR images (no files, no downloads)."""

    def __init__(self, n: int = 8, seed: int = 0, **kwargs):
        self._n, self._seed = n, seed
        super().__init__(serialize_data=False, **kwargs)

    def load_data_list(self):
        rng = np.random.RandomState(self._seed)
        return [dict(img=rng.randint(0, 256, (24, 24, 3), dtype=np.uint8), img_path=f"{i}.png") for i in range(self._n)]


def _predictor(d, with_last_bn=False, with_last_bias=True):
    return dict(
        type="NonLinearNeck",
        in_channels=d,
        hid_channels=16,
        out_channels=d,
        num_layers=2,
        with_bias=True,
        with_last_bn=with_last_bn,
        with_last_bias=with_last_bias,
        with_avg_pool=False,
    )


# ResNet-18 layout with 16 base channels (a quarter of the width): fast on a shared CPU
BACKBONE = dict(type="ResNet", depth=18, base_channels=16, in_channels=3, out_indices=[4], norm_cfg=dict(type="BN"))
FEAT = 128  # 16 * 8 channels after stage 4
MODELS = {
    "SimSiam": dict(
        type="SimSiam",
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=32,
            num_layers=3,
            with_last_bn_affine=False,
            with_avg_pool=True,
        ),
        head=dict(type="LatentPredictHead", loss=dict(type="CosineSimilarityLoss"), predictor=_predictor(32)),
    ),
    "BYOL": dict(
        type="BYOL",
        base_momentum=0.9,
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=32,
            num_layers=2,
            with_bias=True,
            with_last_bn=False,
            with_avg_pool=True,
        ),
        head=dict(type="LatentPredictHead", loss=dict(type="CosineSimilarityLoss"), predictor=_predictor(32)),
    ),
    "SimCLR": dict(
        type="SimCLR",
        neck=dict(type="NonLinearNeck", in_channels=FEAT, hid_channels=32, out_channels=16, num_layers=2, with_avg_pool=True),
        head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.1),
    ),
    "MoCo": dict(
        type="MoCo",
        queue_len=32,
        feat_dim=16,
        momentum=0.9,
        neck=dict(type="MoCoV2Neck", in_channels=FEAT, hid_channels=32, out_channels=16, with_avg_pool=True),
        head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.2),
    ),
    "MoCoV3": dict(
        type="MoCoV3",
        base_momentum=0.9,
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=16,
            num_layers=2,
            with_bias=False,
            with_last_bn=True,
            with_last_bn_affine=False,
            with_last_bias=False,
            with_avg_pool=True,
        ),
        head=dict(
            type="MoCoV3Head",
            predictor=_predictor(16, with_last_bias=False),
            loss=dict(type="mmcls.CrossEntropyLoss", loss_weight=2 * 0.2),
            temperature=0.2,
        ),
    ),
}
# added for issue 13 (tested below, not in the per-algorithm loops above)
SWAV_NECK = dict(type="SwAVNeck", in_channels=FEAT, hid_channels=32, out_channels=16, with_avg_pool=True, norm_cfg=dict(type="BN1d"))
EXTRA_MODELS = {
    "SwAV": dict(
        type="SwAV",
        neck=SWAV_NECK,
        head=dict(
            type="SwAVHead", loss=dict(type="SwAVLoss", feat_dim=16, epsilon=0.05, temperature=0.1, num_crops=[2], num_prototypes=20)
        ),
    ),
    "BarlowTwins": dict(
        type="BarlowTwins",
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=32,
            num_layers=3,
            with_last_bias=False,
            with_last_bn=False,
            with_last_bn_affine=False,
            with_avg_pool=True,
        ),
        head=dict(type="LatentCrossCorrelationHead", in_channels=32, loss=dict(type="CrossCorrelationLoss")),
    ),
}
ASYMMETRIC = {"BYOL", "MoCoV3"}  # two pipelines in MMSelfSup's configs: num_views [N/2, N/2]


def make_cfg(algo, work_dir, n_views=4, num_views=None, max_epochs=1, resume=False, hook=True, n_local=0, **hook_kwargs):
    view = [dict(type="RandomResizedCrop", size=SIZE, scale=(0.2, 1.0), backend="pillow"), dict(type="RandomFlip", prob=0.5)]
    if num_views is None:
        num_views = [n_views // 2, n_views // 2] if algo in ASYMMETRIC else n_views
    transforms = [view, view + [dict(type="RandomGrayscale", prob=0.5, keep_channels=True)]] if isinstance(num_views, list) else [view]
    model = copy.deepcopy({**MODELS, **EXTRA_MODELS}[algo])
    if n_local:  # SwAV multi-crop: 2 candidates per local crop of SIZE // 2
        num_views = [n_views, 2 * n_local] if hook else [2, n_local]
        transforms = [view, [dict(view[0], size=SIZE // 2), view[1]]]
        model["head"]["loss"]["num_crops"] = [2, n_local]
    model.update(
        data_preprocessor=dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr_to_rgb=True),
        backbone=BACKBONE,
    )
    cfg = dict(
        default_scope="mmselfsup",
        custom_imports=dict(imports=["hvs_plugins.adapters.mmselfsup"], allow_failed_imports=False),
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=BATCH,
            num_workers=0,
            drop_last=True,
            sampler=dict(type="DefaultSampler", shuffle=True),
            collate_fn=dict(type="default_collate"),
            dataset=dict(
                type="HVSTinyImages",
                n=8,
                pipeline=[
                    dict(type="MultiView", num_views=num_views, transforms=transforms),
                    dict(type="PackSelfSupInputs", meta_keys=["img_path"]),
                ],
            ),
        ),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.05, momentum=0.9)),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=max_epochs),
        default_hooks=dict(
            runtime_info=dict(type="RuntimeInfoHook"),
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=1),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", interval=1),
        ),
        custom_hooks=[dict(type="HardViewSelectionHook", n_views=n_views, **hook_kwargs)] if hook else [],
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo")),
        randomness=dict(seed=0),
        log_level="INFO",
        experiment_name=f"{algo}_{next(_RUN_IDS)}",
        resume=resume,
    )
    return Config(cfg)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a loaded 2-core machine, 2 OpenMP threads made each tiny
    BatchNorm call ~400x slower (spin-waiting barriers); 1 keeps this file well under a minute."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _hook(runner) -> HardViewSelectionHook:
    return next(h for h in runner.hooks if isinstance(h, HardViewSelectionHook))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _same_state(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


class _Trained(dict):
    """One short run (2 iterations, HVS on) per algorithm, made on first use and shared."""

    def __init__(self, factory):
        super().__init__()
        self.factory = factory

    def __missing__(self, algo):
        runner = Runner.from_cfg(make_cfg(algo, self.factory.mktemp(algo)))
        runner.train()
        self[algo] = runner
        return runner


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _Trained(tmp_path_factory)


@pytest.mark.parametrize("algo", list(MODELS))
def test_runs_and_logs(trained, algo):
    runner = trained[algo]
    assert runner.iter == 2
    hook = _hook(runner)
    assert hook.algorithm == algo
    n_pairs = {"MoCo": 12}.get(algo, 4 if algo in ASYMMETRIC else 6)
    assert hook.selector.pairs.shape[0] == n_pairs
    scalars = runner.message_hub.log_scalars
    for key in ("selected_loss", "pair_loss", "hardness_gap", "fallbacks", "time"):
        assert f"train/hvs/{key}" in scalars, key
    gap = scalars["train/hvs/hardness_gap"].current()
    assert gap >= 0
    if algo in ASYMMETRIC:  # view a from pipeline 0, view b from pipeline 1
        assert hook.last_selection.chosen[:, 0].max() <= 1 and hook.last_selection.chosen[:, 1].min() >= 2
    log = open(os.path.join(runner.log_dir, f"{runner.timestamp}.log")).read()
    assert "hvs/selected_loss" in log


def _batch(runner):
    return copy.deepcopy(next(iter(runner.train_dataloader)))


@pytest.mark.parametrize("algo", list(MODELS))
def test_exact_and_side_effect_free(trained, algo):
    runner = trained[algo]
    model, hook = runner.model, _hook(runner)
    model.train()
    batch = _batch(runner)
    raw = list(batch["inputs"])
    # selection through the hook: parameters, BN statistics, queue, momentum encoder, RNG untouched
    before, rng = _state(model), torch.get_rng_state()
    hook.before_train_iter(runner, 0, batch)
    assert _same_state(before, _state(model)) == []
    assert torch.equal(rng, torch.get_rng_state())
    sel = hook.last_selection
    a, b = batch["inputs"]
    for i, (k, l) in enumerate(sel.chosen.tolist()):
        assert torch.equal(a[i], raw[k][i]) and torch.equal(b[i], raw[l][i])
    assert torch.equal(sel.selected_losses, sel.pair_losses.max(0).values)

    # exactness: mean per-sample loss of every pair == the algorithm's own loss() on that pair
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        losses = score_pairs(algo, model, hook.selector, views)
    ref_model = copy.deepcopy(model)
    for ema in ("target_net", "encoder_k", "momentum_encoder"):  # same momentum network state
        if hasattr(ref_model, ema):
            getattr(ref_model, ema).update_parameters = lambda *args, **kwargs: None
    for p, (k, l) in enumerate(hook.selector.pairs.tolist()):
        if algo == "MoCo":
            ref_model.queue.copy_(model.queue)
        with torch.no_grad():
            ref = ref_model.loss([views[k], views[l]], batch["data_samples"])["loss"]
        torch.testing.assert_close(losses[p].mean(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "algo,options",
    [
        ("SimSiam", dict(resolution_scale=0.5, interval=2, chunk_size=2)),
        ("SimCLR", dict(simclr_pair_forward=False, joint_views=True, autocast_dtype="bfloat16")),
    ],
)
def test_options_run(tmp_path, algo, options):
    runner = Runner.from_cfg(make_cfg(algo, tmp_path, **options))
    runner.train()
    assert runner.iter == 2
    assert "train/hvs/selected_loss" in runner.message_hub.log_scalars


def test_mismatched_num_views_is_a_clear_error(tmp_path):
    runner = Runner.from_cfg(make_cfg("SimSiam", tmp_path, n_views=4, num_views=2))
    with pytest.raises(ValueError, match=r"num_views=4.*MultiView|MultiView.*num_views=4"):
        runner.train()
    assert runner.iter == 0  # before the first iteration, not mid-epoch


def test_mismatch_in_batch_is_a_clear_error():
    hook = HardViewSelectionHook(n_views=4)
    from hvs_plugins import HardViewSelector

    hook.selector = HardViewSelector(4)
    with pytest.raises(ValueError, match="MultiView"):
        hook.before_train_iter(None, 0, {"inputs": [torch.zeros(2, 3, 8, 8)] * 2, "data_samples": []})


def test_unsupported_algorithm_names_the_supported_ones():
    with pytest.raises(NotImplementedError, match="SimSiam, SimCLR, BYOL, MoCo, MoCoV3"):
        check_supported(torch.nn.Linear(2, 2))


def test_bad_options():
    with pytest.raises(ValueError):
        HardViewSelectionHook(n_views=1)
    with pytest.raises(ValueError):
        HardViewSelectionHook(resolution_scale=0)
    with pytest.raises(ValueError, match="interval must be an int >= 1"):
        HardViewSelectionHook(interval=0)
    with pytest.raises(ValueError, match="probability must be in"):
        HardViewSelectionHook(probability=2.0)
    with pytest.raises(ValueError, match="start_epoch"):
        HardViewSelectionHook(start_epoch=-1)


def test_schedule_probability_and_start_epoch():
    hook = HardViewSelectionHook(interval=2, probability=0.5, start_epoch=1, seed=3)
    assert not any(hook.schedule.active(i, 0) for i in range(20))  # before start_epoch
    on = [hook.schedule.active(i, 1) for i in range(200)]
    assert not any(on[1::2]) and 25 < sum(on[0::2]) < 75


def test_registered_for_config():
    from mmselfsup.registry import HOOKS

    assert "mmselfsup" in hvs_mm.registered_in
    assert HOOKS.get("HardViewSelectionHook") is HardViewSelectionHook


def test_checkpoint_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    runner = Runner.from_cfg(make_cfg("MoCo", tmp_path, max_epochs=1))
    runner.train()
    ckpt = torch.load(tmp_path / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert "hvs_selector" in ckpt
    queue = ckpt["state_dict"]["queue"].clone()
    cfg = make_cfg("MoCo", tmp_path, max_epochs=2, resume=True)
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.iter == 4 and resumed.epoch == 2
    assert not torch.equal(resumed.model.queue, queue)  # training went on (keys enqueued)
    assert _hook(resumed).selector is not None


def _to_mmpretrain(cfg, algo):
    """The same tiny config for MMPretrain 1.x (its transforms, PackInputs, stages from 0)."""
    cfg.default_scope = "mmpretrain"
    text = repr(cfg.model.head.to_dict()).replace("mmcls.CrossEntropyLoss", "CrossEntropyLoss")
    cfg.model.head = eval(text)
    cfg.model.backbone = dict(BACKBONE, out_indices=[3])
    view = [dict(type="RandomResizedCrop", scale=SIZE, crop_ratio_range=(0.2, 1.0), backend="pillow"), dict(type="RandomFlip", prob=0.5)]
    if algo in ASYMMETRIC:
        mv = dict(
            type="MultiView", num_views=[2, 2], transforms=[view, view + [dict(type="RandomGrayscale", prob=0.5, keep_channels=True)]]
        )
    else:
        mv = dict(type="MultiView", num_views=4, transforms=[view])
    cfg.train_dataloader.dataset.pipeline = [mv, dict(type="PackInputs", meta_keys=["img_path"])]
    cfg.train_dataloader.dataset.type = "HVSTinyImagesPretrain"
    return cfg


@pytest.mark.skipif(not hvs_mm.registered_in.count("mmpretrain"), reason="MMPretrain not installed")
@pytest.mark.parametrize("algo", list(MODELS))
def test_mmpretrain(tmp_path, algo):
    from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS

    PRETRAIN_DATASETS.register_module(name="HVSTinyImagesPretrain", module=HVSTinyImages, force=True)
    runner = Runner.from_cfg(_to_mmpretrain(make_cfg(algo, tmp_path), algo))
    runner.train()
    model = runner.model
    assert runner.iter == 2 and type(model).__module__.startswith("mmpretrain")
    assert "train/hvs/selected_loss" in runner.message_hub.log_scalars
    hook = _hook(runner)
    batch = _batch(runner)
    raw = list(batch["inputs"])
    before = _state(model)
    hook.before_train_iter(runner, 0, batch)
    assert _same_state(before, _state(model)) == []
    with hook.selector.scoring([model]):
        views = hook._preprocess(model, raw)
        losses = score_pairs(algo, model, hook.selector, views)
    ref = copy.deepcopy(model)
    for ema in ("target_net", "encoder_k", "momentum_encoder"):
        if hasattr(ref, ema):
            getattr(ref, ema).update_parameters = lambda *args, **kwargs: None
    for p, (k, l) in enumerate(hook.selector.pairs.tolist()):
        if algo == "MoCo":
            ref.queue.copy_(model.queue)
        with torch.no_grad():
            value = ref.loss([views[k], views[l]], batch["data_samples"])["loss"]
        torch.testing.assert_close(losses[p].mean(), value, rtol=1e-5, atol=1e-5)
