"""score_layer (APPROXIMATE selection on an earlier layer's activations): the selection equals a
brute-force cosine-distance argmax on that layer, the network runs only up to it, state and RNG
stay bitwise unchanged, and bad names are clear errors (core and the lightly adapter)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins import HardViewSelector, all_pairs, resize_views
from hvs_plugins.layer_scoring import cosine_distance_pair_losses, layer_names, select_by_layer


class MiniResNet(nn.Module):
    """ResNet's module names (conv1, bn1, layer1, layer2, avgpool, fc) in a few channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.layer1 = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.register_buffer("calls", torch.zeros(()))

    def stages(self, x):
        """Activations after each named module, computed directly (the brute-force reference)."""
        out = {"conv1": self.conv1(x)}
        out["layer1"] = self.layer1(self.bn1(out["conv1"]).relu())
        out["layer2"] = self.layer2(out["layer1"])
        out["avgpool"] = self.avgpool(out["layer2"])
        return out

    def forward(self, x):
        self.calls.add_(1)  # a buffer the forward writes: the guard must undo it
        h = self.avgpool(self.layer2(self.layer1(self.bn1(self.conv1(x)).relu()))).flatten(1)
        return self.fc(h)


def _views(n=4, m=6, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(m, 3, size, size, generator=gen) for _ in range(n)]


def _brute_force(model, views, layer, scale=1.0):
    ref = copy.deepcopy(model)  # train-mode BatchNorm: the same per-view batch statistics
    with torch.no_grad():
        feats = torch.stack([ref.stages(resize_views(v, scale))[layer].flatten(1) for v in views])  # [N, M, D]
    pairs = all_pairs(len(views))
    f = F.normalize(feats, dim=-1)
    dist = torch.stack([1 - (f[k] * f[l]).sum(-1) for k, l in pairs.tolist()])  # [P, M], pair by pair
    return dist, dist.argmax(0)


@pytest.mark.parametrize("layer", ["conv1", "layer1", "layer2", "avgpool"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_core_selection_on_a_layer_equals_brute_force_and_stops_there(layer, scale):
    torch.manual_seed(0)
    model = MiniResNet().train()
    views = _views()
    later = {"fc": 0, "layer2": 0}
    hooks = [getattr(model, n).register_forward_hook(lambda *a, n=n: later.__setitem__(n, later[n] + 1)) for n in later]
    before, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    sel = select_by_layer(HardViewSelector(4, resolution_scale=scale), model, views, model, layer)
    for h in hooks:
        h.remove()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(not m._forward_hooks for m in model.modules())  # the stop hook is gone
    assert later["fc"] == 0  # the network ran only up to the score layer
    assert later["layer2"] == (4 if layer in ("layer2", "avgpool") else 0)
    dist, index = _brute_force(model, views, layer, scale)
    torch.testing.assert_close(sel.pair_losses, dist, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel.index, index)


def test_cosine_distance_pair_losses_values():
    f = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[-3.0, 0.0]]])  # [N=3, M=1, D=2]
    got = cosine_distance_pair_losses(f, all_pairs(3))
    assert torch.allclose(got[:, 0], torch.tensor([1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[N views, M samples, D\]"):
        cosine_distance_pair_losses(torch.zeros(3, 2), all_pairs(3))


def test_unknown_or_unused_layer_is_a_clear_error():
    model = MiniResNet()
    with pytest.raises(ValueError, match=r"score_layer='layer9' is not a module of MiniResNet; valid names: conv1, bn1, layer1"):
        select_by_layer(HardViewSelector(4), model, _views(), model, "layer9")
    model.extra = nn.Linear(2, 2)  # a module the forward never calls
    with pytest.raises(ValueError, match="never ran score_layer='extra'"):
        select_by_layer(HardViewSelector(4), model, _views(), model, "extra")
    assert model.bn1.track_running_stats and not model.extra._forward_hooks  # guard and hook undone
    assert "layer1.0" in layer_names(model)


# ------------------------------------------------------------------ lightly
def test_lightly_score_layer_equals_brute_force_and_is_labelled_approximate():
    pytest.importorskip("lightly")
    from lightly.loss import DINOLoss, NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

    from hvs_plugins.adapters.lightly import HVSLoss

    class SimSiam(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = MiniResNet()
            self.projection_head = SimSiamProjectionHead(4, 8, 8)
            self.prediction_head = SimSiamPredictionHead(8, 4, 8)

        def forward(self, x):
            z = self.projection_head(self.backbone(x))
            return z.detach(), self.prediction_head(z)

    torch.manual_seed(0)
    model, views = SimSiam().train(), _views()
    exact = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    assert exact.scoring == "exact"
    for layer, scale in (("backbone.layer1", 1.0), ("backbone.avgpool", 0.5)):
        crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, score_layer=layer, resolution_scale=scale)
        assert crit.scoring == "approximate"
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x0, x1 = crit.select(views, model)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        dist, index = _brute_force(model.backbone, views, layer.split(".")[1], scale)
        torch.testing.assert_close(crit.last_selection.pair_losses, dist, rtol=1e-5, atol=1e-6)
        assert torch.equal(crit.last_selection.index, index)
        for i, (k, l) in enumerate(crit.last_selection.chosen.tolist()):
            assert torch.equal(x0[i], views[k][i]) and torch.equal(x1[i], views[l][i])
    with pytest.raises(ValueError, match=r"valid names: backbone, backbone\.conv1"):
        HVSLoss(NegativeCosineSimilarity(), n_views=4, score_layer="layer1").select(views, model)
    with pytest.raises(ValueError, match="plain function"):
        HVSLoss(NegativeCosineSimilarity(), n_views=4, score_layer="backbone.conv1").select(views, lambda x: model(x))
    HVSLoss(NegativeCosineSimilarity(), n_views=4, score_layer="backbone.conv1").select(views, lambda x: model(x), modules=[model])
    with pytest.raises(ValueError, match="score_layer is for two-view losses"):
        HVSLoss(DINOLoss(output_dim=8), score_layer="backbone.conv1")
    with pytest.raises(TypeError, match="module name"):
        HVSLoss(NegativeCosineSimilarity(), score_layer=3)
