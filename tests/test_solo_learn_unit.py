"""solo-learn adapter logic that needs no solo-learn: the hvs config block, the crop layout, the
per-sample scorers, the method wrapper (on a stand-in method class), the parse_cfg / METHODS patch
and the launcher's argument handling."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins import CombinationSpace
from hvs_plugins.adapters.solo_learn import (
    HVSMethods,
    candidate_layout,
    check_method,
    expanded_num_crops,
    hvs_parse_cfg,
    make_hvs_method,
    parse_hvs_config,
    patch_main_globals,
)
from hvs_plugins.adapters.solo_learn.scoring import (
    byol_pair_losses,
    mocov2plus_pair_losses,
    mocov3_pair_losses,
    nnclr_pair_losses,
)


class AttrDict(dict):
    """dict with attribute access, standing in for an OmegaConf DictConfig."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as err:
            raise AttributeError(k) from err

    def __setattr__(self, k, v):
        self[k] = v


def ad(obj):
    if isinstance(obj, dict):
        return AttrDict({k: ad(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [ad(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------- import
def test_import_does_not_need_solo_learn():
    code = (
        "import sys; import hvs_plugins.adapters.solo_learn as s; "
        "assert 'solo' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ------------------------------------------------------------------------------- config
def test_config_defaults_and_values():
    cfg = parse_hvs_config({"n_views": 4})
    assert (cfg.n_views, cfg.cap, cfg.exact, cfg.resolution_scale, cfg.chunk_size, cfg.seed, cfg.proxy) == (
        4,
        128,
        False,
        1.0,
        None,
        0,
        False,
    )
    cfg = parse_hvs_config(
        {
            "n_views": 6,
            "cap": 32,
            "exact": True,
            "resolution_scale": 0.5,
            "chunk_size": 16,
            "seed": 3,
            "autocast": "bfloat16",
            "_expanded": True,
        }
    )
    assert cfg.autocast_dtype is torch.bfloat16 and cfg.resolution_scale == 0.5 and cfg.chunk_size == 16
    assert parse_hvs_config(None).n_views == 4


@pytest.mark.parametrize(
    "block, match",
    [
        ({"n_view": 4}, "unknown hvs key"),
        ({"n_views": 1}, "n_views must be an int >= 2"),
        ({"n_views": True}, "n_views must be an int"),
        ({"n_views": 4.0}, "n_views must be an int"),
        ({"cap": 0}, "cap must be an int >= 1"),
        ({"resolution_scale": 0}, r"resolution_scale must be in \(0, 1\]"),
        ({"resolution_scale": 1.5}, r"resolution_scale must be in \(0, 1\]"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"exact": "yes"}, "exact must be true or false"),
        ({"global_pairing": "all"}, "global_pairing must be"),
        ({"autocast": "int8"}, "autocast must be"),
    ],
)
def test_config_errors_name_the_fix(block, match):
    with pytest.raises(ValueError, match=match):
        parse_hvs_config(block)


def test_config_must_be_a_mapping():
    with pytest.raises(TypeError, match="hvs: {n_views: 4}"):
        parse_hvs_config(4)
    with pytest.raises(TypeError, match="mapping"):
        parse_hvs_config(True)


def test_config_from_omegaconf():
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf not installed")
    block = omegaconf.OmegaConf.create({"n_views": 4, "cap": "${.n_views}"})
    assert parse_hvs_config(block).cap == 4


def test_check_method():
    default = parse_hvs_config({})
    for m in ("simsiam", "simclr", "byol", "mocov2plus", "mocov3", "dino", "nnclr", "nnsiam"):
        assert check_method(m, default) == "exact"
    with pytest.raises(ValueError, match="hvs.proxy: true"):
        check_method("barlow_twins", default)
    assert check_method("vicreg", parse_hvs_config({"proxy": True})) == "proxy"
    for m in ("nnbyol", "ressl", "supcon", "deepclusterv2", "swav"):
        assert check_method(m, default) == "exact"
    for m in ("vibcreg", "wmse"):
        assert check_method(m, parse_hvs_config({"proxy": True})) == "proxy"
    with pytest.raises(ValueError, match="does not support solo-learn method 'all4one': its loss adds"):
        check_method("all4one", default)
    with pytest.raises(ValueError, match="does not support solo-learn method 'mae': MAE reconstructs"):
        check_method("mae", default)
    with pytest.raises(ValueError, match="does not support solo-learn method 'mine'; supported"):
        check_method("mine", default)


# ------------------------------------------------------------------------------- layout
def _augs(*pairs):
    return [{"crop_size": c, "num_crops": n} for c, n in pairs]


def test_expand_symmetric_asymmetric_and_small():
    assert expanded_num_crops(_augs((32, 2)), 4, False) == [4]
    assert expanded_num_crops(_augs((32, 2)), 5, False) == [5]
    assert expanded_num_crops(_augs((32, 1), (32, 1)), 4, False) == [2, 2]
    assert expanded_num_crops(_augs((224, 1), (224, 1), (96, 8)), 4, True) == [2, 2, 16]
    assert expanded_num_crops(_augs((224, 1), (224, 1), (96, 8)), 4, False) == [2, 2, 8]
    with pytest.raises(ValueError, match="must be even"):
        expanded_num_crops(_augs((32, 1), (32, 1)), 3, False)
    with pytest.raises(ValueError, match="2 large crops"):
        expanded_num_crops(_augs((32, 4)), 4, False)


def test_candidate_layout():
    lay = candidate_layout(_augs((32, 4)), 4, False)
    assert lay.groups is None and lay.n_crops_in == 4 and lay.n_crops_out == 2
    lay = candidate_layout(_augs((224, 2), (224, 2), (96, 16)), 4, True)
    assert lay.groups == ((0, 1), (2, 3)) and (lay.n_small, lay.n_small_candidates) == (8, 16)
    assert lay.n_crops_in == 20 and lay.n_crops_out == 10
    with pytest.raises(ValueError, match="not switched on in the data pipeline"):
        candidate_layout(_augs((32, 2)), 4, False)


# ------------------------------------------------------------------------------- scorers
def _pairs(n):
    return torch.combinations(torch.arange(n), 2)


def test_byol_scorer_matches_solo_formula():
    torch.manual_seed(0)
    p, zm = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    pairs = _pairs(4)
    got = byol_pair_losses(p, zm, pairs)
    for i, (a, b) in enumerate(pairs.tolist()):
        ref = (2 - 2 * F.cosine_similarity(p[b], zm[a], dim=-1).mean()) + (2 - 2 * F.cosine_similarity(p[a], zm[b], dim=-1).mean())
        assert float(got[i].mean()) == pytest.approx(float(ref), abs=1e-5)


def _infonce(q, k, t):
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    return F.cross_entropy(q @ k.T / t, torch.arange(q.shape[0]))


def test_mocov3_and_nnclr_scorers_match_naive():
    torch.manual_seed(1)
    q, k = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    pairs, t = _pairs(3), 0.2
    m3 = mocov3_pair_losses(q, k, pairs, t)
    nc = nnclr_pair_losses(q, k, pairs, t)
    for i, (a, b) in enumerate(pairs.tolist()):
        ref3 = (_infonce(q[a], k[b], t) + _infonce(q[b], k[a], t)) * 2 * t
        refn = (_infonce(q[a], k[b], t) + _infonce(q[b], k[a], t)) / 2
        assert float(m3[i].mean()) == pytest.approx(float(ref3), abs=1e-5)
        assert float(nc[i].mean()) == pytest.approx(float(refn), abs=1e-5)


def test_gathered_targets_with_offset():
    """Distributed form: this rank's samples are rows offset..offset+M of the gathered targets."""
    torch.manual_seed(2)
    q, kall = torch.randn(2, 3, 8), torch.randn(2, 9, 8)
    pairs, t = _pairs(2), 0.5
    got = mocov3_pair_losses(q, kall[:, 3:6], pairs, t, all_keys=kall, offset=3)
    logits = F.normalize(q[0], dim=-1) @ F.normalize(kall[1], dim=-1).T / t
    ce01 = F.cross_entropy(logits, torch.arange(3, 6), reduction="none")
    logits = F.normalize(q[1], dim=-1) @ F.normalize(kall[0], dim=-1).T / t
    ce10 = F.cross_entropy(logits, torch.arange(3, 6), reduction="none")
    assert torch.allclose(got[0], 2 * t * (ce01 + ce10), atol=1e-5)


def test_mocov2plus_scorer_uses_the_two_queue_halves():
    torch.manual_seed(3)
    q = F.normalize(torch.randn(4, 5, 8), dim=-1)
    k = F.normalize(torch.randn(4, 5, 8), dim=-1)
    queue = F.normalize(torch.randn(2, 8, 16), dim=1)
    pairs = torch.tensor([[0, 1], [1, 0], [2, 3]])
    got = mocov2plus_pair_losses(q, k, pairs, queue, 0.1)

    def ce(qq, kk, qu):
        logits = torch.cat([(qq * kk).sum(-1, keepdim=True), qq @ qu], 1) / 0.1
        return F.cross_entropy(logits, torch.zeros(qq.shape[0], dtype=torch.long))

    for i, (a, b) in enumerate(pairs.tolist()):
        ref = (ce(q[a], k[b], queue[1]) + ce(q[b], k[a], queue[0])) / 2
        assert float(got[i].mean()) == pytest.approx(float(ref), abs=1e-5)
    assert not torch.allclose(got[0], got[1])  # ordered: (0, 1) != (1, 0)
    with pytest.raises(ValueError, match=r"\[2, D, K\]"):
        mocov2plus_pair_losses(q, k, pairs, queue[0], 0.1)


# ------------------------------------------------------------------------------- the wrapper
class FakeSimSiam(nn.Module):
    """Stands in for a solo-learn method: forward -> dict with p and z; training_step records its batch."""

    def __init__(self, cfg):
        super().__init__()
        self.num_large_crops = cfg.data.num_large_crops
        self.num_small_crops = cfg.data.num_small_crops
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.predictor = nn.Linear(8, 8)
        self.seen = None

    def forward(self, x):
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z), "feats": z}

    def multicrop_forward(self, x):
        return {"feats": self.backbone(x)}

    def training_step(self, batch, batch_idx):
        self.seen = batch
        _, X, _ = batch
        assert len(X) == self.num_large_crops + self.num_small_crops
        o1, o2 = self(X[0]), self(X[1])
        return -(F.cosine_similarity(o1["p"], o2["z"].detach()).mean() + F.cosine_similarity(o2["p"], o1["z"].detach()).mean()) / 2


class FakeDINOLoss(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.register_buffer("center", torch.randn(1, k) * 0.1)
        self.teacher_temp_schedule = [0.04, 0.05]
        self.epoch = 0
        self.student_temp = 0.1
        self.num_large_crops = 2


class FakeDINO(FakeSimSiam):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = nn.Linear(8, 16)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_head = copy.deepcopy(self.head)
        self.dino_loss_func = FakeDINOLoss(16)

    def forward(self, x):
        f = self.backbone(x)
        return {"feats": f, "z": self.head(f)}

    @torch.no_grad()
    def momentum_forward(self, x):
        f = self.momentum_backbone(x)
        return {"feats": f, "z": self.momentum_head(f)}

    def training_step(self, batch, batch_idx):
        self.seen = batch
        return torch.zeros(())


def _cfg(method, n_views=4, augs=((16, 2),), small_candidates=False, **hvs):
    augs = _augs(*augs)
    nums = expanded_num_crops(augs, n_views, small_candidates)
    for a, n in zip(augs, nums):
        a["num_crops"] = n
    lay = candidate_layout(augs, n_views, small_candidates)
    return ad(
        {
            "method": method,
            "hvs": {"n_views": n_views, **hvs},
            "augmentations": augs,
            "data": {"num_large_crops": 2, "num_small_crops": lay.n_small},
        }
    )


def _batch(n_large, m=6, size=12, n_small=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = [torch.randn(m, 3, size, size, generator=g) for _ in range(n_large)]
    X += [torch.randn(m, 3, size // 2, size // 2, generator=g) for _ in range(n_small)]
    return [torch.arange(m), X, torch.zeros(m, dtype=torch.long)]


def test_wrapper_trains_on_the_argmax_pair_without_side_effects():
    torch.manual_seed(0)
    cls = make_hvs_method(FakeSimSiam)
    assert cls.__name__ == "HVSFakeSimSiam" and make_hvs_method(cls) is cls and make_hvs_method(FakeSimSiam) is cls
    model = cls(_cfg("simsiam"))
    model.train()
    batch = _batch(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    crops = model.hvs_select(batch[1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    sel = model.hvs_last["selection"]
    assert sel.pairs.shape == (6, 2) and torch.equal(sel.index, sel.pair_losses.argmax(0))
    for i in range(6):
        a, b = sel.pairs[sel.index[i]].tolist()
        assert torch.equal(crops[0][i], batch[1][a][i]) and torch.equal(crops[1][i], batch[1][b][i])
    loss = model.training_step(batch, 0)
    assert len(model.seen[1]) == 2 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="expected 4 crops"):
        model.training_step(_batch(2), 0)


def test_wrapper_rejects_configs_that_were_not_expanded():
    cfg = _cfg("simsiam")
    cfg.augmentations[0].num_crops = 2
    with pytest.raises(ValueError, match="not switched on in the data pipeline"):
        make_hvs_method(FakeSimSiam)(cfg)
    with pytest.raises(ValueError, match="hvs.proxy: true"):
        make_hvs_method(FakeSimSiam)(_cfg("vicreg"))


def test_wrapper_asymmetric_pipelines_score_cross_pairs_only():
    model = make_hvs_method(FakeSimSiam)(_cfg("simsiam", augs=((16, 1), (16, 1))))
    assert model.hvs_selector.pairs.tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


def test_wrapper_resolution_scale_and_chunks_run():
    model = make_hvs_method(FakeSimSiam)(_cfg("simsiam", resolution_scale=0.5, chunk_size=3))
    crops = model.hvs_select(_batch(4)[1])
    assert crops[0].shape == (6, 3, 12, 12)  # training keeps the full-resolution views


@pytest.mark.parametrize("exact", [False, True])
def test_wrapper_dino_multicrop(exact):
    torch.manual_seed(0)
    cfg = _cfg("dino", augs=((12, 1), (12, 1), (6, 3)), small_candidates=True, exact=exact, cap=20)
    model = make_hvs_method(FakeDINO)(cfg)
    model.train()
    lay = model.hvs_layout
    assert (lay.n_views, lay.n_small, lay.n_small_candidates) == (4, 3, 6)
    assert model.dino_loss_func.num_large_crops == 5 and model.hvs_space.global_pairing == "cross"
    assert model._hvs_global_order.tolist() == [0, 2, 1, 3]
    batch = _batch(4, n_small=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.training_step(batch, 0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    crops = model.seen[1]
    assert len(crops) == 5 and crops[2].shape[-1] == 6
    g, locs = model.hvs_last["globals"], model.hvs_last["locals"]
    for i in range(6):  # crop 1 from pipeline 1 (candidates 0, 1), crop 2 from pipeline 2 (2, 3)
        assert g[i, 0] in (0, 1) and g[i, 1] in (2, 3)
        assert torch.equal(crops[0][i], batch[1][g[i, 0]][i]) and torch.equal(crops[1][i], batch[1][g[i, 1]][i])
        for j in range(3):
            assert torch.equal(crops[2 + j][i], batch[1][4 + locs[i, j]][i])
    if exact:  # equals brute force over every combination
        ce = model.hvs_last["ce"]
        space: CombinationSpace = model.hvs_space
        brute = space.evaluate(ce, space.enumerate_all()).max(0).values
        assert torch.allclose(model.hvs_last["choice"].losses, brute, atol=1e-6)
    # small crops now carry the head output (solo-learn's DINO would drop them)
    assert "z" in model.multicrop_forward(batch[1][4])


def test_multicrop_only_for_dino():
    cfg = _cfg("simsiam", augs=((12, 2), (6, 2)))
    with pytest.raises(ValueError, match="DINO and SwAV only"):
        make_hvs_method(FakeSimSiam)(cfg)


# ------------------------------------------------------------------------------- patching
def fake_parse_cfg(cfg):
    big = cfg.augmentations[0].crop_size
    cfg.data.num_large_crops = sum(a.num_crops for a in cfg.augmentations if a.crop_size == big)
    cfg.data.num_small_crops = sum(a.num_crops for a in cfg.augmentations if a.crop_size != big)
    return cfg


def _user_cfg(hvs=None, method="simsiam", augs=((32, 2),)):
    cfg = {"method": method, "augmentations": [dict(a) for a in _augs(*augs)], "data": {}}
    if hvs is not None:
        cfg["hvs"] = hvs
    return ad(cfg)


def test_parse_cfg_patch_expands_and_resets():
    g = {"parse_cfg": fake_parse_cfg, "METHODS": {"simsiam": FakeSimSiam}}
    patch_main_globals(g)
    patch_main_globals(g)  # idempotent
    out = g["parse_cfg"](_user_cfg())
    assert out.data.num_large_crops == 2 and g["METHODS"] == {"simsiam": FakeSimSiam}  # no hvs: untouched
    out = g["parse_cfg"](_user_cfg({"n_views": 4}))
    assert out.augmentations[0].num_crops == 4 and out.data.num_large_crops == 2
    assert isinstance(g["METHODS"], HVSMethods) and g["METHODS"]["simsiam"].__name__ == "HVSFakeSimSiam"
    assert "simsiam" in g["METHODS"] and len(g["METHODS"]) == 1
    again = g["parse_cfg"](out)  # parsed twice: not multiplied twice
    assert again.augmentations[0].num_crops == 4
    out = g["parse_cfg"](_user_cfg({"n_views": 4}, "dino", ((32, 1), (32, 1), (16, 4))))
    assert [a.num_crops for a in out.augmentations] == [2, 2, 8]
    assert (out.data.num_large_crops, out.data.num_small_crops) == (2, 4)
    out = g["parse_cfg"](_user_cfg({"n_views": 4, "enabled": False}))
    assert out.augmentations[0].num_crops == 2


def test_parse_cfg_patch_errors():
    wrapped = hvs_parse_cfg(fake_parse_cfg)
    with pytest.raises(ValueError, match="does not support"):
        wrapped(_user_cfg({"n_views": 4}, "all4one"))
    with pytest.raises(ValueError, match="unknown hvs key"):
        wrapped(_user_cfg({"nviews": 4}))
    cfg = _user_cfg({"n_views": 4})
    cfg.data["format"] = "dali"
    with pytest.raises(ValueError, match="DALI"):
        wrapped(cfg)
    with pytest.raises(RuntimeError, match="not found in main_pretrain"):
        patch_main_globals({"parse_cfg": fake_parse_cfg})


def test_launcher_usage_and_missing_script(tmp_path, monkeypatch):
    from hvs_plugins.adapters.solo_learn import launch

    monkeypatch.delenv(launch.ENV_SCRIPT, raising=False)

    with pytest.raises(SystemExit) as info:
        launch.main([])
    assert info.value.code == 2
    with pytest.raises(FileNotFoundError, match="main_pretrain.py"):
        launch.load_main_pretrain(str(tmp_path / "main_pretrain.py"))


def test_selector_generator_is_checkpointed():
    cfg = _cfg("dino", augs=((12, 1), (12, 1), (6, 2)), small_candidates=True, cap=5, seed=7)
    model = make_hvs_method(FakeDINO)(cfg)
    model.hvs_selector.generator.manual_seed(123)
    torch.randint(10, (3,), generator=model.hvs_selector.generator)
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    expected = torch.randint(1000, (5,), generator=model.hvs_selector.generator)
    other = make_hvs_method(FakeDINO)(cfg)
    other.on_load_checkpoint(ckpt)
    assert torch.equal(torch.randint(1000, (5,), generator=other.hvs_selector.generator), expected)


def test_schedule_skips_steps_with_a_plain_pair():
    with pytest.raises(ValueError, match="hvs.probability must be in"):
        parse_hvs_config({"probability": 1.5})
    with pytest.raises(ValueError, match="hvs.every must be an int >= 1"):
        parse_hvs_config({"every": 0})
    model = make_hvs_method(FakeSimSiam)(_cfg("simsiam", augs=((16, 1), (16, 1)), every=2))
    batch = _batch(4)
    for step, skipped in ((0, False), (1, True), (2, False)):
        model.global_step = step
        crops = model.hvs_select(batch[1])
        assert model.hvs_last.get("skipped", False) is skipped
        if skipped:  # the first candidate of each pipeline
            assert crops[0] is batch[1][0] and crops[1] is batch[1][2]
    model = make_hvs_method(FakeSimSiam)(_cfg("simsiam", start_epoch=1))
    model.current_epoch = 0
    model.hvs_select(batch[1])
    assert model.hvs_last == {"skipped": True}
