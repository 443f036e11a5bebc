"""N-candidate versions of lightly's multi-view transforms, with crop-box recording."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

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
        self.transform_name = type(transform).__name__
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
            views = CandidateList(views)
            views.groups, views.transform_name = self.groups, self.transform_name
        return (views, boxes) if self.return_boxes else views


class CandidateList(list):
    """The candidate views of one image (and, collated, of a batch): a list that carries the
    layout. ``groups``: None (one pipeline) or the candidate indices of each of two pipelines.
    torch's default collate copies a list subclass with its attributes, so ``batch[0]`` still says
    how its candidates were made; :class:`HVSLoss` refuses a layout it would score wrongly."""

    groups: Optional[list[list[int]]] = None
    transform_name: str = ""


def layout_from_candidates(
    candidates: Optional[CandidateViews], n_views: Optional[int], groups: Union[None, str, Sequence[Sequence[int]]]
) -> tuple[int, Any]:
    """``(n_views, groups)`` for HVSLoss: from ``candidates`` (the loader's CandidateViews) when
    given, refusing explicit values that disagree with it; else ``n_views`` (default 4) and ``groups``."""
    if candidates is None:
        return (4 if n_views is None else n_views), groups
    if not isinstance(candidates, CandidateViews):
        raise TypeError(f"candidates must be the loader's CandidateViews, got {type(candidates).__name__}")
    if candidates.multicrop:
        raise ValueError(
            "candidates= sets the layout of two-view losses; a multi-crop CandidateViews (DINO, SwAV, "
            "iBOT) needs no layout: drop candidates="
        )
    own = "interleaved" if candidates.groups is not None else None
    if n_views is not None and n_views != candidates.n_views:
        raise ValueError(
            f"HVSLoss(n_views={n_views}) disagrees with candidates (CandidateViews(..., n_views="
            f"{candidates.n_views})): drop n_views, the candidates set it"
        )
    if groups is not None and groups != own:
        raise ValueError(
            f"HVSLoss(groups={groups!r}) disagrees with candidates ({candidates.transform_name}: "
            f"groups={own!r}): drop groups, the candidates set it"
        )
    return candidates.n_views, own


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


def _sizes(views: Sequence[torch.Tensor]) -> str:
    """``"2 x 32x32, 6 x 16x16"``: runs of equal spatial sizes, in order."""
    runs: list[list] = []
    for v in views:
        hw = "x".join(str(d) for d in v.shape[-2:])
        if runs and runs[-1][1] == hw:
            runs[-1][0] += 1
        else:
            runs.append([1, hw])
    return ", ".join(f"{n} x {hw}" for n, hw in runs)


def check_multicrop_layout(views: Sequence[torch.Tensor], n_global: int, method: str) -> None:
    """Multi-crop candidates (DINO, SwAV, iBOT) come as ``n_global`` global candidates of one size,
    then 2 candidates per local crop of one size; anything else (typically the host's plain
    transform, one view per crop) gets an error that says to wrap the transform."""
    name = {"SwaVLoss": "SwAV", "IBOTLoss": "iBOT"}.get(method, method)
    glob, loc = views[:n_global], views[n_global:]
    bad = len({tuple(v.shape[1:]) for v in glob}) > 1 or len({tuple(v.shape[1:]) for v in loc}) > 1
    if bad:
        raise ValueError(
            f"{name} HVS expects {n_global} global candidates (2 per global crop) of one size first, then 2 "
            f"candidates per local crop; got {len(views)} views ({_sizes(views)}). The transform emits one view "
            f"per crop (e.g. lightly's {'DINO' if name == 'DINO' else name}Transform: 2 global + n local crops): "
            "wrap it with CandidateViews(transform), which emits 2 candidates per crop"
        )
