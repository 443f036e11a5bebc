"""iBOT with lightly: ``IBOTLoss`` (DINOLoss on [CLS] + IBOTPatchLoss on masked patches) and its
HVS selection (2 candidates per crop, each global candidate with its own mask).

    criterion = HVSLoss(IBOTLoss(DINOLoss(output_dim=K), IBOTPatchLoss(output_dim=K)), exact=True)
    masks = [random_block_mask((B, H, W)) for _ in range(4)]          # one per global candidate
    views, masks = criterion.select(batch[0], student, teacher, masks=masks, teacher_temp=t)
    block_mask = torch.cat(masks)                                      # for torch.cat(views[:2])
    ...
    loss = criterion(teacher_cls.chunk(2), student_cls.chunk(len(views)), teacher_masked_out,
                     student_masked_out, block_mask, teacher_temp=t)

Selection forwards: ``teacher(x, mask) -> (cls_out [B, K], patch_out [n, K])`` (the teacher sees
the unmasked images; ``patch_out`` = its patch head on the tokens where ``mask`` is True, in
row-major order, as ``teacher_patch_head(features[:, 1:][mask.flatten(1)])``) and
``student(x, mask) -> (cls_out, patch_out)`` (the student's input masked by ``mask``); for local
crops ``student(x, None)`` (its [CLS] output, or a tuple starting with it). Neither loss is
called during selection (lightly updates both centers on every call): the centers are read only.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from hvs_plugins import (
    CombinationSpace,
    dino_cross_entropy,
    gather_views,
    ibot_combination_ce,
    ibot_patch_cross_entropy,
)
from hvs_plugins.runner import chunk_bounds


def dino_teacher_temp(dino_loss: nn.Module, epoch: Optional[int], teacher_temp: Optional[float]) -> float:
    """The teacher temperature a lightly ``DINOLoss`` uses for ``epoch`` (or the one passed)."""
    if teacher_temp is not None:
        return float(teacher_temp)
    if epoch is not None and epoch < dino_loss.warmup_teacher_temp_epochs:
        return float(dino_loss.teacher_temp_schedule[epoch])
    return float(dino_loss.teacher_temp)


class IBOTLoss(nn.Module):
    """iBOT's training loss from lightly's parts: ``cls_weight · dino_loss(teacher_cls,
    student_cls) + patch_weight · patch_loss(teacher_patch, student_patch, mask)``.

    ``dino_loss``: a ``DINOLoss`` ([CLS] tokens, local crops included); ``patch_loss``: an
    ``IBOTPatchLoss`` (masked patch tokens of the global crops). ``teacher_temp`` goes to both
    losses, ``epoch`` to DINOLoss's warmup schedule, as in lightly's iBOT example
    (``dino_loss + ibot_loss``: both weights 1). Both centers are updated by every call, as the
    two lightly losses do.
    """

    def __init__(self, dino_loss: nn.Module, patch_loss: nn.Module, cls_weight: float = 1.0, patch_weight: float = 1.0) -> None:
        super().__init__()
        from lightly.loss import DINOLoss, IBOTPatchLoss

        if not isinstance(dino_loss, DINOLoss) or not isinstance(patch_loss, IBOTPatchLoss):
            raise TypeError(
                f"IBOTLoss(dino_loss, patch_loss) takes a lightly DINOLoss and IBOTPatchLoss, got "
                f"{type(dino_loss).__name__} and {type(patch_loss).__name__}"
            )
        if type(patch_loss) is not IBOTPatchLoss:
            raise TypeError(f"{type(patch_loss).__name__} weights tokens differently: only IBOTPatchLoss is supported")
        self.dino_loss = dino_loss
        self.patch_loss = patch_loss
        self.cls_weight = float(cls_weight)
        self.patch_weight = float(patch_weight)

    def forward(
        self,
        teacher_cls: Sequence[torch.Tensor],
        student_cls: Sequence[torch.Tensor],
        teacher_patch: torch.Tensor,
        student_patch: torch.Tensor,
        mask: torch.Tensor,
        teacher_temp: Optional[float] = None,
        epoch: Optional[int] = None,
    ) -> torch.Tensor:
        """``teacher_cls``: 2 global [CLS] outputs ``[B, K]``; ``student_cls``: the 2 globals then the
        locals; ``teacher_patch``, ``student_patch: [n, K]`` masked-token outputs of the 2B global
        images; ``mask: [2B, H, W]`` (slot-0 images first)."""
        cls = self.dino_loss(list(teacher_cls), list(student_cls), teacher_temp=teacher_temp, epoch=epoch)
        patch = self.patch_loss(teacher_patch, student_patch, mask, teacher_temp=teacher_temp)
        return self.cls_weight * cls + self.patch_weight * patch

    def cls_teacher_temp(self, epoch: Optional[int], teacher_temp: Optional[float]) -> float:
        return dino_teacher_temp(self.dino_loss, epoch, teacher_temp)

    def patch_teacher_temp(self, teacher_temp: Optional[float]) -> float:
        return float(teacher_temp if teacher_temp is not None else self.patch_loss.teacher_temp)


def _pair(out: Any, what: str) -> tuple:
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return tuple(out)
    raise TypeError(f"the iBOT {what} forward must return (cls_out [B, K], masked patch_out [n, K]), got {type(out).__name__}")


class IBOTMethod:
    """How :class:`HVSLoss` selects for :class:`IBOTLoss`."""

    name = "IBOTLoss"

    def __init__(self, criterion: IBOTLoss) -> None:
        self.criterion = criterion

    def _check(self, hvs: Any, views: list, target: Any, masks: Any) -> tuple[int, list[torch.Tensor]]:
        g = hvs.n_global_candidates
        if target is None:
            raise ValueError("iBOT needs the teacher forward: select(views, student, teacher, masks=masks)")
        if hvs.selector.resolution_scale != 1.0:
            raise ValueError(
                f"iBOT selection needs full resolution (resolution_scale=1.0, got {hvs.selector.resolution_scale}): "
                "the masks live on the patch grid of the full-resolution global crops"
            )
        if len(views) < g or (len(views) - g) % 2:
            raise ValueError(
                f"iBOT HVS expects {g} global candidates then 2 candidates per local crop, got {len(views)} views: "
                "wrap the transform with CandidateViews(transform)"
            )
        if masks is None or len(masks) != g:
            raise ValueError(
                f"iBOT HVS needs masks=[...] with one token mask [M, H, W] per global candidate ({g}), got "
                f"{'none' if masks is None else len(masks)}: e.g. [random_block_mask((B, H, W)) for _ in range({g})]"
            )
        m = views[0].shape[0]
        device = views[0].device
        out = []
        for mk in masks:
            if not isinstance(mk, torch.Tensor) or mk.dtype != torch.bool or mk.dim() != 3 or mk.shape[0] != m:
                raise ValueError(
                    f"each mask must be a bool tensor [M={m}, H, W] (lightly's random_block_mask), got "
                    f"{getattr(mk, 'dtype', type(mk).__name__)} {list(getattr(mk, 'shape', []))}"
                )
            out.append(mk.to(device))
        return g, out

    def select(
        self,
        hvs: Any,
        views: list,
        model: Any,
        target: Any,
        mods: Sequence[nn.Module],
        *,
        active: bool,
        epoch: Optional[int] = None,
        teacher_temp: Optional[float] = None,
        masks: Any = None,
        queue: Any = None,
        **_: Any,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if queue is not None:
            raise ValueError("queue= is for SwaVLoss; IBOTLoss takes masks=")
        g, masks = self._check(hvs, views, target, masks)
        glob, loc = views[:g], views[g:]
        n_local = len(loc) // 2
        if not active:
            return [glob[0], glob[1]] + loc[::2], [masks[0], masks[1]]
        c = self.criterion
        space = CombinationSpace(g, len(loc), n_local, hvs.global_pairing)
        sel = hvs.selector
        m = glob[0].shape[0]
        t_cls, s_cls, patch = [], [], []
        with sel.scoring(mods):
            for x, mk in zip(glob, masks):
                parts: list[tuple] = []
                for a, b in chunk_bounds(m, sel.chunk_size):
                    with sel._autocast(x.device):
                        tc, tp = _pair(target(x[a:b], mk[a:b]), "teacher")
                        sc, sp = _pair(model(x[a:b], mk[a:b]), "student")
                    p = ibot_patch_cross_entropy(
                        tp.float(),
                        sp.float(),
                        mk[a:b],
                        c.patch_loss.center.value,
                        c.patch_teacher_temp(teacher_temp),
                        float(c.patch_loss.student_temp),
                    )
                    parts.append((tc.float(), sc.float(), p))
                t_cls.append(torch.cat([q[0] for q in parts]))
                s_cls.append(torch.cat([q[1] for q in parts]))
                patch.append(torch.cat([q[2] for q in parts]))
            for x in loc:
                outs = []
                for a, b in chunk_bounds(m, sel.chunk_size):
                    with sel._autocast(x.device):
                        o = model(x[a:b], None)
                    outs.append((o[0] if isinstance(o, (tuple, list)) else o).float())
                s_cls.append(torch.cat(outs))
            cls_ce = dino_cross_entropy(
                torch.stack(t_cls),
                torch.stack(s_cls),
                c.dino_loss.center,
                c.cls_teacher_temp(epoch, teacher_temp),
                float(c.dino_loss.student_temp),
            )  # [G, G+L, M]
            ce = ibot_combination_ce(cls_ce, torch.stack(patch), space.n_terms, c.cls_weight, c.patch_weight)
        choice, out = hvs._choose_combination(space, ce, glob, loc)
        return out, gather_views(masks, choice.globals_)
