"""Issue 18, the MMSelfSup traps: never a silent wrong result, never a crash where the host would go
on. Real mmengine Runners on CPU with tiny images (helpers from test_mmselfsup_hook)."""

from __future__ import annotations

import os
import re
import warnings

import pytest

pytest.importorskip("mmselfsup", reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")

import torch  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from test_mmselfsup_hook import _hook, _one_thread, make_cfg  # noqa: E402

import hvs_plugins.adapters.mmselfsup.hook as hook_module  # noqa: E402
from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook  # noqa: E402
from hvs_plugins.adapters.mmselfsup.hook import hook_options  # noqa: E402
from hvs_plugins.unscorable import HVSUnscorableWarning  # noqa: E402

__all__ = ["_one_thread"]  # its module-scoped autouse fixture (1 intra-op thread) applies here too


def _unscorable_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, HVSUnscorableWarning)]


# ------------------------------------------------- case 5: a 1-sample last batch (no drop_last)
def one_sample_tail_cfg(algo, work_dir, **kw):
    """9 images, batch 4, no drop_last (MMSelfSup's shipped SimCLR config has none): batches of
    4, 4 and 1 sample every epoch."""
    cfg = make_cfg(algo, work_dir, **kw)
    cfg.train_dataloader.drop_last = False
    cfg.train_dataloader.dataset.n = 9
    return cfg


