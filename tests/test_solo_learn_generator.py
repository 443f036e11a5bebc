"""solo-learn: the learned hard-view generator behind the ``hvs:`` switch (issue 20), against the
real solo-learn 1.0.6 (skipped with the command that runs them where it is not installed).

- the ``hvs.generator`` block validates (unknown keys with the closest name and the list, ε out of
  (0, 1], normalisation keys, methods without a pair of views, reuse_target, gap_interval);
- a training_step with the generator trains it with its own Adam (not the method's optimiser, not the
  method's state_dict), after the selection or without one; DINO multi-crop: the 2 large crops only;
- ``generator.enabled: false`` leaves the method bitwise as without the generator (with and without selection);
- Lightning: the generator steps after the method's optimiser (also with gradient accumulation), ε follows
  the epochs, ``hvs_gen/*`` is logged, and a run resumed from a checkpoint equals an uninterrupted one;
- one tiny epoch of main_pretrain.py with the ready config ``configs/solo_learn/cifar_simclr_generator.yaml``.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SOLO_HOWTO = (
    "solo-learn is not installed (no usable registry build); to run these: "
    "HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test"
)
needs_solo = pytest.mark.skipif(importlib.util.find_spec("solo") is None, reason=SOLO_HOWTO)
M, SIZE = 8, 16
TINY = {"width": 8, "n_blocks": 1}  # a small generator network: fast tests


def _build(method: str, hvs: dict, small: int = 0, **changes):
    from test_solo_learn_traps import _build as build

    return build(method, hvs, small=small, **changes)


def _images(gen, n: int, m: int = M, size: int = SIZE, seed: int = 0) -> list[torch.Tensor]:
    """``n`` batches of images in [0, 1] normalised as the generator's (= solo-learn's) pipelines."""
    g = torch.Generator().manual_seed(seed)
    mean, std = gen.networks[0].mean, gen.networks[0].std
    return [(torch.rand(m, 3, size, size, generator=g) - mean) / std for _ in range(n)]


def _batch(model, seed: int = 0, m: int = M):
    lay = model.hvs_layout
    n_large = lay.n_views if model.hvs_selector is not None else 2
    n_small = lay.n_small_candidates if model.hvs_selector is not None else lay.n_small
    from hvs_plugins.generator import IMAGENET_MEAN, IMAGENET_STD, HardViewGenerator

    ref = model.hvs_generator or HardViewGenerator(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    crops = _images(ref, n_large, m, SIZE, seed) + _images(ref, n_small, m, SIZE // 2, seed + 1)
    return [torch.arange(m), crops, torch.randint(0, 10, (m,), generator=torch.Generator().manual_seed(seed))]


def _loss(out):
    return out["loss"] if isinstance(out, dict) else out


def _optimizer(model):
    """The method's own optimiser (solo-learn returns it alone with scheduler 'none')."""
    out = model.configure_optimizers()
    return out[0][0] if isinstance(out, (list, tuple)) else out


def _host_step(model, batch, optimizer):
    loss = _loss(model.training_step(batch, 0))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


