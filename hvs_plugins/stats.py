"""Selection statistics for logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .crops import pair_ious
from .selection import Selection


@dataclass
class SelectionStats:
    """Scalars of one selection step (see :func:`selection_stats`).

    ``hardness_gap`` = mean selected loss − mean pair loss (≥ 0 for argmax selection).
    ``pair_counts``: how often each pair row was chosen. ``lowest_iou_fraction``: share of samples
    whose selected pair is (one of) their lowest-IoU pair(s) (paper: >40% for SimSiam N=4; random
    ≈ 1/P). IoU fields are None without crop boxes.
    """

    n_samples: int
    mean_selected_loss: float
    mean_pair_loss: float
    hardness_gap: float
    n_fallback: int
    pair_counts: list[int] = field(default_factory=list)
    mean_selected_iou: Optional[float] = None
    mean_pair_iou: Optional[float] = None
    lowest_iou_fraction: Optional[float] = None

    def as_dict(self, prefix: str = "hvs/") -> dict[str, float]:
        """Flat float scalars for a logger (None fields left out)."""
        out = {
            "selected_loss": self.mean_selected_loss,
            "pair_loss": self.mean_pair_loss,
            "hardness_gap": self.hardness_gap,
            "fallbacks": float(self.n_fallback),
        }
        for name in ("mean_selected_iou", "mean_pair_iou", "lowest_iou_fraction"):
            value = getattr(self, name)
            if value is not None:
                out[name.replace("mean_", "")] = value
        return {prefix + k: float(v) for k, v in out.items()}


def selection_stats(selection: Selection, boxes: Optional[torch.Tensor] = None) -> SelectionStats:
    """Statistics of ``selection``; ``boxes: [M, N, 4]`` crop boxes add the IoU fields."""
    losses = selection.pair_losses
    finite = torch.isfinite(losses)
    sel = selection.selected_losses
    sel_ok = torch.isfinite(sel)
    mean_sel = float(sel[sel_ok].mean()) if bool(sel_ok.any()) else float("nan")
    mean_all = float(losses[finite].mean()) if bool(finite.any()) else float("nan")
    counts = torch.bincount(selection.index.cpu(), minlength=selection.pairs.shape[0])
    stats = SelectionStats(
        n_samples=int(selection.index.numel()),
        mean_selected_loss=mean_sel,
        mean_pair_loss=mean_all,
        hardness_gap=mean_sel - mean_all,
        n_fallback=int(selection.fallback.sum()),
        pair_counts=counts.tolist(),
    )
    if boxes is not None:
        ious = pair_ious(boxes.cpu(), selection.pairs.cpu())  # [P, M]
        idx = selection.index.cpu().unsqueeze(0)
        sel_iou = ious.gather(0, idx).squeeze(0)
        ok = torch.isfinite(ious).all(0)
        if bool(ok.any()):
            stats.mean_selected_iou = float(sel_iou[ok].mean())
            stats.mean_pair_iou = float(ious[:, ok].mean())
            lowest = ious[:, ok].min(0).values
            stats.lowest_iou_fraction = float((sel_iou[ok] <= lowest + 1e-12).float().mean())
    return stats
