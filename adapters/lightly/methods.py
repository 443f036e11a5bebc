"""Multi-crop methods besides DINO that :class:`HVSLoss` selects for with a dedicated handler
(their combination loss needs more than a pair table: Sinkhorn codes, masks)."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from .ibot import IBOTLoss, IBOTMethod
from .swav import SwaVMethod


def multicrop_method(criterion: nn.Module) -> Optional[Any]:
    """The handler for ``criterion`` (an object with ``name`` and ``select(hvs, views, ...)``), or None."""
    from lightly.loss import SwaVLoss

    if isinstance(criterion, SwaVLoss):
        return SwaVMethod(criterion)
    if isinstance(criterion, IBOTLoss):
        return IBOTMethod(criterion)
    return None


METHOD_NAMES = ["SwaVLoss", "IBOTLoss"]
