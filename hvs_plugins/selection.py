"""Argmax selection of the hardest pair per sample and gathering of the hard batch."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

Views = Union[Sequence[torch.Tensor], torch.Tensor]


def argmax_with_fallback(
    losses: torch.Tensor, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample argmax over candidates of ``losses: [P, M]``.

    Ties go to the lowest candidate index. Non-finite losses (NaN, ±inf) never win. A sample
    whose candidates are all non-finite gets a random candidate drawn from ``generator`` (the
    selector's own) and is flagged. Returns ``index: [M]`` (long) and ``fallback: [M]`` (bool).
    """
    if losses.dim() != 2 or losses.shape[0] < 1:
        raise ValueError(f"losses must be [P candidates, M samples] with P >= 1, got {list(losses.shape)}")
    finite = torch.isfinite(losses)
    masked = torch.where(finite, losses, torch.full_like(losses, float("-inf")))
    index = masked.argmax(dim=0)  # first maximum on ties (documented torch behaviour)
    fallback = ~finite.any(dim=0)
    if bool(fallback.any()):
        n_fb = int(fallback.sum())
        draw = torch.randint(losses.shape[0], (n_fb,), generator=generator).to(index.device)
        index = index.clone()
        index[fallback] = draw
    return index, fallback


class HVSFallbackWarning(UserWarning):
    """Some samples had no finite candidate loss (NaN/inf model outputs) in a selection step."""


def warn_fallbacks(fallback: torch.Tensor, what: str = "pair loss", stacklevel: int = 3) -> int:
    """Warn (``HVSFallbackWarning``) when ``fallback: [M]`` flags samples whose candidates were all
    non-finite; returns their count. Adapters call it after every selection."""
    n = int(fallback.sum())
    if n:
        warnings.warn(
            f"HVS: {n} of {fallback.numel()} samples had no finite {what} (NaN/inf in the model's "
            "outputs during selection); they train on a random candidate pair drawn from the "
            "selector's own generator. Training continues; if this repeats, look for overflow "
            "(autocast_dtype, resolution_scale) or bad inputs.",
            HVSFallbackWarning,
            stacklevel=stacklevel,
        )
    return n


def as_view_list(views: Views, n_views: Optional[int] = None) -> list[torch.Tensor]:
    """Views as a list of N tensors ``[M, ...]`` (from a list or a ``[N, M, ...]`` tensor), checked
    for count and equal shapes."""
    if isinstance(views, torch.Tensor):
        if views.dim() < 2:
            raise ValueError(f"a views tensor must be [N, M, ...], got shape {list(views.shape)}")
        out = list(views.unbind(0))
    else:
        out = list(views)
        if not all(isinstance(v, torch.Tensor) for v in out):
            raise TypeError("views must be tensors (a list of N tensors [M, ...] or one [N, M, ...] tensor)")
    if n_views is not None and len(out) != n_views:
        raise ValueError(
            f"expected {n_views} candidate views per sample, got {len(out)}: make the data pipeline "
            f"emit n_views={n_views} views (or set n_views={len(out)})"
        )
    shapes = {tuple(v.shape) for v in out}
    if len(shapes) != 1:
        raise ValueError(
            f"candidate views must all have the same shape, got {sorted(shapes)}; for multi-crop "
            "pass global and local candidates separately"
        )
    return out


def gather_views(views: Views, choice: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample view picking. ``views``: N tensors ``[M, ...]`` (or ``[N, M, ...]``);
    ``choice: [M, K]`` view index per sample and slot. Returns K tensors ``[M, ...]`` where
    slot j of sample i is ``views[choice[i, j]][i]``."""
    vs = as_view_list(views)
    m = vs[0].shape[0]
    if choice.dim() != 2 or choice.shape[0] != m:
        raise ValueError(f"choice must be [M={m}, K], got {list(choice.shape)}")
    if choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= len(vs)):
        raise ValueError(f"choice indexes views 0..{len(vs) - 1} only")
    choice = choice.to(vs[0].device)
    out = []
    for j in range(choice.shape[1]):
        slot = vs[0].clone()
        for v in range(1, len(vs)):  # N masked copies, no [N, M, ...] stack
            mask = choice[:, j] == v
            if bool(mask.any()):
                slot[mask] = vs[v][mask]
        out.append(slot)
    return out


def gather_pair(views: Views, pairs: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard batch: ``(view_a, view_b)``, each ``[M, ...]``, where sample i takes pair
    ``pairs[index[i]]`` (``pairs: [P, 2]``, ``index: [M]``)."""
    a, b = gather_views(views, pairs.to(index.device)[index])
    return a, b


@dataclass
class Selection:
    """Result of a pair selection.

    ``index: [M]`` row of ``pairs`` chosen per sample; ``pairs: [P, 2]``; ``pair_losses: [P, M]``
    (float32, as scored); ``fallback: [M]`` samples whose pair losses were all non-finite.
    """

    index: torch.Tensor
    pairs: torch.Tensor
    pair_losses: torch.Tensor
    fallback: torch.Tensor

    @property
    def chosen(self) -> torch.Tensor:
        """``[M, 2]`` view indices of the selected pair per sample."""
        return self.pairs.to(self.index.device)[self.index]

    @property
    def selected_losses(self) -> torch.Tensor:
        """``[M]`` loss of the selected pair per sample."""
        return self.pair_losses.gather(0, self.index.unsqueeze(0)).squeeze(0)

    def gather(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """The hard pair ``(view_a, view_b)`` from the full-resolution candidates."""
        return gather_pair(views, self.pairs, self.index)


def select_hardest(
    pair_losses: torch.Tensor, pairs: torch.Tensor, generator: Optional[torch.Generator] = None
) -> Selection:
    """Per sample, the pair with the highest loss (see :func:`argmax_with_fallback`).
    ``pair_losses: [P, M]``, ``pairs: [P, 2]``."""
    if pair_losses.dim() != 2 or pair_losses.shape[0] != pairs.shape[0]:
        raise ValueError(
            f"pair_losses must be [P={pairs.shape[0]}, M], got {list(pair_losses.shape)}"
        )
    index, fallback = argmax_with_fallback(pair_losses, generator)
    return Selection(index, pairs, pair_losses, fallback)
