"""Enumeration of candidate view pairs.

A pair table is a LongTensor ``pairs: [P, 2]`` of view indices. Row ``p`` is the pair whose
per-sample loss is ``pair_losses[p]``; the first column is the view the host treats as view A.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def check_n_views(n_views: int) -> None:
    """Raise a clear error unless ``n_views`` is an int >= 2."""
    if isinstance(n_views, bool) or not isinstance(n_views, int):
        raise TypeError(f"n_views must be an int, got {type(n_views).__name__}: set e.g. n_views=4")
    if n_views < 2:
        raise ValueError(f"n_views must be >= 2 (got {n_views}): HVS compares pairs of candidate views; set n_views=4 (the paper's value).")


def all_pairs(n_views: int, ordered: bool = False) -> torch.Tensor:
    """All pairs of ``n_views`` views.

    Returns ``pairs: [P, 2]`` with P = C(N, 2) (k < l, lexicographic) or, if ``ordered``,
    P = N·(N-1) (every (k, l), k != l; for asymmetric losses such as MoCo's query/key).
    """
    check_n_views(n_views)
    if ordered:
        idx = torch.arange(n_views)
        k, l = torch.meshgrid(idx, idx, indexing="ij")
        keep = k != l
        return torch.stack([k[keep], l[keep]], dim=1)
    return torch.combinations(torch.arange(n_views), r=2)


def cross_pairs(groups: Sequence[Sequence[int]], ordered: bool = False) -> torch.Tensor:
    """Pairs with one view from each of two groups (asymmetric pipelines, e.g. BYOL's or DINO's
    two global transforms: candidates of transform 1 vs candidates of transform 2).

    ``groups``: two lists of view indices. Returns ``pairs: [|g0|·|g1|, 2]`` (first column from
    group 0), or both orientations ``[2·|g0|·|g1|, 2]`` if ``ordered``.
    """
    if len(groups) != 2:
        raise ValueError(f"cross_pairs needs exactly 2 groups of view indices, got {len(groups)}")
    g0 = torch.as_tensor(list(groups[0]), dtype=torch.long)
    g1 = torch.as_tensor(list(groups[1]), dtype=torch.long)
    if g0.numel() == 0 or g1.numel() == 0:
        raise ValueError("cross_pairs: both groups need at least one view")
    if set(g0.tolist()) & set(g1.tolist()):
        raise ValueError(f"cross_pairs: groups overlap: {sorted(set(g0.tolist()) & set(g1.tolist()))}")
    a, b = torch.meshgrid(g0, g1, indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    return torch.cat([pairs, pairs.flip(1)]) if ordered else pairs


def interleaved_groups(n_views: int, n_groups: int = 2) -> list[list[int]]:
    """Candidate indices per pipeline when candidates alternate pipelines (0, 1, 0, 1, ...),
    the layout of the authors' DINO loader. Returns ``n_groups`` lists."""
    check_n_views(n_views)
    if n_views % n_groups:
        raise ValueError(f"n_views={n_views} must be a multiple of the {n_groups} pipelines")
    return [list(range(g, n_views, n_groups)) for g in range(n_groups)]


def make_pairs(n_views: int, groups: Optional[Sequence[Sequence[int]]] = None, ordered: bool = False) -> torch.Tensor:
    """``all_pairs`` for one pipeline, ``cross_pairs`` when the candidates come from two pipelines."""
    check_n_views(n_views)
    if groups is None:
        return all_pairs(n_views, ordered)
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(n_views)):
        raise ValueError(f"groups {list(map(list, groups))} must partition the {n_views} view indices")
    return cross_pairs(groups, ordered)
