"""solo-learn traps (issue 18), against the real solo-learn 1.0.6; in-process and fast (the runs of
main_pretrain.py / main_linear.py are in tests/test_solo_learn_integration.py):

- checkpoints of the HVS methods hold no function: solo-learn's SimSiam puts a ``functools.partial``
  (``static_lr``) in its scheduler state, which ``torch.load(weights_only=True)`` (torch >= 2.6:
  Lightning's resume, ``main_linear.py``) refuses and a full load turns into a ``RecursionError``;
- a batch HVS cannot score (1 sample under train-mode BatchNorm, a 1-sample selection chunk) trains on
  the plain pair, counted (``hvs/unscorable_batches``) and warned about once; DINO multi-crop goes on
  inside a real Lightning fit, and logs ``hvs/hardness_gap`` like the two-view methods;
- the reuse checks use the core's per-sample scan (``hvs_plugins.per_sample``);
- the ready configs accept solo-learn's usual ``wandb.enabled=False`` override.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
READY = sorted(p.stem for p in (REPO / "configs" / "solo_learn").glob("*.yaml"))
needs_solo = pytest.mark.skipif(
    importlib.util.find_spec("solo") is None,
    reason="solo-learn is not installed (no usable registry build); to run these: "
    "HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test",
)


def _build(method: str, hvs: dict, small: int = 0, **changes):
    """The HVS version of a real solo-learn method (the integration suite's tiny config + changes)."""
    from omegaconf import OmegaConf
    from solo.args.pretrain import parse_cfg
    from solo.methods import METHODS
    from test_solo_learn_integration import base_cfg

    from hvs_plugins.adapters.solo_learn import hvs_parse_cfg, make_hvs_method

    raw = base_cfg(method, hvs, small=small)
    raw.update(changes)
    cfg = OmegaConf.create(raw)
    OmegaConf.set_struct(cfg, False)
    cfg = hvs_parse_cfg(parse_cfg)(cfg)
    torch.manual_seed(0)
    model = make_hvs_method(METHODS[method])(cfg)
    model.train()
    return model


# ------------------------------------------------------------------ A: checkpoints / resume
STEP_SCHEDULER = {"scheduler": {"name": "step", "lr_decay_steps": [1]}}  # no Trainer needed to build it


def _optimizer_and_scheduler(model):
    optimizers, schedulers = model.configure_optimizers()
    return optimizers[0], schedulers[0]


@needs_solo
def test_checkpoint_drops_solo_learns_scheduler_partial_and_loads_weights_only():
    from hvs_plugins.adapters.solo_learn.method import drop_scheduler_functions

    model = _build("simsiam", {"n_views": 4}, **STEP_SCHEDULER)
    opt, sched = _optimizer_and_scheduler(model)
    state = sched.state_dict()
    assert "get_lr" in state  # the trap: solo-learn's static_lr partial is scheduler state (SimSiam's predictor)
    buf = io.BytesIO()
    torch.save({"lr_schedulers": [state]}, buf)
    with pytest.raises(Exception, match="functools.partial"):
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    opt.step(), sched.step()  # state worth restoring: epoch 1, decayed learning rates
    checkpoint = {"lr_schedulers": [sched.state_dict()], "optimizer_states": [opt.state_dict()]}
    model.on_save_checkpoint(checkpoint)
    assert "get_lr" not in checkpoint["lr_schedulers"][0] and "get_lr" in sched.__dict__  # the live one keeps it
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # plain data only
    assert loaded["hvs_unscorable"] == {"count": 0} and "hvs_selector" in loaded

    # resume into a fresh model: its own partial stays, bound to its own scheduler; same learning rates
    fresh = _build("simsiam", {"n_views": 4}, **STEP_SCHEDULER)
    opt2, sched2 = _optimizer_and_scheduler(fresh)
    fresh.on_load_checkpoint(loaded)
    sched2.load_state_dict(loaded["lr_schedulers"][0])
    opt2.load_state_dict(loaded["optimizer_states"][0])
    opt.step(), sched.step()
    opt2.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    pred = [g.get("name") for g in opt.param_groups].index("predictor")
    assert sched2.get_last_lr()[pred] == model.lr != sched2.get_last_lr()[0]  # static predictor lr, decayed others

    # a checkpoint written without the HVS wrapper, loaded with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1:
    # its stale partial is dropped before Lightning restores the scheduler (else RecursionError)
    stale = {"lr_schedulers": [copy.copy(state)]}
    fresh.on_load_checkpoint(stale)
    assert "get_lr" not in stale["lr_schedulers"][0]
    assert drop_scheduler_functions({"lr_schedulers": [{"last_epoch": 3, "base_lrs": [0.1]}]}) == []


# ------------------------------------------------------------------ B + D: unscorable batches, statistics
def _candidates(model, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lay = model.hvs_layout
    large = [torch.randn(m, 3, 16, 16, generator=g) for _ in range(lay.n_views)]
    small = [torch.randn(m, 3, 8, 8, generator=g) for _ in range(lay.n_small_candidates)]
    return [torch.arange(m), large + small, torch.zeros(m, dtype=torch.long)]


@needs_solo
def test_dino_multicrop_one_sample_trains_on_the_plain_layout():
    from hvs_plugins import HVSUnscorableWarning

    torch.set_num_threads(1)
    model = _build("dino", {"n_views": 4, "cap": 8}, small=2)
    lay = model.hvs_layout
    idx, crops, y = _candidates(model, 1)
    with pytest.warns(HVSUnscorableWarning, match=r"a batch of 1 sample, and BatchNorm in train mode \(backbone\.bn1\)"):
        out = model.hvs_select(crops, indexes=idx, targets=y)
    g0, g1 = lay.groups  # one candidate of each global pipeline, then the first small candidates
    assert [id(c) for c in out] == [id(crops[g0[0]]), id(crops[g1[0]])] + [id(c) for c in crops[lay.n_views :][: lay.n_small]]
    assert model.hvs_selector.unscorable.count == 1 and model.hvs_last["skipped"]
    loss = model.training_step([idx, crops, y], 0)  # the host's own step goes on with 1 sample
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert torch.isfinite(loss) and model.hvs_selector.unscorable.count == 2


@needs_solo
def test_a_one_sample_selection_chunk_is_unscorable_by_the_error_it_raises():
    """chunk_size 1 on a batch of 3: the first selection forward gets 1 sample (chunks 1 + 2); torch's BatchNorm error
    (recognised by hvs_plugins.unscorable.reason_from_error) makes the batch a counted plain pair."""
    from hvs_plugins import HVSUnscorableWarning

    torch.set_num_threads(1)
    model = _build("simsiam", {"n_views": 4, "chunk_size": 1})
    idx, crops, y = _candidates(model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(HVSUnscorableWarning, match=r"one value per channel"):
        out = model.hvs_select(crops)
    assert out[0] is crops[0] and out[1] is crops[1] and model.hvs_selector.unscorable.count == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the guard restored state
    loss = model.training_step([idx, crops, y], 0)  # the host's step on that pair
    assert torch.isfinite(loss["loss"] if isinstance(loss, dict) else loss)


@needs_solo
def test_fit_with_a_one_sample_last_batch_goes_on_and_logs_hvs_statistics(tmp_path):
    """DINO multi-crop in a real Lightning fit, 5 samples in batches of 4 (no drop_last): the last
    batch of each epoch holds 1 sample. Training goes on, 2 unscorable batches are counted and logged
    (hvs/unscorable_batches), one warning; the scored batches log hvs/hardness_gap (multi-crop too)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers.logger import Logger

    from hvs_plugins import HVSUnscorableWarning

    class Capture(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict] = []

        name, version = "capture", 0

        def log_metrics(self, metrics, step=None) -> None:
            self.rows.append(dict(metrics))

        def log_hyperparams(self, *args, **kwargs) -> None:
            pass

    torch.set_num_threads(1)
    model = _build("dino", {"n_views": 4, "cap": 8}, small=2)
    data = [(i, [c[0] for c in _candidates(model, 1, seed=i)[1]], 0) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)
    logger = Capture()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    assert trainer.global_step == 4 and model.hvs_selector.unscorable.count == 2
    assert sum(issubclass(w.category, HVSUnscorableWarning) for w in caught) == 1
    counts = [r["hvs/unscorable_batches"] for r in logger.rows if "hvs/unscorable_batches" in r]
    assert counts == [0.0, 1.0, 1.0, 2.0], counts
    # the 2 scored (4-sample) batches (Lightning repeats a step metric's last value in later rows)
    gaps = {r["hvs/hardness_gap"] for r in logger.rows if "hvs/hardness_gap" in r}
    assert len(gaps) == 2 and all(g >= 0 for g in gaps), gaps
    assert all("hvs/combinations" in r for r in logger.rows if "hvs/hardness_gap" in r)


# ------------------------------------------------------------------ C: the core's per-sample scan
@needs_solo
def test_reuse_checks_use_the_core_per_sample_scan():
    from hvs_plugins import per_sample
    from hvs_plugins.adapters.solo_learn import target_reuse

    assert target_reuse.breaks_per_sample is per_sample.breaks_per_sample
    assert target_reuse.modules_run is per_sample.modules_run
    assert not hasattr(target_reuse, "_breaks_per_sample") and not hasattr(target_reuse, "_modules_run")

    class Momentum(nn.Module):  # a stand-in with solo-learn's momentum_pairs
        def __init__(self) -> None:
            super().__init__()
            self.projector = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 4), nn.Dropout(0.2))
            self.momentum_projector = copy.deepcopy(self.projector)

        @property
        def momentum_pairs(self):
            return [(self.projector, self.momentum_projector)]

    model = Momentum()
    with pytest.raises(
        ValueError,
        match=r"momentum_projector has Dropout in train mode "
        r"\(momentum_projector\.1, momentum_projector\.3\)\. Set hvs\.reuse_target",
    ):
        target_reuse.check_momentum_networks(model)
    recorder_model = Momentum().eval()
    recorder = target_reuse.MomentumRecorder(recorder_model)
    recorder_model.momentum_projector[3].train()  # flipped back to train mode: found where it runs
    with pytest.raises(
        ValueError,
        match=r"the selection's momentum forward ran: momentum_projector has Dropout "
        r"in train mode \(momentum_projector\.3\)",
    ):
        recorder(lambda x: {"z": recorder_model.momentum_projector(x)}, torch.randn(2, 4))


# ------------------------------------------------------------------ D: wandb override of the ready configs
@pytest.mark.parametrize("name", READY)
def test_ready_configs_accept_the_wandb_override(name):
    """`wandb.enabled=False` (solo-learn's usual command-line override) needs a wandb block in the
    struct-mode config Hydra composes ("Key 'wandb' is not in struct" without it)."""
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs" / "solo_learn"), version_base="1.2"):
        cfg = compose(config_name=name, overrides=["wandb.enabled=False", "wandb.project=hvs", "wandb.entity=me"])
    assert cfg.wandb.enabled is False and cfg.wandb.project == "hvs" and cfg.wandb.offline is False
