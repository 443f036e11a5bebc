"""Zero-cost geometric selection: per sample, the candidate pair whose crop boxes overlap least.

A control for HVS (issue: does the model-based selection buy more than crop geometry?): no
forward at all, the cost is the extra crops only. The paper reports that HVS's selected pair is
the lowest-IoU pair in >40% of samples; this selector takes it in 100% of them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .crops import pair_ious
from .selection import Selection, select_hardest


def min_iou_pair_scores(boxes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Score of every pair for :func:`select_min_iou`: ``-IoU``, ``boxes: [M, N, 4]`` (top, left,
    height, width as collated from ``CandidateViews(return_boxes=True)``), ``pairs: [P, 2]`` → ``[P, M]``."""
    return -pair_ious(boxes, pairs)


def select_min_iou(boxes: torch.Tensor, pairs: torch.Tensor, generator: Optional[torch.Generator] = None) -> Selection:
    """Per sample, the pair of ``pairs: [P, 2]`` with the smallest crop IoU (ties: the first pair).
    ``Selection.pair_losses`` holds ``-IoU`` (``[P, M]``), not a loss."""
    return select_hardest(min_iou_pair_scores(boxes, pairs), pairs, generator)
