"""HardViewGeneratorHook (issue 20, MMSelfSup / MMPretrain part) with real mmengine Runners on CPU
and tiny images (helpers from test_mmselfsup_hook): registration and the config example, the
budget in [0, 1] pixel units from mm's 0-255 mean/std, the generator's gradient inside the
runner's train_step, exact resume (2 + 2 iterations == 4), a disabled generator leaves the run
bitwise unchanged, selection then generation, the hardness gap, errors that name the fix."""

from __future__ import annotations

import copy
import os

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from test_mmselfsup_hook import _one_thread, _same_state, _state, _to_mmpretrain, make_cfg  # noqa: E402

import hvs_plugins.adapters.mmselfsup as hvs_mm  # noqa: E402
from hvs_plugins.adapters.mmselfsup import HardViewGeneratorHook, HardViewSelectionHook  # noqa: E402
from hvs_plugins.adapters.mmselfsup.generator_hook import (  # noqa: E402
    generator_hook_options,
    preprocessor_normalisation,
)
from hvs_plugins.generator import HardViewGenerator as CoreGenerator  # noqa: E402
from mmselfsup.registry import HOOKS  # noqa: E402

__all__ = ["_one_thread"]  # its module-scoped autouse fixture (1 intra-op thread) applies here too


@pytest.fixture(scope="module", autouse=True)
def _runners_on_cpu():
    """Every Runner here trains on the CPU, also where a GPU is present (bitwise comparisons of
    whole runs; the cuda legs of the hosts live in tests/test_cuda_*.py)."""
    import mmengine.runner.runner as runner_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_module, "get_device", lambda: "cpu")
        yield


MM_MEAN, MM_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
TINY = dict(width=8, n_blocks=1, stem_kernel=3)  # a small generator network: fast on a shared CPU


def gen_cfg(work_dir, algo="SimSiam", num_views=2, max_epochs=1, resume=False, deterministic=False, selection=None, **gen_kwargs):
    """make_cfg with the generator hook (and optionally the selection hook first or second);
    ``deterministic``: both views a centre crop (no augmentation RNG), so that a resumed run can be
    compared bitwise with an uninterrupted one (mmengine does not restore the global numpy RNG)."""
    cfg = make_cfg(algo, work_dir, num_views=num_views, max_epochs=max_epochs, resume=resume, hook=False)
    if deterministic:
        cfg.train_dataloader.dataset.pipeline[0].transforms = [[dict(type="CenterCrop", crop_size=16)]]
    gen = dict(type="HardViewGeneratorHook", **{**TINY, **gen_kwargs})
    if selection == "first":
        cfg.custom_hooks = [dict(type="HardViewSelectionHook", n_views=num_views), gen]
    elif selection == "second":  # the generator listed first: the order must not matter
        cfg.custom_hooks = [gen, dict(type="HardViewSelectionHook", n_views=num_views)]
    else:
        cfg.custom_hooks = [gen]
    return cfg


def _gen_hook(runner) -> HardViewGeneratorHook:
    return next(h for h in runner.hooks if isinstance(h, HardViewGeneratorHook))


