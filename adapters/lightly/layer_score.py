"""``HVSLoss(score_layer=...)``: APPROXIMATE two-view scoring on an earlier layer (core
``hvs_plugins.layer_scoring``): the cosine distance of the online network's activations after a
named module, the network run only up to there."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from hvs_plugins import HardViewSelector
from hvs_plugins.layer_scoring import cosine_distance_pair_losses, layer_forward


def check_score_layer(score_layer: Optional[str], multicrop: bool, scoring: str) -> Optional[str]:
    if score_layer is None:
        return None
    if not isinstance(score_layer, str) or not score_layer:
        raise TypeError(f"score_layer must be a module name such as 'backbone.layer1', got {score_layer!r}")
    if multicrop:
        raise ValueError(
            "score_layer is for two-view losses (SimSiam, BYOL, SimCLR, MoCo); multi-crop losses (DINO, "
            "SwAV, iBOT) are selected with their own objective: drop score_layer"
        )
    if scoring == "proxy":
        raise ValueError("score_layer and proxy=True are two different approximations: choose one")
    return score_layer


def score_root(model: Any, modules: Sequence[nn.Module]) -> nn.Module:
    """The module ``score_layer`` names are relative to: ``model`` (a module or a bound method of
    one), else the first of ``modules``."""
    if isinstance(model, nn.Module):
        return model
    owner = getattr(model, "__self__", None)
    if isinstance(owner, nn.Module):
        return owner
    if modules:
        return modules[0]
    raise ValueError(
        "score_layer names a module of the model, but the forward is a plain function: pass the model "
        "(or a bound method of it), or list the network in modules=[...]"
    )


def layer_pair_losses(
    selector: HardViewSelector, model: Any, views: Sequence[torch.Tensor], name: str, modules: Sequence[nn.Module]
) -> torch.Tensor:
    """``[P, M]`` cosine distances after ``name`` (call inside ``selector.scoring``)."""
    run = layer_forward(model, score_root(model, modules), name)
    (features,) = selector.forward_views(run, views, selector.n_views)  # [N, M, D]
    return cosine_distance_pair_losses(features, selector.pairs)