# ------------------------------------------------------------------ 1: the block validates
def test_generator_block_validates_with_messages_that_name_the_fix():
    from hvs_plugins.adapters.solo_learn import GENERATOR_KEYS, parse_hvs_config

    cfg = parse_hvs_config({"generator": {"eps_start": 0.02, "eps_end": 0.06, "ramp_epochs": 10, "width": 16}})
    assert cfg.selection and cfg.active and cfg.generator["eps_end"] == 0.06
    assert parse_hvs_config({"generator": {}}).generator == {}  # the defaults
    off = parse_hvs_config({"enabled": False, "generator": {"eps": 0.05}})
    assert not off.selection and off.active  # the generator without selection
    assert not parse_hvs_config({"enabled": False}).active  # nothing at all: solo-learn's own method
    assert parse_hvs_config({"n_views": 4}).generator is None
    assert "gap_interval" in GENERATOR_KEYS and "mean" not in GENERATOR_KEYS and "eps" in GENERATOR_KEYS

    bad = [
        ({"eps_stat": 0.02}, r"unknown .*'eps_stat' \(did you mean 'eps_start'\?\); valid keys: eps, eps_start, eps_end"),
        ({"widht": 8}, r"'widht' \(did you mean 'width'\?\).*gap_interval"),
        ({"mean": [0.5, 0.5, 0.5]}, r"read from solo-learn's augmentations .*remove them from hvs.generator"),
        ({"eps_end": 1.5}, r"hvs.generator.eps_end must be in \(0, 1\].*set eps_end to e.g. 0.05"),
        ({"eps": 0}, r"hvs.generator.eps must be in \(0, 1\]"),
        ({"eps_start": -0.1, "eps_end": 0.05}, r"hvs.generator.eps_start must be in \(0, 1\]"),
        ({"ramp_epochs": -1}, r"hvs.generator.ramp_epochs must be >= 0"),
        ({"gap_interval": -1}, r"hvs.generator.gap_interval must be an int >= 0"),
        ({"enabled": "no"}, r"hvs.generator.enabled must be true or false"),
        ({"stem_kernel": 4}, r"stem_kernel must be odd"),
        ({"betas": [0.9]}, r"betas must be two numbers"),
        ({"lr": 0}, r"hvs.generator.lr must be a number > 0"),
    ]
    for block, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_hvs_config({"generator": block})
    with pytest.raises(ValueError, match=r"hvs.generator must be a mapping such as `generator: \{eps: 0.05\}`"):
        parse_hvs_config({"generator": True})
    with pytest.raises(ValueError, match=r"'generater' \(did you mean 'generator'\?\)"):
        parse_hvs_config({"generater": {}})
    with pytest.raises(ValueError, match=r"reuse_target has no effect with hvs.generator.*remove reuse_target"):
        parse_hvs_config({"reuse_target": True, "generator": {}})
    parse_hvs_config({"reuse_target": True, "generator": {"enabled": False}})  # a disabled generator: fine


def test_a_method_without_a_pair_of_views_is_refused():
    pytest.importorskip("omegaconf", reason=SOLO_HOWTO)
    from omegaconf import OmegaConf

    from hvs_plugins.adapters.solo_learn import hvs_parse_cfg

    def parse(cfg):  # stands in for solo-learn's parse_cfg: never reached
        raise AssertionError("validation must come first")

    for hvs, message in (
        ({"enabled": False, "generator": {}}, r"hvs.generator does not support solo-learn method 'mae'"),
        ({"generator": {}}, r"HVS does not support solo-learn method 'mae'"),
    ):
        cfg = OmegaConf.create({"method": "mae", "hvs": hvs, "data": {}, "augmentations": [{"crop_size": 32, "num_crops": 1}]})
        with pytest.raises(ValueError, match=message):
            hvs_parse_cfg(parse)(cfg)


@needs_solo
def test_normalisation_is_solo_learns_and_gap_needs_an_exact_scorer():
    from omegaconf import OmegaConf
    from solo.data.pretrain_dataloader import build_transform_pipeline

    from hvs_plugins.adapters.solo_learn.generator import _table_normalisation, pipeline_normalisation
    from hvs_plugins.generator import IMAGENET_MEAN
    from test_solo_learn_integration import _aug

    aug = OmegaConf.create(_aug(32, 2))
    custom = OmegaConf.create({**_aug(32, 2), "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]})
    for dataset, a in (("cifar10", aug), ("cifar100", aug), ("stl10", aug), ("imagenet", aug), ("custom", aug), ("custom", custom)):
        norm = build_transform_pipeline(dataset, a).transforms[-1]  # solo-learn's own Normalize
        theirs = [float(v) for v in (*norm.mean, *norm.std)]
        assert [*pipeline_normalisation(dataset, a)[0], *pipeline_normalisation(dataset, a)[1]] == pytest.approx(theirs)
        assert [*_table_normalisation(dataset, a)[0], *_table_normalisation(dataset, a)[1]] == pytest.approx(theirs)  # fallback
    assert pipeline_normalisation("custom", aug)[0] == pytest.approx(IMAGENET_MEAN)
    assert pipeline_normalisation("custom", custom)[0] == pytest.approx((0.5, 0.4, 0.3))

    model = _build("simclr", {"enabled": False, "generator": TINY})
    assert model.hvs_generator.networks[0].mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])  # cifar10
    with pytest.raises(ValueError, match=r"gap_interval: the hardness gap .* not 'vicreg': set gap_interval: 0"):
        _build("vicreg", {"enabled": False, "generator": {**TINY, "gap_interval": 1}})


