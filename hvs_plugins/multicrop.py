"""Multi-crop (DINO-style) combination search.

Candidates: ``G`` global candidates (indices 0..G-1) and ``L`` local candidates (indices
G..G+L-1, in the student's view order). A combination is a global pair plus ``n_local`` of the
L locals. Its loss for sample i is DINO's: the mean, over teacher globals t of the combination and
student views s != t of the combination, of the cross-entropy ``ce[t, s, i]``.

Because the local part of that mean is a sum over locals of ``ce[ga, l] + ce[gb, l]``, the best
locals for a fixed global pair are a top-k: :meth:`CombinationSpace.exact_search` returns the true
argmax over all combinations with one top-k per global pair, without enumerating them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Optional

import torch

from .pairs import all_pairs, interleaved_groups, cross_pairs
from .devices import to_device

GlobalPairing = Literal["cross", "any"]

DEFAULT_CAP = 128  # the paper compares at most 128 combinations


@lru_cache(maxsize=16)
def _subsets(n: int, k: int) -> torch.Tensor:
    """All k-subsets of range(n) in lexicographic order: ``[C(n, k), k]``."""
    return torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(math.comb(n, k), k)


@dataclass
class Combinations:
    """A set of C combinations: ``globals_: [C, 2]`` global candidate indices and ``locals_: [C, n_local]``
    local candidate indices (0-based among the locals)."""

    globals_: torch.Tensor
    locals_: torch.Tensor

    def __len__(self) -> int:
        return int(self.globals_.shape[0])


@dataclass
class CombinationChoice:
    """Per-sample chosen combination: ``globals_: [M, 2]``, ``locals_: [M, n_local]`` (indices among
    the locals), ``losses: [M]`` (its loss), ``candidate_losses: [C, M]`` (all evaluated losses;
    for exact search, the best per global pair ``[Pg, M]``), ``fallback: [M]`` bool, ``n_evaluated``;
    all on the device of the cross-entropies that were searched."""

    globals_: torch.Tensor
    locals_: torch.Tensor
    losses: torch.Tensor
    candidate_losses: torch.Tensor
    fallback: torch.Tensor
    n_evaluated: int

    def student_indices(self, n_global_candidates: int) -> torch.Tensor:
        """``[M, 2 + n_local]`` indices into the student candidate list (globals first)."""
        return torch.cat([self.globals_, self.locals_ + n_global_candidates], dim=1)


class CombinationSpace:
    """All combinations of a global pair and ``n_local`` of ``n_local_candidates`` locals.

    ``global_pairing='cross'`` (default, the authors' code): candidates alternate DINO's two global
    transforms (even = transform 1, odd = transform 2) and a pair is one even and one odd candidate
    (4 pairs for 4 candidates; the first of the pair is the transform-1 view). ``'any'``: any 2 of
    the global candidates (6 pairs; the paper's count C(4,2)·C(16,8) = 77,220).
    """

    def __init__(
        self,
        n_global_candidates: int = 4,
        n_local_candidates: int = 16,
        n_local: int = 8,
        global_pairing: GlobalPairing = "cross",
    ) -> None:
        if global_pairing not in ("cross", "any"):
            raise ValueError(f"global_pairing must be 'cross' or 'any', got {global_pairing!r}")
        if n_global_candidates < 2:
            raise ValueError(f"need >= 2 global candidates, got {n_global_candidates}")
        if not 0 <= n_local <= n_local_candidates:
            raise ValueError(f"n_local={n_local} must be between 0 and n_local_candidates={n_local_candidates}")
        self.n_global_candidates = n_global_candidates
        self.n_local_candidates = n_local_candidates
        self.n_local = n_local
        self.global_pairing = global_pairing
        if global_pairing == "cross":
            self.global_pairs = cross_pairs(interleaved_groups(n_global_candidates, 2))
        else:
            self.global_pairs = all_pairs(n_global_candidates)
        self.n_local_subsets = math.comb(n_local_candidates, n_local)

    @property
    def size(self) -> int:
        """Number of combinations (51,480 for 4G+16L cross, 77,220 for any)."""
        return len(self.global_pairs) * self.n_local_subsets

    @property
    def n_terms(self) -> int:
        """Cross-entropy terms in DINO's mean: 2 teachers × (2 + n_local) students − 2 same-view."""
        return 2 * (2 + self.n_local) - 2

    def unrank(self, index: torch.Tensor) -> Combinations:
        """Combinations for flat indices ``index: [C]`` in ``[0, size)``."""
        pair_idx = torch.div(index, self.n_local_subsets, rounding_mode="floor")
        sub_idx = index % self.n_local_subsets
        subsets = _subsets(self.n_local_candidates, self.n_local)
        return Combinations(self.global_pairs[pair_idx], subsets[sub_idx])

    def enumerate_all(self) -> Combinations:
        """Every combination (``size`` of them), in flat-index order."""
        return self.unrank(torch.arange(self.size))

    def sample(self, cap: int = DEFAULT_CAP, generator: Optional[torch.Generator] = None) -> Combinations:
        """``min(cap, size)`` distinct combinations drawn uniformly with ``generator`` (the selector's
        own, never the global RNG); all of them, in order, when ``cap >= size``."""
        check_cap(cap)
        if cap >= self.size:
            return self.enumerate_all()
        index = torch.randperm(self.size, generator=generator)[:cap]
        return self.unrank(index)

    def _terms(self, ce: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From ``ce: [G, G+L, M]`` → ``global_term: [Pg, M]`` (the 2 teacher-global/student-global
        terms) and ``local_term: [Pg, L, M]`` (both teachers' CE against each local)."""
        g_total, l_total = self.n_global_candidates, self.n_local_candidates
        if ce.dim() != 3 or ce.shape[0] != g_total or ce.shape[1] != g_total + l_total:
            raise ValueError(
                f"ce must be [G={g_total}, G+L={g_total + l_total}, M] (teacher globals × student "
                f"globals-then-locals × samples), got {list(ce.shape)}"
            )
        ga, gb = to_device(self.global_pairs[:, 0], ce.device), to_device(self.global_pairs[:, 1], ce.device)
        global_term = ce[ga, gb] + ce[gb, ga]
        local_ce = ce[:, g_total:]  # [G, L, M]
        local_term = local_ce[ga] + local_ce[gb]
        # A non-finite term must never make a combination win.
        return _finite_or_neg_inf(global_term), _finite_or_neg_inf(local_term)

    def evaluate(self, ce: torch.Tensor, combos: Combinations) -> torch.Tensor:
        """Losses of ``combos`` for every sample: ``[C, M]`` (DINO's mean over its terms)."""
        global_term, local_term = self._terms(ce)
        pair_of = to_device(_pair_row(self.global_pairs, combos.globals_), ce.device)  # [C]
        loc = to_device(combos.locals_, ce.device)  # [C, l]
        picked = local_term[pair_of.unsqueeze(1), loc]  # [C, l, M]
        return (global_term[pair_of] + picked.sum(1)) / self.n_terms

    def search(self, ce: torch.Tensor, cap: int = DEFAULT_CAP, generator: Optional[torch.Generator] = None) -> CombinationChoice:
        """Capped search: the same ``min(cap, size)`` random combinations for the whole batch; each
        sample takes its argmax (ties → lowest index; all non-finite → seeded random fallback)."""
        from .selection import argmax_with_fallback

        combos = self.sample(cap, generator)
        losses = self.evaluate(ce, combos)  # [C, M]
        best, fallback = argmax_with_fallback(losses, generator)
        m = torch.arange(losses.shape[1], device=losses.device)
        dev = losses.device  # the choice stays on the device: no host read of `best` (no sync)
        g, l = to_device(combos.globals_, dev), to_device(combos.locals_, dev)
        return CombinationChoice(g[best], l[best], losses[best, m], losses, fallback, len(combos))

    def exact_search(self, ce: torch.Tensor, generator: Optional[torch.Generator] = None) -> CombinationChoice:
        """True argmax over all ``size`` combinations: per global pair, the top-``n_local`` locals of
        ``ce[ga, l] + ce[gb, l]``; then the best pair. Cost: one top-k per global pair."""
        from .selection import argmax_with_fallback

        global_term, local_term = self._terms(ce)  # [Pg, M], [Pg, L, M]
        top_val, top_idx = local_term.topk(self.n_local, dim=1)  # [Pg, l, M]
        per_pair = (global_term + top_val.sum(1)) / self.n_terms  # [Pg, M]
        best, fallback = argmax_with_fallback(per_pair, generator)
        m = torch.arange(per_pair.shape[1], device=per_pair.device)
        locals_ = top_idx[best, :, m].sort(dim=1).values  # [M, l]
        return CombinationChoice(
            to_device(self.global_pairs, per_pair.device)[best],
            locals_,
            per_pair[best, m],
            per_pair,
            fallback,
            len(self.global_pairs) * self.n_local_subsets,
        )


def check_cap(cap: int) -> None:
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be an int >= 1 (got {cap!r}); the paper uses 128")


def _finite_or_neg_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.full_like(x, float("-inf")))


def _pair_row(pairs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Row of each ``chosen: [C, 2]`` pair in ``pairs: [Pg, 2]`` → ``[C]``."""
    match = (chosen.unsqueeze(1) == pairs.unsqueeze(0)).all(-1)  # [C, Pg]
    if not bool(match.any(1).all()):
        raise ValueError("combination uses a global pair that is not in this space")
    return match.float().argmax(1)
