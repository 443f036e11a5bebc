"""Small versions of lightly's example models, shared by the lightly adapter's tests (each as in
lightly's ``examples/``: the same heads and forwards, tiny widths)."""

from __future__ import annotations

import copy

from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
from lightly.models.utils import deactivate_requires_grad
from torch import nn

D = 16  # output dimension of the heads


def backbone(width: int = 8) -> nn.Module:
    """[B, 3, H, W] -> [B, width]: one conv with BatchNorm (the module HVS must leave untouched)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class SimSiam(nn.Module):  # lightly's SimSiam example, small
    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.projection_head = SimSiamProjectionHead(8, 16, D)
        self.prediction_head = SimSiamPredictionHead(D, 8, D)

    def forward(self, x):
        z = self.projection_head(self.backbone(x))
        return z.detach(), self.prediction_head(z)


class BYOL(nn.Module):  # lightly's BYOL example, small
    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.projection_head = BYOLProjectionHead(8, 16, D)
        self.prediction_head = BYOLPredictionHead(D, 16, D)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()
