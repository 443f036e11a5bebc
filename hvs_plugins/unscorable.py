"""Batches HVS cannot score train on a plain random pair: counted, warned once, never a crash
where the host itself would go on.

The case that happens in practice: the last batch of an epoch holds 1 sample (no ``drop_last``)
and the model has BatchNorm in train mode, which cannot normalise a single sample in a per-view
selection forward, while the host's own step may (e.g. it forwards both views as one batch).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from .selection import HVSFallbackWarning

# torch's message when train-mode BatchNorm gets one value per channel
_SINGLE_VALUE = "Expected more than 1 value per channel when training"


class HVSUnscorableWarning(HVSFallbackWarning):
    """A batch could not be scored; it trained on a plain random pair (counted)."""


def _train_mode_batchnorm(modules: Sequence[nn.Module]) -> Optional[str]:
    for owner in modules:
        for name, m in owner.named_modules():
            if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm):
                return name or type(owner).__name__
    return None


def unscorable_reason(views: Sequence[torch.Tensor], modules: Sequence[nn.Module] = ()) -> Optional[str]:
    """Why this batch of candidate views ``N x [M, ...]`` cannot be scored, before any forward
    (1 sample while ``modules`` have BatchNorm in train mode), or None."""
    if views and views[0].dim() and views[0].shape[0] == 1:
        bn = _train_mode_batchnorm(modules)
        if bn is not None:
            return f"a batch of 1 sample, and BatchNorm in train mode ({bn}) cannot normalise a single sample"
    return None


def reason_from_error(exc: BaseException) -> Optional[str]:
    """The reason when ``exc``, raised by a selection forward, means the batch cannot be scored
    (train-mode BatchNorm given one value per channel), else None (a real error: re-raise it)."""
    if isinstance(exc, ValueError) and _SINGLE_VALUE in str(exc):
        return "BatchNorm in train mode got one value per channel (a batch of 1 sample) in the selection forward"
    return None


class UnscorableBatches:
    """Counter of the batches trained on a plain random pair because HVS could not score them;
    the first one warns (``HVSUnscorableWarning``) with the reason and the fix."""

    def __init__(self) -> None:
        self.count = 0
        self.last_reason: Optional[str] = None
        self._warned = False

    def record(self, reason: str, stacklevel: int = 3) -> None:
        self.count += 1
        self.last_reason = reason
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"HVS could not score a batch ({reason}); it trains on a plain random pair instead, as the host "
                "would without HVS. Such batches are counted (hvs/unscorable_batches in the logs) and this "
                "warning is shown once. To select on every batch, use drop_last=True in the data loader (the "
                "last batch of an epoch can hold a single sample) or a batch size > 1.",
                HVSUnscorableWarning,
                stacklevel=stacklevel,
            )

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get("count", 0))