# ------------------------------------------------------------------ 2: a training step trains the generator
@needs_solo
def test_training_step_trains_the_generator_with_its_own_adam():
    torch.set_num_threads(1)
    model = _build("simclr", {"n_views": 4, "generator": {**TINY, "eps": 0.05, "gap_interval": 1}})
    gen = model.hvs_generator
    gen_ids = {id(p) for p in gen.parameters()}
    optimizer = _optimizer(model)
    assert not gen_ids & {id(p) for p in model.parameters()}  # not a submodule ...
    assert not gen_ids & {id(p) for g in optimizer.param_groups for p in g["params"]}  # ... nor the method's optimiser's
    assert {id(p) for g in gen.optimizer.param_groups for p in g["params"]} == gen_ids  # its own Adam
    assert not any("generator" in k for k in model.state_dict())
    before = [p.detach().clone() for p in gen.parameters()]
    batch = _batch(model)

    loss = _host_step(model, batch, optimizer)
    assert torch.isfinite(loss) and all(p.grad is not None for p in gen.parameters())  # the reversed gradient arrived
    model.hvs_generator_step()
    changed = [not torch.equal(a, b) for a, b in zip(before, gen.parameters())]
    assert all(changed) and gen.steps == 1 and all(p.grad is None for p in gen.parameters())
    assert len(gen.optimizer.state) == len(before) and not (gen_ids & {id(p) for p in optimizer.state})
    stats = model.hvs_last["generator"]
    assert float(stats["hvs_gen/eps"]) == 0.05 and float(stats["hvs_gen/delta"]) == pytest.approx(0.05, rel=1e-4)
    assert float(stats["hvs_gen/realised"]) <= 0.05 + 1e-6
    # the method trained on the generated pair: its own loss (hvs_gen/loss = -loss) is the exact scorer's on it
    losses = model.hvs_last["generator_gap_losses"]
    assert -float(gen.last_loss) == pytest.approx(losses["generated"], rel=1e-4)
    assert stats["hvs_gen/hardness_gap"] == pytest.approx(losses["generated"] - losses["input"])
    assert "selection" in model.hvs_last  # after the selection


@needs_solo
@pytest.mark.parametrize("selection", [False, True], ids=["no-selection", "after-multicrop-selection"])
def test_dino_multicrop_generates_the_two_large_crops_only(selection):
    """DINO with 2 small crops: the small crops reach the method unchanged (the same tensors: solo-learn's own
    without selection, the selected ones after the multi-crop selection), the two large crops are the generator's."""
    torch.set_num_threads(1)
    hvs = {"n_views": 4, "cap": 8, "generator": TINY} if selection else {"enabled": False, "generator": TINY}
    model = _build("dino", hvs, small=2)
    assert (model.hvs_selector is not None) is selection and model.hvs_layout.n_small == 2
    # solo-learn's own DINO (2 crops counted) without selection; the small crops counted after a multi-crop selection
    assert model.dino_loss_func.num_large_crops == (4 if selection else 2)
    batch = _batch(model)
    seen: dict = {}
    base = next(c for c in type(model).__mro__ if c.__module__.startswith("solo."))  # the solo-learn class
    original_step, original_generate = base.training_step, model._hvs_generate

    def spy(self, b, i):
        seen["crops"] = list(b[1])
        return original_step(self, b, i)

    def generate(crops):
        seen["inputs"] = list(crops)
        return original_generate(crops)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "training_step", spy)
        mp.setattr(model, "_hvs_generate", generate)
        loss = _loss(model.training_step(batch, 0))
    crops, inputs = seen["crops"], seen["inputs"]
    assert len(crops) == len(inputs) == 4 and crops[2] is inputs[2] and crops[3] is inputs[3]
    if not selection:
        assert all(c is x for c, x in zip(inputs, batch[1]))  # solo-learn's own crops
    assert not torch.equal(crops[0], inputs[0]) and not torch.equal(crops[1], inputs[1])
    loss.backward()
    assert all(p.grad is not None for p in model.hvs_generator.parameters())


# ------------------------------------------------------------------ 3: disabled = bitwise the run without it
def _state(model, optimizer):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()["state"]))


def _assert_same(a, b):
    (sa, oa), (sb, ob) = a, b
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert set(oa) == set(ob)
    for k in oa:
        for name, v in oa[k].items():
            assert torch.equal(v, ob[k][name]) if isinstance(v, torch.Tensor) else v == ob[k][name], (k, name)


