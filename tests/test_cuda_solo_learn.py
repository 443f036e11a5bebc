"""The solo-learn method wrapper on every device (``device`` fixture), on stand-in method classes
(no solo-learn needed; the real classes are exercised in test_solo_learn_integration.py): crops on
the device, bitwise state checks, the device's pair losses / DINO combinations equal to those of a
host copy, and the exact multi-crop search with the global-order remap on device tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins.adapters.solo_learn import candidate_layout, expanded_num_crops, make_hvs_method


class Cfg(dict):
    """Attribute access, standing in for an OmegaConf DictConfig."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as err:
            raise AttributeError(k) from err


def _cfg(method, augs, small_candidates=False, **hvs):
    augs = [Cfg(crop_size=c, num_crops=n) for c, n in augs]
    for a, n in zip(augs, expanded_num_crops(augs, 4, small_candidates)):
        a["num_crops"] = n
    lay = candidate_layout(augs, 4, small_candidates)
    return Cfg(method=method, hvs=Cfg(n_views=4, **hvs), augmentations=augs, data=Cfg(num_large_crops=2, num_small_crops=lay.n_small))


class StandInSimSiam(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_large_crops, self.num_small_crops = cfg.data.num_large_crops, cfg.data.num_small_crops
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.predictor = nn.Linear(8, 8)

    def forward(self, x):
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z), "feats": z}

    def multicrop_forward(self, x):
        return {"feats": self.backbone(x)}

    def training_step(self, batch, batch_idx):
        self.seen = batch
        o1, o2 = self(batch[1][0]), self(batch[1][1])
        return -(F.cosine_similarity(o1["p"], o2["z"].detach()).mean() + F.cosine_similarity(o2["p"], o1["z"].detach()).mean()) / 2


class StandInDINOLoss(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.register_buffer("center", torch.randn(1, k) * 0.1)
        self.teacher_temp_schedule, self.epoch, self.student_temp, self.num_large_crops = [0.04], 0, 0.1, 2


class StandInDINO(StandInSimSiam):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = nn.Linear(8, 16)
        self.momentum_backbone, self.momentum_head = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        self.dino_loss_func = StandInDINOLoss(16)

    def forward(self, x):
        f = self.backbone(x)
        return {"feats": f, "z": self.head(f)}

    @torch.no_grad()
    def momentum_forward(self, x):
        f = self.momentum_backbone(x)
        return {"feats": f, "z": self.momentum_head(f)}


def _crops(device, n_large=4, n_small=0, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = [torch.randn(m, 3, 12, 12, generator=g) for _ in range(n_large)]
    X += [torch.randn(m, 3, 6, 6, generator=g) for _ in range(n_small)]
    return [x.to(device) for x in X]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kw", [{}, {"resolution_scale": 0.5, "autocast": "bfloat16"}])
def test_wrapper_selects_on_device(device, kw):
    torch.manual_seed(0)
    cfg = _cfg("simsiam", [(12, 2)], **kw)
    model = make_hvs_method(StandInSimSiam)(cfg).to(device).train()
    host = copy.deepcopy(model).cpu()
    X = _crops(device)
    before, rng = _state(model), torch.get_rng_state()
    crops = model.hvs_select(X)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, torch.get_rng_state())
    sel = model.hvs_last["selection"]
    assert crops[0].device.type == sel.index.device.type == device.type
    for i, (a, b) in enumerate(sel.chosen.tolist()):
        assert torch.equal(crops[0][i], X[a][i]) and torch.equal(crops[1][i], X[b][i])
    host.hvs_select([x.cpu() for x in X])
    tol = dict(rtol=0, atol=5e-2) if kw else dict(rtol=1e-4, atol=1e-5)  # bf16 on the device vs the host
    torch.testing.assert_close(sel.pair_losses.cpu(), host.hvs_last["selection"].pair_losses, **tol)


def test_wrapper_dino_exact_multicrop_on_device(device):
    torch.manual_seed(0)
    cfg = _cfg("dino", [(12, 1), (12, 1), (6, 3)], small_candidates=True, exact=True)
    model = make_hvs_method(StandInDINO)(cfg).to(device).train()
    host = copy.deepcopy(model).cpu()
    X = _crops(device, n_small=6)
    before = _state(model)
    crops = model.hvs_select(X)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    g, locs = model.hvs_last["globals"], model.hvs_last["locals"]
    assert g.device.type == device.type and len(crops) == 5
    for i in range(6):  # crop 1 from pipeline 1 (candidates 0, 1), crop 2 from pipeline 2 (2, 3)
        assert int(g[i, 0]) in (0, 1) and int(g[i, 1]) in (2, 3)
        assert torch.equal(crops[0][i], X[int(g[i, 0])][i]) and torch.equal(crops[1][i], X[int(g[i, 1])][i])
        assert torch.equal(crops[2][i], X[4 + int(locs[i, 0])][i])
    host.hvs_select([x.cpu() for x in X])
    assert torch.equal(g.cpu(), host.hvs_last["globals"]) and torch.equal(locs.cpu(), host.hvs_last["locals"])