def _mid_range_batch(m=4, size=16, seed=0):
    """Raw uint8 BGR views in [96, 160]: a budget of 0.02 never reaches the clamp."""
    g = torch.Generator().manual_seed(seed)
    views = [torch.randint(96, 161, (m, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(2)]
    return {"inputs": views, "data_samples": None}


# ------------------------------------------------------------------ registration, config example
def test_registered_and_the_config_example_trains_and_logs(tmp_path):
    assert HOOKS.get("HardViewGeneratorHook") is HardViewGeneratorHook
    assert "HardViewGeneratorHook" in hvs_mm.__all__
    cfg = gen_cfg(tmp_path, eps_start=0.02, eps_end=0.06, ramp_epochs=10, max_epochs=2)
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = _gen_hook(runner)
    gen = hook.generator
    assert runner.iter == 4 and gen.steps == 4 and gen.epoch == 1  # set_epoch from the runner's epoch
    assert gen.eps == pytest.approx(0.024)  # epoch 1 of a 10-epoch ramp 0.02 -> 0.06
    assert gen.networks[0].calls == 8  # two views per iteration, fresh noise each
    init = CoreGenerator(**TINY, mean=[v / 255 for v in MM_MEAN], std=[v / 255 for v in MM_STD])
    assert gen.networks[0].mean.flatten().tolist() == init.networks[0].mean.flatten().tolist()
    assert any(not torch.equal(a, b) for a, b in zip(gen.parameters(), init.parameters()))  # it trained
    scalars = runner.message_hub.log_scalars
    for key in ("eps", "delta", "realised", "loss"):
        assert f"train/hvs_gen/{key}" in scalars, key
    assert scalars["train/hvs_gen/eps"].current() == pytest.approx(0.024)
    assert scalars["train/hvs_gen/delta"].current() == pytest.approx(0.024, rel=1e-5)  # mean |δ| = ε
    assert scalars["train/hvs_gen/loss"].current() == pytest.approx(-scalars["train/loss"].current(), rel=1e-5)
    log = open(os.path.join(runner.log_dir, f"{runner.timestamp}.log")).read()
    assert "hvs_gen/eps: 0.0240" in log and "hvs_gen/delta" in log  # same log line as the step's loss
    assert "HardViewGeneratorHook: SimSiam, eps 0.02 -> 0.06 over 10 epochs" in log
    assert hook._handle is None  # the preprocessor's forward hook is removed after training
    assert not _unwrap_pre(runner)._forward_hooks


def _unwrap_pre(runner):
    return runner.model.data_preprocessor


def test_iter_based_loop_ramps_by_dataloader_passes(tmp_path):
    cfg = gen_cfg(tmp_path, eps_start=0.02, eps_end=0.06, ramp_epochs=2)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=3)
    runner = Runner.from_cfg(cfg)
    runner.train()
    gen = _gen_hook(runner).generator
    assert gen.steps == 3 and gen.epoch == pytest.approx(1.0)  # iteration 2 of 2 per pass
    assert gen.eps == pytest.approx(0.04)


def test_gradient_accumulation_steps_the_generator_with_the_optimizer(tmp_path):
    cfg = gen_cfg(tmp_path, max_epochs=2)
    cfg.optim_wrapper.accumulative_counts = 2
    runner = Runner.from_cfg(cfg)
    runner.train()
    gen = _gen_hook(runner).generator
    assert runner.iter == 4 and gen.steps == 2 and gen.networks[0].calls == 8


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("bgr_to_rgb", [True, False])
def test_budget_is_eps_in_unit_pixel_range_from_mm_mean_std(tmp_path, bgr_to_rgb):
    """Per image mean |generated - input| == ε, measured independently on the 0-255 scale / 255."""
    cfg = gen_cfg(tmp_path, eps_start=0.01, eps_end=0.03, ramp_epochs=4)
    cfg.model.data_preprocessor.bgr_to_rgb = bgr_to_rgb
    runner = Runner.from_cfg(cfg)
    hook = _gen_hook(runner)
    runner.call_hook("before_run")
    hook.before_train(runner)
    hook.generator.set_epoch(2)  # the middle of the ramp: ε = 0.02
    model = runner.model
    batch = _mid_range_batch()
    hook._armed = True
    generated = model.data_preprocessor(copy.deepcopy(batch), True)[0]
    assert not hook._armed  # consumed by this (training, with gradients) call
    mean, std = torch.tensor(MM_MEAN).view(1, 3, 1, 1), torch.tensor(MM_STD).view(1, 3, 1, 1)
    for raw, view in zip(batch["inputs"], generated):
        x255 = raw[:, [2, 1, 0]].float() if bgr_to_rgb else raw.float()  # what the preprocessor normalises
        g255 = view.detach() * std + mean
        change = (g255 - x255).abs().flatten(1).mean(1) / 255.0  # [B] in [0, 1] units
        torch.testing.assert_close(change, torch.full_like(change, 0.02), rtol=1e-4, atol=1e-6)
        assert float((g255 - x255).abs().max()) > 0.02 * 255  # a perturbation, not a constant shift
    torch.testing.assert_close(hook.generator.networks[0].last_delta, torch.full((4,), 0.02), rtol=1e-5, atol=0)
    # every other call of the preprocessor is left alone: not armed, no gradients, validation
    hook._armed = True
    with torch.no_grad():
        plain = model.data_preprocessor(copy.deepcopy(batch), True)[0]
    assert hook._armed
    assert torch.equal(model.data_preprocessor(copy.deepcopy(batch), False)[0][0], plain[0])
    hook.after_train(runner)


def test_preprocessor_normalisation_units():
    from mmselfsup.models.utils import SelfSupDataPreprocessor

    mean, std = preprocessor_normalisation(SelfSupDataPreprocessor(mean=MM_MEAN, std=MM_STD, bgr_to_rgb=True))
    assert mean == pytest.approx([v / 255 for v in MM_MEAN]) and std == pytest.approx([v / 255 for v in MM_STD])
    assert preprocessor_normalisation(SelfSupDataPreprocessor()) == ([0.0] * 3, [1 / 255] * 3)  # no normalisation
    with pytest.raises(ValueError, match="data_preprocessor=dict\\(type='SelfSupDataPreprocessor'"):
        preprocessor_normalisation(torch.nn.Identity())


# ------------------------------------------------------------------ gradients
def test_generator_gets_the_negated_gradient_of_the_algorithms_loss_in_train_step(tmp_path):
    """In the runner's own train_step: the generator's gradient is -λ ∂loss/∂θ (replayed with the
    same noise on copies), the model's optimizer never sees it, and after_train_iter steps it."""
    runner = Runner.from_cfg(gen_cfg(tmp_path, reverse_scale=0.5))
    runner.train()  # builds the optimizer wrapper etc.; then one more step by hand
    hook = _gen_hook(runner)
    hook.before_train(runner)
    gen, model = hook.generator, runner.model
    batch = copy.deepcopy(next(iter(runner.train_dataloader)))
    model_copy, gen_copy = copy.deepcopy(model), copy.deepcopy(gen)
    gen_ids = {id(p) for p in gen.parameters()}
    assert not any(id(p) in gen_ids for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"])
    hook.before_train_iter(runner, 0, batch)
    outputs = model.train_step(copy.deepcopy(batch), optim_wrapper=runner.optim_wrapper)
    grads = [p.grad.clone() for p in gen.parameters()]
    assert any(float(g.abs().sum()) > 0 for g in grads)

    hook._armed = False  # replay on the copies, without the hook: same weights, same noise
    views, samples = model_copy.data_preprocessor(copy.deepcopy(batch), True)
    net = gen_copy.networks[0]
    replay = [net(views[0], gen_copy.eps), net(views[1], gen_copy.eps)]
    loss = model_copy.loss(replay, samples)["loss"]
    torch.testing.assert_close(loss.detach(), outputs["loss"].detach())
    ref = torch.autograd.grad(loss, list(gen_copy.parameters()))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, -0.5 * r, rtol=1e-4, atol=1e-7)
    steps = gen.steps
    hook.after_train_iter(runner, 0, batch, outputs)
    assert gen.steps == steps + 1 and all(p.grad is None for p in gen.parameters())
    hook.after_train(runner)


def test_ddp_call_form_and_a_missing_generation_is_an_error(tmp_path):
    """MMDistributedDataParallel.train_step calls data_preprocessor(data, training=True) (keyword):
    the generator fires there too; a train_step that never preprocesses is reported."""
    runner = Runner.from_cfg(gen_cfg(tmp_path))
    runner.call_hook("before_run")
    hook = _gen_hook(runner)
    hook.before_train(runner)
    hook._armed = True
    out = runner.model.data_preprocessor(_mid_range_batch(), training=True)[0]
    assert not hook._armed and out[0].requires_grad
    hook.before_train_iter(runner, 0, None)
    with pytest.raises(RuntimeError, match="did not call its data_preprocessor"):
        hook.after_train_iter(runner, 0, None, {})
    hook.after_train(runner)


# ------------------------------------------------------------------ resume
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    kw = dict(deterministic=True, eps_start=0.02, eps_end=0.06, ramp_epochs=2)
    full = Runner.from_cfg(gen_cfg(tmp_path / "full", max_epochs=2, **kw))
    full.train()
    first = Runner.from_cfg(gen_cfg(tmp_path / "first", max_epochs=1, **kw))
    first.train()
    ckpt = torch.load(tmp_path / "first" / "epoch_1.pth", map_location="cpu", weights_only=False)
    state = ckpt["hvs_generator"]
    assert state["steps"] == 2 and state["epoch"] == 0 and state["networks"]["0._extra_state"]["calls"] == 4
    assert state["optimizer"]["state"]  # Adam moments

    def resumed_run(name, drop_generator=False):
        path = tmp_path / "first" / "epoch_1.pth"
        if drop_generator:
            ck = dict(ckpt)
            ck.pop("hvs_generator")
            path = tmp_path / "no_gen.pth"
            torch.save(ck, path)
        cfg = gen_cfg(tmp_path / name, max_epochs=2, resume=True, **kw)
        cfg.load_from = str(path)
        runner = Runner.from_cfg(cfg)
        runner.train()
        return runner

    resumed = resumed_run("resumed")
    assert resumed.iter == full.iter == 4
    assert _same_state(_state(full.model), _state(resumed.model)) == []  # the model: bitwise
    ga, gb = _gen_hook(full).generator, _gen_hook(resumed).generator
    sa, sb = ga.state_dict(), gb.state_dict()
    for key, value in sa["networks"].items():
        assert torch.equal(value, sb["networks"][key]) if isinstance(value, torch.Tensor) else value == sb["networks"][key], key
    for pid, moments in sa["optimizer"]["state"].items():
        for k, v in moments.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k]), (pid, k)
    assert (sa["steps"], sa["epoch"]) == (sb["steps"], sb["epoch"]) == (4, 1) and gb.eps == pytest.approx(0.04)
    # sensitivity: without the generator's state the resumed run goes elsewhere
    fresh = resumed_run("fresh", drop_generator=True)
    assert _same_state(_state(full.model), _state(fresh.model)) != []


