"""DINO multi-crop selection of :class:`~.loss.HVSLoss` (inherited): every combination of 2 candidates
per crop scored with DINO's teacher/student cross-entropy, the argmax combination (capped or exact
search, shared with SwAV and iBOT) and the teacher-output reuse check of ``return_teacher_out``."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from hvs_plugins import CombinationSpace, dino_cross_entropy, gather_views, per_sample_violations

from .ibot import dino_teacher_temp


class MultiCropSelection:
    """The multi-crop part of ``HVSLoss``: reads its ``criterion``, ``selector``, ``n_global_candidates``,
    ``global_pairing``, ``cap``, ``exact`` and ``is_dino``."""

    criterion: nn.Module
    is_dino: bool
    n_global_candidates: int
    global_pairing: str
    cap: int
    exact: bool
    last_selection: Any
    last_stats: Any

    def _check_teacher_reuse(self, teachers: Sequence[nn.Module]) -> None:
        if not self.is_dino:
            raise ValueError(
                f"return_teacher_out=True is for DINOLoss (it hands the teacher's selection outputs to "
                f"the training step); {type(self.criterion).__name__} returns the selected views only"
            )
        if self.selector.resolution_scale != 1.0:
            raise ValueError(
                f"return_teacher_out=True needs selection at full resolution (resolution_scale=1.0, got "
                f"{self.selector.resolution_scale}): the teacher's outputs at reduced resolution are not "
                "the ones the training step would compute. Drop return_teacher_out or the resolution scale."
            )
        if not teachers:
            raise ValueError(
                "return_teacher_out=True must check the teacher network, but the teacher forward is a plain "
                "function: pass model.forward_teacher (a bound method) or the module, or list the teacher's "
                "module in modules=[...]"
            )
        coupled = per_sample_violations(teachers)
        if coupled:
            raise ValueError(
                "return_teacher_out=True needs a teacher whose output per sample does not depend on the "
                "batch or the RNG, so that its selection outputs equal those of the training step; the "
                f"teacher's module has in train mode: {', '.join(coupled[:4])}"
                f"{' ...' if len(coupled) > 4 else ''}. Call select without return_teacher_out and "
                "forward the teacher on views[:2] as before."
            )

    def _teacher_temp(self, epoch: Optional[int], teacher_temp: Optional[float]) -> float:
        return dino_teacher_temp(self.criterion, epoch, teacher_temp)

    def _choose_combination(self, space: CombinationSpace, ce: torch.Tensor, glob: list, loc: list) -> tuple[Any, list]:
        """Multi-crop (DINO, SwAV, iBOT): the argmax combination of ``ce [G, V, M]`` (capped or
        exact search), recorded as ``last_selection``, and the chosen views ``[g_a, g_b, l_1, ...]``."""
        sel = self.selector
        choice = space.exact_search(ce, sel.generator) if self.exact else space.search(ce, self.cap, sel.generator)
        self._warn(choice.fallback, "combination loss")  # deferred with HVSLoss(stats=False)
        self.last_selection = choice
        self.last_stats = None
        out = gather_views(glob, choice.globals_)
        if len(loc):
            out += gather_views(loc, choice.locals_)
        return choice, out

    def _select_dino(self, views, student, teacher, mods, epoch, teacher_temp, boxes, active=True, want_teacher=False):
        g = self.n_global_candidates
        if len(views) < g:
            raise ValueError(f"DINO HVS needs {g} global candidates (2 per global crop) first, got {len(views)} views")
        glob, loc = views[:g], views[g:]
        if len(loc) % 2:
            raise ValueError(
                f"DINO HVS expects 2 candidates per local crop, got {len(loc)} local views: wrap the "
                "DINOTransform with CandidateViews(transform)"
            )
        n_local = len(loc) // 2
        if not active:
            out = [glob[0], glob[1]] + loc[::2]
            if want_teacher:
                with torch.no_grad():
                    return out, [teacher(v) for v in out[:2]]
            return out
        space = CombinationSpace(g, len(loc), n_local, self.global_pairing)
        sel = self.selector
        with sel.scoring(mods):
            t_out = sel.forward_views(teacher, glob)[0]
            s_out = sel.forward_views(student, glob)[0]
            if loc:
                s_out = torch.cat([s_out, sel.forward_views(student, loc)[0]])
            ce = dino_cross_entropy(
                t_out, s_out, self.criterion.center, self._teacher_temp(epoch, teacher_temp), float(self.criterion.student_temp)
            )
        choice, out = self._choose_combination(space, ce, glob, loc)
        if want_teacher:  # t_out: [G, M, D]; choice.globals_: [M, 2] candidate index per slot
            g = choice.globals_.to(t_out.device)
            m = torch.arange(g.shape[0], device=t_out.device)
            return out, [t_out[g[:, 0], m], t_out[g[:, 1], m]]
        return out
