"""solo-learn ``hvs.score_layer`` (APPROXIMATE layer scoring) on a stand-in method class: the
selection equals a brute-force cosine-distance argmax on that module's activations, state stays
bitwise unchanged, and bad settings are clear errors at construction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins import all_pairs, resize_views
from hvs_plugins.adapters.solo_learn import candidate_layout, expanded_num_crops, make_hvs_method, parse_hvs_config


class Cfg(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as err:
            raise AttributeError(k) from err


def _cfg(method="simsiam", augs=((12, 2),), small=False, **hvs):
    augs = [Cfg(crop_size=c, num_crops=n) for c, n in augs]
    for a, n in zip(augs, expanded_num_crops(augs, 4, small)):
        a["num_crops"] = n
    lay = candidate_layout(augs, 4, small)
    return Cfg(method=method, hvs=Cfg(n_views=4, **hvs), augmentations=augs, data=Cfg(num_large_crops=2, num_small_crops=lay.n_small))


class StandIn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_large_crops, self.num_small_crops = cfg.data.num_large_crops, cfg.data.num_small_crops
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.predictor = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        z = self.projector(self.backbone(x))
        return {"z": z, "p": self.predictor(z), "feats": z}

    def multicrop_forward(self, x):
        return {"feats": self.backbone(x)}


@pytest.mark.parametrize("layer,scale", [("backbone.0", 1.0), ("backbone.2", 0.5), ("backbone.4", 1.0)])
def test_score_layer_equals_brute_force(layer, scale):
    torch.manual_seed(0)
    model = make_hvs_method(StandIn)(_cfg(score_layer=layer, resolution_scale=scale)).train()
    assert model.hvs_mode == "approximate"
    g = torch.Generator().manual_seed(0)
    X = [torch.randn(6, 3, 12, 12, generator=g) for _ in range(4)]
    ran = []
    model.projector.register_forward_hook(lambda *a: ran.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crops = model.hvs_select(X)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert ran == []  # the projector behind the score layer never ran
    ref = copy.deepcopy(model)
    depth = int(layer.split(".")[1]) + 1
    with torch.no_grad():
        f = torch.stack([ref.backbone[:depth](resize_views(x, scale)).flatten(1) for x in X])
    f = F.normalize(f, dim=-1)
    dist = torch.stack([1 - (f[k] * f[l]).sum(-1) for k, l in all_pairs(4).tolist()])
    sel = model.hvs_last["selection"]
    torch.testing.assert_close(sel.pair_losses, dist, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel.index, dist.argmax(0))
    for i, (a, b) in enumerate(sel.chosen.tolist()):
        assert torch.equal(crops[0][i], X[a][i]) and torch.equal(crops[1][i], X[b][i])


def test_score_layer_errors():
    with pytest.raises(ValueError, match=r"score_layer='backbone\.9' is not a module of .*valid names: backbone, backbone\.0"):
        make_hvs_method(StandIn)(_cfg(score_layer="backbone.9"))
    with pytest.raises(ValueError, match="hvs.score_layer must be null or a module name"):
        parse_hvs_config({"score_layer": 3})
    with pytest.raises(ValueError, match="two different approximations"):
        parse_hvs_config({"score_layer": "backbone.0", "proxy": True})
    assert parse_hvs_config({}).score_layer is None  # never the default