# ------------------------------------------------------------------ host state
def _rng_states():
    import random

    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_disabled_generator_leaves_the_run_bitwise_unchanged(tmp_path):
    """enabled=False: the model after training (random augmentations, 2 iterations) and the global
    RNG streams are bitwise those of a run without the hook."""
    plain_cfg = make_cfg("SimSiam", tmp_path / "plain", num_views=2, hook=False)
    plain = Runner.from_cfg(plain_cfg)
    plain.train()
    plain_rng = _rng_states()
    off = Runner.from_cfg(gen_cfg(tmp_path / "off", enabled=False))
    off.train()
    off_rng = _rng_states()
    assert off.iter == plain.iter == 2
    assert _same_state(_state(plain.model), _state(off.model)) == []
    assert torch.equal(plain_rng[0], off_rng[0]) and np.array_equal(plain_rng[1], off_rng[1])
    assert plain_rng[2] == off_rng[2]
    assert _gen_hook(off).generator.steps == 0 and _gen_hook(off).generator.networks[0].calls == 0


# ------------------------------------------------------------------ with selection
class _RecordPairs(Hook):
    """Records, per iteration, the generator's inputs and the selected raw pair."""

    priority = "LOWEST"

    def __init__(self):
        self.gen_inputs, self.selected = [], []

    def before_train(self, runner):
        net = _gen_hook(runner).generator.networks[0]
        net.register_forward_pre_hook(lambda module, args: self.gen_inputs.append(args[0].detach().clone()))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.selected.append([v.clone() for v in data_batch["inputs"]])