@needs_solo
@pytest.mark.parametrize("selection", [True, False], ids=["after-selection", "no-selection"])
def test_disabled_generator_leaves_the_method_bitwise_equal(selection):
    """generator.enabled: false -> parameters, buffers (MoCo v2+ queue, BN statistics), the method's optimiser
    state and the global RNG as in a run without the generator: with selection, the HVS method without a
    generator; without selection, solo-learn's own (unwrapped) class."""
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS
    from test_solo_learn_integration import base_cfg

    torch.set_num_threads(1)
    method = "mocov2plus"
    if selection:
        model = _build(method, {"n_views": 4, "generator": {**TINY, "enabled": False}})
        reference = _build(method, {"n_views": 4})
    else:
        model = _build(method, {"enabled": False, "generator": {**TINY, "enabled": False}})
        cfg = OmegaConf.create(base_cfg(method, None))
        OmegaConf.set_struct(cfg, False)
        torch.manual_seed(0)
        reference = METHODS[method](parse_cfg(cfg)).train()
        assert type(reference) is METHODS[method]
    opt, ref_opt = _optimizer(model), _optimizer(reference)
    _assert_same(_state(model, opt), _state(reference, ref_opt))  # built alike (the generator never draws global RNG)
    for seed in (0, 1):
        batch = _batch(model, seed)
        torch.manual_seed(seed)
        _host_step(model, batch, opt)
        model.hvs_generator_step()
        rng = torch.get_rng_state()
        torch.manual_seed(seed)
        _host_step(reference, batch, ref_opt)
        assert torch.equal(rng, torch.get_rng_state())
        _assert_same(_state(model, opt), _state(reference, ref_opt))
    assert model.hvs_generator.steps == 0 and "generator" not in model.hvs_last


# ------------------------------------------------------------------ 4: Lightning: order, schedule, logs, resume
def _order_callback():
    """A Lightning callback recording (global_step, generator steps) before the method's optimiser step and at
    the batch end (callbacks' on_train_batch_end runs before the method's own)."""
    from lightning.pytorch import Callback

    class Order(Callback):
        def __init__(self) -> None:
            self.before_step: list = []
            self.batch_end: list = []

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            self.before_step.append((trainer.global_step, module.hvs_generator.steps))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.batch_end.append((trainer.global_step, module.hvs_generator.steps))

    return Order()


def _capture_logger():
    from lightning.pytorch.loggers.logger import Logger

    class Capture(Logger):
        name, version = "capture", 0

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict] = []

        def log_metrics(self, metrics, step=None) -> None:
            self.rows.append(dict(metrics))

        def log_hyperparams(self, *args, **kwargs) -> None:
            pass

    return Capture()


def _loader(model, n: int = 8, batch_size: int = 4):
    data = [(i, [c[0] for c in _batch(model, seed=i, m=1)[1]], 0) for i in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


def _trainer(tmp_path, max_epochs: int, **kw):
    from lightning.pytorch import Trainer

    kw.setdefault("logger", False)
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kw,
    )


GEN_HVS = {"n_views": 4, "generator": {**TINY, "eps_start": 0.02, "eps_end": 0.06, "ramp_epochs": 2, "gap_interval": 2}}