def test_one_sample_last_batch_trains_on_a_plain_pair_counted_and_warned_once(tmp_path):
    runner = Runner.from_cfg(one_sample_tail_cfg("SimCLR", tmp_path / "run", max_epochs=2))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        runner.train()  # was: ValueError "HVS got a batch of 1 sample ... BatchNorm" in epoch 1
    assert runner.iter == 6 and runner.epoch == 2  # both epochs, every batch trained
    hook = _hook(runner)
    assert hook.selector.unscorable.count == 2  # one 1-sample batch per epoch
    found = _unscorable_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    assert "drop_last=True" in str(found[0].message)
    # the last batch trained on candidate pair 0 (a plain random pair), nothing scored
    sel = hook.last_selection
    assert sel.index.tolist() == [0] and sel.chosen.tolist() == [hook.selector.pairs[0].tolist()]
    assert bool(torch.isnan(sel.pair_losses).all())
    assert runner.message_hub.get_scalar("train/hvs/unscorable_batches").mean() == 2.0
    log = open(os.path.join(runner.log_dir, f"{runner.timestamp}.log")).read()
    assert "hvs/unscorable_batches: 1.0000" in log and "hvs/unscorable_batches: 2.0000" in log  # the running count
    # the count is part of the hook's checkpoint state, and a resumed run goes on counting
    e1 = torch.load(tmp_path / "run" / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert e1["hvs_selector"]["unscorable"] == {"count": 1}
    cfg = one_sample_tail_cfg("SimCLR", tmp_path / "resumed", max_epochs=2, resume=True)
    cfg.load_from = str(tmp_path / "run" / "epoch_1.pth")
    resumed = Runner.from_cfg(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HVSUnscorableWarning)
        resumed.train()
    assert resumed.iter == 6 and _hook(resumed).selector.unscorable.count == 2


@pytest.fixture(scope="module")
def simsiam_runner(tmp_path_factory):
    runner = Runner.from_cfg(make_cfg("SimSiam", tmp_path_factory.mktemp("simsiam")))
    _hook(runner).before_train(runner)
    return runner


def _raw(m):
    return [torch.full((m, 3, 16, 16), k, dtype=torch.uint8) for k in range(4)]


def test_batchnorm_error_in_the_scoring_forward_falls_back(simsiam_runner, monkeypatch):
    """Where the pre-check does not see it, torch's own BatchNorm error in the selection forward
    is turned into the same fallback; any other error is raised."""
    runner = simsiam_runner
    hook = _hook(runner)
    monkeypatch.setattr(hook_module, "unscorable_reason", lambda views, modules: None)
    before = hook.selector.unscorable.count
    batch = {"inputs": _raw(1), "data_samples": [None]}
    with pytest.warns(HVSUnscorableWarning) if before == 0 else warnings.catch_warnings():
        hook.before_train_iter(runner, 0, batch)  # the scoring forward raises torch's BN error
    a, b = hook.selector.pairs[0].tolist()
    assert [int(v[0, 0, 0, 0]) for v in batch["inputs"]] == [a, b]
    assert hook.selector.unscorable.count == before + 1
    assert "one value per channel" in hook.selector.unscorable.last_reason

    def broken(*args, **kwargs):
        raise ValueError("a real bug in the scorer")

    monkeypatch.setattr(hook_module, "score_pairs", broken)
    with pytest.raises(ValueError, match="a real bug in the scorer"):
        hook.before_train_iter(runner, 0, {"inputs": _raw(2), "data_samples": [None] * 2})
    assert hook.selector.unscorable.count == before + 1


# ------------------------------------ case 7: BYOL's two pipelines with an odd n_views
def test_asymmetric_view_count_error_names_fixes_that_work(tmp_path):
    runner = Runner.from_cfg(make_cfg("BYOL", tmp_path / "bad", n_views=3, num_views=[2, 2]))
    with pytest.raises(ValueError) as info:
        runner.train()
    message = str(info.value)
    assert "n_views must be even" in message and "num_views=[1, 1]" in message
    fixes = message.split(" use ", 1)[1].split(". MultiView is in")[0].split(", or ")
    assert len(fixes) == 2 and "n_views=4" in fixes[0]  # the one-edit fix first
    for i, fix in enumerate(fixes):  # follow each piece of advice: the run starts and trains
        n_views = int(re.search(r"n_views=(\d+)", fix).group(1))
        split = re.search(r"num_views=\[(\d+), (\d+)\] in MultiView", fix)
        num_views = [int(split.group(1)), int(split.group(2))] if split else [2, 2]
        fixed = Runner.from_cfg(make_cfg("BYOL", tmp_path / f"fix{i}", n_views=n_views, num_views=num_views))
        fixed.train()
        assert fixed.iter == 2, fix


def test_view_count_message_for_odd_n_views_never_suggests_an_uneven_split():
    hook = HardViewSelectionHook(n_views=5)
    message = hook._view_count_message([1, 1])
    assert "num_views=[3, 3]" in message and "num_views=[2, 2]" in message
    assert "num_views=[2, 3]" not in message and "[2.5" not in message
    assert "n_views=2 in the hook (it matches num_views=[1, 1])" in message


# ------------------------------------ case 10: an unknown option names the valid ones
def test_unknown_option_names_it_the_closest_and_the_valid_ones(tmp_path):
    with pytest.raises(TypeError) as info:
        HardViewSelectionHook(resolution=0.5)
    message = str(info.value)
    assert "'resolution' (did you mean 'resolution_scale'?)" in message
    for name in hook_options():
        assert name in message
    # built from a config dict through mmengine's registry: the same message reaches the user
    with pytest.raises(TypeError, match=r"'resolution' \(did you mean 'resolution_scale'\?\).*Valid options: n_views"):
        Runner.from_cfg(make_cfg("SimSiam", tmp_path / "bad", resolution=0.5))
    suggested = re.search(r"did you mean '(\w+)'", message).group(1)
    runner = Runner.from_cfg(make_cfg("SimSiam", tmp_path / "fixed", **{suggested: 0.5}))
    runner.train()
    assert runner.iter == 2 and _hook(runner).selector.resolution_scale == 0.5


def test_unknown_options_without_a_close_match():
    with pytest.raises(TypeError, match=r"unknown options 'foo', 'n_view' \(did you mean 'n_views'\?\)"):
        HardViewSelectionHook(foo=1, n_view=4)


# ------------------------------------ the docstring documents every option
def test_docstring_lists_every_option():
    options = hook_options()
    assert {"probability", "start_epoch", "reuse_target", "score_layer"} <= set(options)
    args = HardViewSelectionHook.__doc__.split("Args:", 1)[1]
    missing = [name for name in options if not re.search(rf"\b{name}\b", args)]
    assert missing == []