@pytest.mark.parametrize("order", ["first", "second"])
def test_selection_then_generation_of_the_chosen_pair(tmp_path, order):
    cfg = gen_cfg(tmp_path, num_views=4, selection=order, gap_interval=1)
    runner = Runner.from_cfg(cfg)
    recorder = _RecordPairs()
    runner.register_hook(recorder)
    runner.train()
    selection = next(h for h in runner.hooks if isinstance(h, HardViewSelectionHook))
    assert runner.iter == 2 and selection.last_selection is not None
    assert "train/hvs/selected_loss" in runner.message_hub.log_scalars
    assert len(recorder.gen_inputs) == 4  # 2 views x 2 iterations
    model = runner.model
    for it, pair in enumerate(recorder.selected):
        with torch.no_grad():
            views = model.data_preprocessor({"inputs": pair, "data_samples": None}, True)[0]
        assert torch.equal(recorder.gen_inputs[2 * it], views[0]) and torch.equal(recorder.gen_inputs[2 * it + 1], views[1])
    assert "train/hvs_gen/hardness_gap" in runner.message_hub.log_scalars


def test_hardness_gap_scores_the_algorithms_own_loss(tmp_path):
    """gap_interval=1: the scored loss on the generated pair equals the step's loss (the exact
    scorer at the step's weights); the scoring leaves the model's state alone."""
    losses = []

    class _Loss(Hook):
        priority = "LOWEST"

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            losses.append((float(outputs["loss"].detach()), dict(_gen_hook(runner).last_gap_losses)))

    runner = Runner.from_cfg(gen_cfg(tmp_path, gap_interval=1))
    runner.register_hook(_Loss())
    runner.train()
    for loss, gap in losses:
        assert gap["generated"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert runner.message_hub.get_scalar("train/hvs_gen/hardness_gap").current() == pytest.approx(
        losses[-1][1]["generated"] - losses[-1][1]["input"]
    )
    with pytest.raises(ValueError, match="set gap_interval=0"):
        Runner.from_cfg(gen_cfg(tmp_path / "bt", algo="BarlowTwins", gap_interval=5)).train()


# ------------------------------------------------------------------ errors that name the fix
@pytest.mark.parametrize("options", [dict(eps=0), dict(eps=1.5), dict(eps_start=-0.01, eps_end=0.05), dict(eps_end=float("nan"))])
def test_bad_budget(options):
    with pytest.raises(ValueError, match=r"must be in \(0, 1\].*set eps\w* to e\.g\. 0\.05.*pixel units"):
        HardViewGeneratorHook(**options)


def test_unknown_options_name_the_closest_and_every_valid_one(tmp_path):
    with pytest.raises(TypeError) as info:
        HardViewGeneratorHook(eps_strat=0.02)
    message = str(info.value)
    assert "'eps_strat' (did you mean 'eps_start'?)" in message
    for name in generator_hook_options():
        assert name in message
    with pytest.raises(TypeError, match="read from the model's data_preprocessor"):
        HardViewGeneratorHook(mean=[0.5, 0.5, 0.5])
    with pytest.raises(TypeError, match=r"'ramp_epoch' \(did you mean 'ramp_epochs'\?\).*Valid options: eps"):
        Runner.from_cfg(gen_cfg(tmp_path, ramp_epoch=3))
    with pytest.raises(ValueError, match="gap_interval must be an int >= 0"):
        HardViewGeneratorHook(gap_interval=-1)
    core = set(CoreGenerator.valid_keys()) - {"channels", "mean", "std"}
    assert core <= set(generator_hook_options())  # every core option reachable from a config
    # the hook's signature repeats the core's defaults (for help() and configs): they must not drift
    import inspect

    core_defaults = {n: p.default for n, p in inspect.signature(CoreGenerator.__init__).parameters.items() if n in core}
    hook_defaults = {n: p.default for n, p in inspect.signature(HardViewGeneratorHook.__init__).parameters.items() if n in core}
    assert {n: tuple(v) if isinstance(v, (list, tuple)) else v for n, v in hook_defaults.items()} == core_defaults


def test_docstring_lists_every_option():
    doc = HardViewGeneratorHook.__doc__
    for name in generator_hook_options():
        assert name in doc, name
    assert "custom_hooks = [dict(type='HardViewGeneratorHook', eps_start=0.02, eps_end=0.06, ramp_epochs=10)]" in doc


def test_algorithms_without_a_pair_of_views_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="one view per image.*remove HardViewGeneratorHook"):
        Runner.from_cfg(gen_cfg(tmp_path / "one", num_views=1)).train()
    with pytest.raises(ValueError, match=r"HardViewSelectionHook', n_views=4\).*num_views=2"):
        Runner.from_cfg(gen_cfg(tmp_path / "four", num_views=4)).train()
    cfg = make_cfg("SwAV", tmp_path / "swav", n_local=1, hook=True)  # selection of a multi-crop combination
    cfg.custom_hooks.append(dict(type="HardViewGeneratorHook", **TINY))
    with pytest.raises(ValueError, match=r"multi-crop.*num_crops=\[2\]"):
        Runner.from_cfg(cfg).train()
    cfg = make_cfg("SwAV", tmp_path / "swav_alone", n_local=1, hook=False)  # multi-crop, no selection
    cfg.custom_hooks = [dict(type="HardViewGeneratorHook", **TINY)]
    with pytest.raises(ValueError, match=r"SwAV multi-crop.*num_crops=\[2\]"):
        Runner.from_cfg(cfg).train()
    # a batch that reaches train_step with one view (no MultiView in sight): the same kind of message
    runner = Runner.from_cfg(gen_cfg(tmp_path / "batch"))
    runner.call_hook("before_run")
    hook = _gen_hook(runner)
    hook.before_train(runner)
    hook._armed = True
    batch = _mid_range_batch()
    batch["inputs"] = batch["inputs"][:1]
    with pytest.raises(ValueError, match="got 1 view\\(s\\).*MultiView num_views=2"):
        runner.model.data_preprocessor(batch, True)
    hook.after_train(runner)


