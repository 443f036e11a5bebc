"""SwAV (lightly ``SwaVLoss``) with HVS: multi-crop with 2 candidates per crop, like DINO.

The selection forward maps a view batch to its prototype scores ``[B, K]`` (lightly's SwaV
example model: ``model(x)`` = ``prototypes(normalize(head(backbone(x))))``). Codes of each global
candidate come from lightly's own ``sinkhorn`` (the loss's iterations, epsilon and distributed
setting) on detached copies, with the queue's scores appended as ``SwaVLoss`` does; the
combination loss is SwaVLoss's mean over code globals × other crops (core ``swav_cross_entropy``
+ ``CombinationSpace``: capped or exact search). Prototypes, their normalisation (the host's
``model.prototypes.normalize()`` step) and the queues are never touched.

Exact means: the mean of the per-sample losses of a combination equals ``SwaVLoss`` on it when
every sample of the batch is on that combination (Sinkhorn couples the batch, as NT-Xent's
negatives do); see ``hvs_plugins.swav``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence

import torch
from torch import nn

from hvs_plugins import CombinationSpace, swav_codes, swav_cross_entropy


class SwaVMethod:
    """How :class:`HVSLoss` selects for a lightly ``SwaVLoss``."""

    name = "SwaVLoss"

    def __init__(self, criterion: nn.Module) -> None:
        self.criterion = criterion

    def sinkhorn(self) -> Any:
        from lightly.loss.swav_loss import sinkhorn

        c = self.criterion
        return partial(
            sinkhorn,
            iterations=int(c.sinkhorn_iterations),
            epsilon=float(c.sinkhorn_epsilon),
            gather_distributed=bool(c.sinkhorn_gather_distributed),
        )

    def select(
        self,
        hvs: Any,
        views: list,
        model: Any,
        target: Any,
        mods: Sequence[nn.Module],
        *,
        active: bool,
        queue: Optional[Sequence[torch.Tensor]] = None,
        masks: Any = None,
        **_: Any,
    ) -> list[torch.Tensor]:
        if target is not None:
            raise ValueError(
                "SwaVLoss uses one network: call select(views, model) with model(x) -> prototype scores "
                "[B, K] (no teacher/momentum forward)"
            )
        if masks is not None:
            raise ValueError("masks= is for iBOT (IBOTLoss); SwaVLoss takes no masks")
        g = hvs.n_global_candidates
        if len(views) < g:
            raise ValueError(
                f"SwAV HVS needs {g} global candidates (2 per high-resolution crop) first, got {len(views)} "
                "views: wrap the SwaVTransform with CandidateViews(transform)"
            )
        glob, loc = views[:g], views[g:]
        if len(loc) % 2:
            raise ValueError(
                f"SwAV HVS expects 2 candidates per low-resolution crop, got {len(loc)} local views: wrap "
                "the SwaVTransform with CandidateViews(transform)"
            )
        n_local = len(loc) // 2
        if queue is not None:
            queue = list(queue)
            if len(queue) != 2:
                raise ValueError(
                    f"queue must hold the queue's prototype scores for each of the 2 high-resolution crops "
                    f"(SwaVLoss's queue_outputs), got {len(queue)} entries"
                )
            if hvs.global_pairing != "cross":
                raise ValueError(
                    "a SwAV queue belongs to a high-resolution crop slot, so each global candidate must fill "
                    "one slot: use global_pairing='cross' (the default) with a queue"
                )
        if not active:
            return [glob[0], glob[1]] + loc[::2]
        space = CombinationSpace(g, len(loc), n_local, hvs.global_pairing)
        sel = hvs.selector
        with sel.scoring(mods):
            outs = sel.forward_views(model, glob)
            if len(outs) != 1 or outs[0].dim() != 3:
                raise ValueError(
                    "the SwAV selection forward must return one prototype-score tensor [B, K] per view (lightly's "
                    f"SwaV example model(x)); got {len(outs)} output(s). Multi-head prototypes "
                    "(SwaVPrototypes(n_prototypes=[...])) are not supported: pass a forward for one head"
                )
            scores = outs[0]  # [G, M, K]
            every = torch.cat([scores, sel.forward_views(model, loc)[0]]) if loc else scores  # [G+L, M, K]
            codes = swav_codes(scores, self.sinkhorn(), queue)  # slot of candidate g: g % 2 (cross layout)
            ce = swav_cross_entropy(codes, every, float(self.criterion.temperature))  # [G, G+L, M]
        return hvs._choose_combination(space, ce, glob, loc)[1]
