"""Misuse and faults with MMSelfSup (a real mmengine Runner): see tests/test_robustness.py for the cases."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn

from hvs_plugins import HVSUnscorableWarning
from robustness_common import one_thread  # noqa: F401 (autouse fixture: one thread per test)
from robustness_common import HELPERS, EMPTY, NOT_TENSOR, ONE_SAMPLE_FALLBACK, needs_mmselfsup


# ===================================================================== MMSelfSup
_MM_HELPER = []


def _mm():
    """The helper module, loaded once (its classes are registered in MMSelfSup's registries)."""
    if not _MM_HELPER:
        spec = importlib.util.spec_from_file_location("_hvs_mmselfsup_dist", HELPERS / "mmselfsup_dist.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _MM_HELPER.append(mod)
    return _MM_HELPER[0]


def _mm_runner(tmp_path, name="run", algo="SimSiam", **kw):
    from mmengine.runner import Runner

    helper = _mm()
    kw.setdefault("n_images", 8)  # 2 iterations an epoch
    return Runner.from_cfg(helper.make_cfg(algo, str(tmp_path / name), launcher="none", **kw)), helper


def _mm_hook(runner):
    from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook

    return next(h for h in runner.hooks if isinstance(h, HardViewSelectionHook))


def _mm_records(runner, helper):
    return next(h for h in runner.hooks if isinstance(h, helper.HVSDistRecorder)).records


def _poison_predictor(runner, samples: dict[int, float]):
    """NaN/inf in the predictor output of chosen samples, in the no-grad selection forward only."""
    model = runner.model.module if hasattr(runner.model, "module") else runner.model

    def hook(module, args, out):
        if torch.is_grad_enabled():
            return out
        out = list(out)
        out[0] = out[0].clone()
        for i, v in samples.items():
            out[0][i] = v
        return tuple(out)

    return model.head.predictor.register_forward_hook(hook)


@needs_mmselfsup
def test_mmselfsup_n_views_below_two():
    from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook

    with pytest.raises(ValueError, match=r"n_views must be >= 2 \(got 1\)"):
        HardViewSelectionHook(n_views=1)


@needs_mmselfsup
def test_mmselfsup_pipeline_with_other_view_count(tmp_path):
    runner, _ = _mm_runner(tmp_path, n_views=4, num_views=2)
    with pytest.raises(
        ValueError,
        match=r"HardViewSelectionHook\(n_views=4\) needs 4 candidate views per image, but "
        r"the train pipeline's MultiView makes num_views=\[2\] \(= 2\)\. Set num_views=4 in MultiView",
    ):
        runner.train()
    # a batch that disagrees (e.g. a pipeline changed behind the hook's back)
    runner2, _ = _mm_runner(tmp_path, "run2")
    hook = _mm_hook(runner2)
    hook.before_train(runner2)
    batch = {"inputs": [torch.zeros(4, 3, 16, 16, dtype=torch.uint8)] * 3, "data_samples": None}
    with pytest.raises(
        ValueError,
        match=r"HardViewSelectionHook\(n_views=4\) got 3 views in the batch: the train "
        r"pipeline must emit 4 views \(MultiView num_views\)",
    ):
        hook.before_train_iter(runner2, 0, batch)


@needs_mmselfsup
def test_mmselfsup_views_of_different_shapes(tmp_path):
    runner, _ = _mm_runner(tmp_path)
    hook = _mm_hook(runner)
    hook.before_train(runner)
    batch = {"inputs": [torch.zeros(4, 3, s, s, dtype=torch.uint8) for s in (16, 16, 16, 12)], "data_samples": None}
    with pytest.raises(ValueError, match=r"candidate views must all have the same shape"):
        hook.before_train_iter(runner, 0, batch)


@needs_mmselfsup
def test_mmselfsup_unsupported_algorithm(tmp_path):
    from hvs_plugins.adapters.mmselfsup.scoring import check_supported
    from mmselfsup.models.algorithms import BarlowTwins

    class Mine(nn.Module):
        pass

    with pytest.raises(
        NotImplementedError,
        match=r"HardViewSelectionHook does not support the algorithm Mine: "
        r"supported are SimSiam, SimCLR, BYOL, MoCo, MoCoV3",
    ):
        check_supported(Mine())
    bt = BarlowTwins.__new__(BarlowTwins)  # a real MMSelfSup algorithm without a per-sample loss (proxy only)
    nn.Module.__init__(bt)
    with pytest.raises(
        NotImplementedError,
        match=r"BarlowTwins has no per-sample loss .* set "
        r"dict\(type='HardViewSelectionHook', proxy=True\) .* or remove the hook",
    ):
        check_supported(bt)
    assert check_supported(bt, proxy=True) == "BarlowTwins"


@needs_mmselfsup
def test_mmselfsup_non_finite_outputs_fall_back_with_a_warning(tmp_path):
    runner, helper = _mm_runner(tmp_path)
    handle = _poison_predictor(runner, {0: float("nan"), 2: float("inf")})
    with pytest.warns(UserWarning, match=r"HVS: 2 of 4 samples had no finite pair loss"):
        runner.train()
    handle.remove()
    recs = _mm_records(runner, helper)
    assert len(recs) == 2 and all(r["fallback"].tolist() == [True, False, True, False] for r in recs)
    assert all(r["loss"] is not None and torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    assert all(bool(torch.isfinite(p).all()) for p in runner.model.parameters())  # training went on


@needs_mmselfsup
def test_mmselfsup_chunk_larger_than_batch(tmp_path):
    a, helper = _mm_runner(tmp_path, "a", fixed_views=True)
    a.train()
    b, _ = _mm_runner(tmp_path, "b", fixed_views=True, chunk_size=4096)
    b.train()
    for ra, rb in zip(_mm_records(a, helper), _mm_records(b, helper)):
        assert torch.equal(ra["index"], rb["index"]) and torch.equal(ra["pair_losses"], rb["pair_losses"])


@needs_mmselfsup
def test_mmselfsup_resume_across_hvs_on_and_off(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    # a run without HVS (2 views), resumed with HVS (4 candidates): the selector starts fresh
    plain, _ = _mm_runner(tmp_path, "plain", hook=False, recorder=False, n_views=2)
    plain.train()
    assert "hvs_selector" not in torch.load(tmp_path / "plain" / "epoch_1.pth", weights_only=False)
    resumed, _ = _mm_runner(tmp_path, "plain", max_epochs=2, resume=True)
    resumed.train()
    assert resumed.iter == 4 and _mm_hook(resumed).last_selection is not None
    # a run with HVS resumed without it: the extra checkpoint entry is ignored
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    hvs, _ = _mm_runner(tmp_path, "hvs")
    hvs.train()
    assert "hvs_selector" in torch.load(tmp_path / "hvs" / "epoch_1.pth", weights_only=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # without the hook, nobody sets it
    back, _ = _mm_runner(tmp_path, "hvs", hook=False, recorder=False, n_views=2, max_epochs=2, resume=True)
    back.train()
    assert back.iter == 4


@needs_mmselfsup
def test_mmselfsup_interrupt_and_resume_gives_the_same_selections(tmp_path, monkeypatch):
    """Deterministic candidates (a crop per image and view number) and a poisoned sample, so that
    fallbacks draw from the selector's generator: resuming restores it from the checkpoint."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    poison = {1: float("nan")}
    full, helper = _mm_runner(tmp_path, "full", fixed_views=True, max_epochs=2)
    _poison_predictor(full, poison)
    with pytest.warns(UserWarning, match="no finite pair loss"):
        full.train()
    first, _ = _mm_runner(tmp_path, "cut", fixed_views=True, max_epochs=1)
    _poison_predictor(first, poison)
    with pytest.warns(UserWarning, match="no finite pair loss"):
        first.train()
    saved = torch.load(tmp_path / "cut" / "epoch_1.pth", weights_only=False)["hvs_selector"]
    resumed, _ = _mm_runner(tmp_path, "cut", fixed_views=True, max_epochs=2, resume=True)
    _poison_predictor(resumed, poison)
    with pytest.warns(UserWarning, match="no finite pair loss"):
        resumed.train()
    full_recs = _mm_records(full, helper)
    cut_recs = _mm_records(first, helper) + _mm_records(resumed, helper)
    assert [r["iter"] for r in full_recs] == [r["iter"] for r in cut_recs] == [0, 1, 2, 3]
    for a, b in zip(full_recs, cut_recs):
        for x, y in zip(a["inputs"], b["inputs"]):
            assert torch.equal(x, y), "the candidates differ: the test's data is not deterministic"
        assert bool(a["fallback"][1]) and torch.equal(a["fallback"], b["fallback"])
        assert torch.equal(a["index"], b["index"]), f"iteration {a['iter']} selected differently after resuming"
    assert torch.equal(torch.as_tensor(saved["generator"]), torch.as_tensor(_mm_hook(first).selector.state_dict()["generator"]))
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@needs_mmselfsup
def test_mmselfsup_bad_input_names_cause_and_fix(tmp_path):
    runner, _ = _mm_runner(tmp_path)
    hook = _mm_hook(runner)
    hook.before_train(runner)
    raw = lambda m: [torch.zeros(m, 3, 16, 16, dtype=torch.uint8)] * 4  # noqa: E731
    with pytest.raises(ValueError, match=EMPTY):
        hook.before_train_iter(runner, 0, {"inputs": raw(0), "data_samples": []})
    with pytest.raises(TypeError, match=NOT_TENSOR):
        hook.before_train_iter(runner, 0, {"inputs": ["a.png"] * 4, "data_samples": []})
    # 1 sample under train-mode BatchNorm (the last batch of an epoch without drop_last): not an
    # error any more (issue 18) but a plain pair (candidate pair 0), counted and warned about once
    one = [torch.full((1, 3, 16, 16), k, dtype=torch.uint8) for k in range(4)]
    batch = {"inputs": one, "data_samples": [None]}
    with pytest.warns(HVSUnscorableWarning, match=ONE_SAMPLE_FALLBACK):
        hook.before_train_iter(runner, 0, batch)
    a, b = hook.selector.pairs[0].tolist()
    assert len(batch["inputs"]) == 2 and batch["inputs"][0] is one[a] and batch["inputs"][1] is one[b]
    assert hook.selector.unscorable.count == 1
    assert runner.message_hub.get_scalar("train/hvs/unscorable_batches").current() == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", HVSUnscorableWarning)  # once only
        hook.before_train_iter(runner, 0, {"inputs": list(one), "data_samples": [None]})
    assert hook.selector.unscorable.count == 2
    assert runner.message_hub.get_scalar("train/hvs/unscorable_batches").current() == 2.0