# ------------------------------------------------------------------ MMPretrain
@pytest.mark.skipif(not hvs_mm.registered_in.count("mmpretrain"), reason="MMPretrain not installed")
def test_mmpretrain(tmp_path):
    from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS
    from mmpretrain.registry import HOOKS as PRETRAIN_HOOKS
    from test_mmselfsup_hook import HVSTinyImages

    assert PRETRAIN_HOOKS.get("HardViewGeneratorHook") is HardViewGeneratorHook
    PRETRAIN_DATASETS.register_module(name="HVSTinyImagesPretrain", module=HVSTinyImages, force=True)
    cfg = _to_mmpretrain(make_cfg("SimSiam", tmp_path), "SimSiam")
    cfg.train_dataloader.dataset.pipeline[0].num_views = 2
    cfg.custom_hooks = [dict(type="HardViewGeneratorHook", eps=0.03, **TINY)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2 and type(runner.model).__module__.startswith("mmpretrain")
    assert _gen_hook(runner).generator.steps == 2  # the dict-returning preprocessor path
    assert runner.message_hub.get_scalar("train/hvs_gen/delta").current() == pytest.approx(0.03, rel=1e-5)


# ------------------------------------------------------------------ with a process group
def test_under_mm_ddp_wrapper_with_a_process_group(tmp_path):
    """The runner's model wrapped in MMDistributedDataParallel (1-process gloo group, CPU): the
    wrapper's train_step (keyword data_preprocessor call) generates, the core's step takes its
    distributed path, and the run equals the unwrapped one bitwise (2-process grad averaging:
    tests/test_lightly_generator.py)."""
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    plain = Runner.from_cfg(gen_cfg(tmp_path / "plain"))
    plain.train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        runner = Runner.from_cfg(gen_cfg(tmp_path / "ddp"))
        runner.model = MMDistributedDataParallel(module=runner.model, device_ids=None)
        runner.train()
    finally:
        dist.destroy_process_group()
    gen, ref = _gen_hook(runner).generator, _gen_hook(plain).generator
    assert gen.steps == 2
    assert all(torch.equal(a, b) for a, b in zip(gen.parameters(), ref.parameters()))
    assert _same_state(_state(plain.model), _state(runner.model.module)) == []
