"""Models of ``bench.py``: torchvision ResNets with CIFAR/ImageNet stems, a small ViT, SimSiam / SimCLR / DINO heads."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules
if importlib.util.find_spec("hvs_plugins") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # not installed: the core from the checkout (an installed copy wins)


# ----------------------------------------------------------------------------- models
def resnet_backbone(arch: str, image_size: int, stem: str) -> tuple[nn.Module, int]:
    import torchvision

    m = getattr(torchvision.models, arch)()
    dim = m.fc.in_features
    if stem in ("cifar", "cifar-pool"):  # 3x3 stride-1 first conv for small images
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        if stem == "cifar":
            m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m, dim


class ViT(nn.Module):
    """A plain ViT (DINO's ViT-S/16 shape by default) with interpolated position embeddings, so that
    96 px local crops and downscaled selection copies run through the same weights."""

    def __init__(self, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6, image_size: int = 224) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.grid = image_size // patch
        self.pos = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = self.pos[:, 1:]
        if (h, w) != (self.grid, self.grid):
            pos = pos.reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, c)
        x = torch.cat([self.cls.expand(b, -1, -1) + self.pos[:, :1], x + pos], 1)
        return self.norm(self.blocks(x))[:, 0]


def make_backbone(name: str, image_size: int, stem: str) -> tuple[nn.Module, int]:
    if name == "vit_s16":
        m = ViT()
        return m, m.dim
    if name == "small":  # the demo's small ConvNet (smoke profile)
        from hvs_plugins.adapters.lightly.demo import small_backbone

        return small_backbone(4), 32
    if name == "vit_tiny":  # small CPU option
        m = ViT(patch=4, dim=192, depth=6, heads=3, image_size=image_size)
        return m, m.dim
    return resnet_backbone(name, image_size, stem)


class SimSiamModel(nn.Module):
    """lightly's SimSiam example model: forward returns (z.detach(), p)."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__()
        self.backbone = backbone
        proj = 2048 if dim >= 2048 else 512
        self.projection_head = SimSiamProjectionHead(dim, proj, proj)
        self.prediction_head = SimSiamPredictionHead(proj, proj // 4, proj)

    def forward(self, x):
        f = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(f)
        p = self.prediction_head(z)
        return z.detach(), p


class SimCLRModel(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(dim, dim, 128)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class DINOModel(nn.Module):
    """lightly's DINO example model (student/teacher backbones and heads)."""

    def __init__(self, backbone: nn.Module, dim: int, out_dim: int) -> None:
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(dim, 512, 64, out_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(dim, 512, 64, out_dim)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x):
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x):
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))