@needs_solo
def test_fit_steps_after_the_method_and_resume_equals_an_uninterrupted_run(tmp_path):
    """SimCLR with selection + generator, 2 epochs x 2 batches: uninterrupted vs 1 epoch, a Lightning checkpoint
    (loadable with torch's weights_only default) and a resumed fit to epoch 2 -> the same generator (weights, Adam,
    steps, noise positions, schedule) and the same method."""
    torch.set_num_threads(1)
    order, logger = _order_callback(), _capture_logger()
    full = _build("simclr", GEN_HVS)
    loader = _loader(full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path / "full", 2, callbacks=[order], logger=logger).fit(full, loader)
        gen = full.hvs_generator
        # Lightning's order: the method's optimiser steps, then the generator (on_train_batch_end)
        assert order.before_step == [(k, k) for k in range(4)]
        assert order.batch_end == [(k + 1, k) for k in range(4)]
        assert gen.steps == 4 and gen.epoch == 1 and gen.eps == pytest.approx(0.04)  # set_epoch at each epoch start
        rows = [r for r in logger.rows if "hvs_gen/eps" in r]
        assert sorted({round(r["hvs_gen/eps"], 6) for r in rows}) == [0.02, 0.04]
        assert all({"hvs_gen/delta", "hvs_gen/realised", "hvs_gen/loss", "hvs_gen/steps"} <= set(r) for r in rows)
        assert any("hvs_gen/hardness_gap" in r for r in logger.rows) and any("hvs/selected_loss" in r for r in logger.rows)

        first = _build("simclr", GEN_HVS)
        trainer = _trainer(tmp_path / "first", 1)
        trainer.fit(first, loader)
        ckpt = tmp_path / "epoch1.ckpt"
        trainer.save_checkpoint(ckpt)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
        assert state["hvs_generator"]["steps"] == 2 and "hvs_selector" in state
        assert not any(k.startswith("hvs_generator") for k in state["state_dict"])  # not in the method's weights

        resumed = _build("simclr", GEN_HVS)
        _trainer(tmp_path / "resumed", 2).fit(resumed, loader, ckpt_path=str(ckpt))
    a, b = gen.state_dict(), resumed.hvs_generator.state_dict()
    assert (a["steps"], a["epoch"], a["skipped"]) == (b["steps"], b["epoch"], b["skipped"]) == (4, 1, 0)
    for k, v in a["networks"].items():  # weights and the noise streams' positions
        assert torch.equal(v, b["networks"][k]) if isinstance(v, torch.Tensor) else v == b["networks"][k], k
    for i, s in a["optimizer"]["state"].items():
        for name, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][i][name]), (i, name)
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(v, sb[k]) for k, v in sa.items())


@needs_solo
def test_generator_steps_with_the_method_under_gradient_accumulation(tmp_path):
    torch.set_num_threads(1)
    model = _build("simclr", {"enabled": False, "generator": TINY})
    order = _order_callback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 1, accumulate_grad_batches=2, callbacks=[order]).fit(model, _loader(model, n=8, batch_size=2))
    assert model.hvs_generator.steps == 2 and order.before_step == [(0, 0), (1, 1)]
    assert order.batch_end == [(0, 0), (1, 0), (1, 1), (2, 1)]  # 4 batches, 2 optimiser steps


@needs_solo
def test_checkpoint_without_generator_state_warns_and_keeps_the_generator():
    model = _build("simclr", {"enabled": False, "generator": TINY})
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["hvs_generator"]["steps"] == 0
    assert "hvs_selector" not in checkpoint  # no selection
    with pytest.warns(UserWarning, match="starts from its initial weights"):
        model.on_load_checkpoint({"state_dict": {}})
    plain = _build("simclr", {"n_views": 4})
    with pytest.warns(UserWarning, match="the config has no hvs.generator"):
        plain.on_load_checkpoint(checkpoint)


# ------------------------------------------------------------------ 5: main_pretrain.py with the ready config
@pytest.mark.slow
@needs_solo
@pytest.mark.parametrize("selection", [False, True], ids=["generator-only", "selection-then-generator"])
def test_ready_generator_config_runs_one_epoch_of_main_pretrain(tmp_path, selection):
    from test_solo_learn_main_pretrain import _checkpoint, _image_folder, _ready_overrides, _run_main_pretrain, _solo_tree

    tree = _solo_tree()
    _image_folder(tmp_path / "train")
    hvs = ("hvs.generator.width=8", f"hvs.enabled={str(selection).lower()}")
    overrides = _ready_overrides(tmp_path, tmp_path / "ckpt", "cifar_simclr_generator", max_epochs=1, hvs=hvs)
    out = _run_main_pretrain(
        tmp_path, tree, config_dir=REPO / "configs" / "solo_learn", config_name="cifar_simclr_generator", overrides=tuple(overrides)
    )
    where = "after the selection" if selection else "without selection"
    assert f"[hvs] learned hard-view generator on for simclr ({where}" in out, out[-4000:]
    assert ("[hvs] Hard View Selection on for" in out) is selection
    assert "[hvs] first generation by HVSSimCLR: the 2 large crops of 2, eps 0.02 -> 0.06 over 10 epochs" in out, out[-4000:]
    _, state = _checkpoint(tmp_path / "ckpt", 0)  # torch's weights_only load
    assert state["hvs_generator"]["steps"] == 1 and state["global_step"] == 1
    assert ("hvs_selector" in state) is selection
