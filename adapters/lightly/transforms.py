"""N-candidate versions of lightly's multi-view transforms, with crop-box recording."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from hvs_plugins import CandidateTransform, interleaved_groups


class CandidateViews:
    """Wrap a lightly ``MultiViewTransform`` (SimSiamTransform, SimCLRTransform, MoCoV2Transform,
    BYOLTransform, DINOTransform, ...) so that it emits HVS candidates.

    - One view pipeline used twice (SimSiam, SimCLR, MoCo): ``n_views`` candidates from it.
    - Two different view pipelines (BYOL): ``n_views // 2`` from each, interleaved (even candidates
      from view transform 1, odd from 2); ``groups`` gives the cross-pair layout for
      ``HVSLoss(..., groups="interleaved")``.
    - More than two views (DINO: 2 global + n local): ``per_crop`` candidates (default 2) for every
      crop: ``2 * per_crop`` globals first (interleaved global transform 1 / 2), then
      ``n_local * per_crop`` locals.

    Calling it returns the candidate list (a drop-in for the wrapped transform's output, so
    ``batch[0]`` holds the candidates); with ``return_boxes=True`` it returns ``(views, boxes)``
    with ``boxes: [n_candidates, 4]`` relative crop boxes (top, left, height, width) of each
    candidate's RandomResizedCrop (NaN when a pipeline has none).
    """

    def __init__(self, transform: Any, n_views: int = 4, per_crop: int = 2, return_boxes: bool = False) -> None:
        ts = list(getattr(transform, "transforms", None) or [transform])
        self.return_boxes = return_boxes
        self.multicrop = len(ts) > 2
        if self.multicrop:
            if per_crop < 1:
                raise ValueError(f"per_crop must be >= 1, got {per_crop}")
            self.n_local = len(ts) - 2
            self.global_candidates = CandidateTransform(ts[:2], per_crop)
            local_ts = _unique(ts[2:])
            if len(local_ts) == 1:
                self.local_candidates = CandidateTransform(local_ts, per_crop * self.n_local)
            else:  # different local pipelines: per_crop candidates of each, crop by crop
                self.local_candidates = _Sequential([CandidateTransform([t], per_crop) for t in ts[2:]])
            self.n_views = per_crop * len(ts)
            self.groups = interleaved_groups(2 * per_crop, 2)
            return
        if n_views < 2:
            raise ValueError(f"n_views must be >= 2, got {n_views}: HVS compares pairs; the paper uses 4")
        unique = _unique(ts)
        if len(unique) == 1:
            self.candidates = CandidateTransform(unique, n_views)
            self.groups = None
        else:
            if n_views % 2:
                raise ValueError(
                    f"n_views={n_views} must be even for an asymmetric transform "
                    f"({type(transform).__name__}: n_views // 2 candidates per view transform)"
                )
            self.candidates = CandidateTransform(ts, n_views // 2)
            self.groups = interleaved_groups(n_views, 2)
        self.n_views = n_views

    def __call__(self, image: Any) -> Any:
        if self.multicrop:
            gv, gb = self.global_candidates(image)
            lv, lb = self.local_candidates(image)
            views, boxes = gv + lv, torch.cat([gb, lb])
        else:
            views, boxes = self.candidates(image)
        return (views, boxes) if self.return_boxes else views


class _Sequential:
    def __init__(self, parts: Sequence[CandidateTransform]) -> None:
        self.parts = list(parts)

    def __call__(self, image: Any) -> tuple[list, torch.Tensor]:
        views, boxes = [], []
        for p in self.parts:
            v, b = p(image)
            views += v
            boxes.append(b)
        return views, torch.cat(boxes)


def _unique(ts: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for t in ts:
        if not any(t is u for u in out):
            out.append(t)
    return out
