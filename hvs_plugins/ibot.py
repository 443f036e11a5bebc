"""iBOT's loss per sample: DINO's [CLS] term over non-matching views + the masked-patch term.

iBOT (Zhou et al., 2022; lightly ``DINOLoss`` + ``IBOTPatchLoss``) trains on
``cls_weight · DINO([CLS] of the 2 teacher globals vs all student crops, same view excluded)
+ patch_weight · patch``, where ``patch`` is the mean over the 2M global images of each image's
mean cross-entropy over its masked tokens (teacher on the unmasked view vs student on the
masked one, same global view). Per sample i on globals (a, b) that is
``cls_weight · dino_i + patch_weight · (p_a,i + p_b,i) / 2``.

The patch part depends on the global pair only, so it folds into the global-pair entries of
the [CLS] cross-entropy matrix (:func:`ibot_combination_ce`) and :class:`CombinationSpace` —
capped or exact search — returns iBOT's combination loss unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ibot_patch_cross_entropy(
    teacher_masked: torch.Tensor,
    student_masked: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> torch.Tensor:
    """Per-image masked-patch cross-entropy of one view batch: ``[M]``.

    ``teacher_masked``, ``student_masked: [n, K]`` head outputs of the masked tokens, in
    ``mask``'s row-major order (what ``head(features[mask])`` gives); ``mask: [M, H, W]`` (or
    ``[M, T]``) bool; ``center: [..., K]`` the patch loss's center (read only). Image i gets the
    mean over its masked tokens of ``−Σ softmax((t − c)/τ_t) · log_softmax(s/τ_s)`` (0 when it has
    none), so the mean over images is lightly's ``IBOTPatchLoss`` on this batch.
    """
    if mask.dtype != torch.bool or mask.dim() not in (2, 3):
        raise ValueError(f"mask must be a bool [M, H, W] (or [M, T]) token mask, got {mask.dtype} {list(mask.shape)}")
    n = int(mask.sum())
    if teacher_masked.dim() != 2 or teacher_masked.shape != student_masked.shape or teacher_masked.shape[0] != n:
        raise ValueError(
            f"teacher and student patch outputs must both be [n masked tokens={n}, K] (head(features[mask])), "
            f"got {list(teacher_masked.shape)} and {list(student_masked.shape)}"
        )
    if teacher_temp <= 0 or student_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got teacher {teacher_temp}, student {student_temp}")
    dtype = torch.float64 if teacher_masked.dtype == torch.float64 else torch.float32
    c = center.detach().to(device=teacher_masked.device, dtype=dtype).reshape(1, -1)
    t_prob = F.softmax((teacher_masked.detach().to(dtype) - c) / teacher_temp, dim=-1)
    s_logp = F.log_softmax(student_masked.detach().to(dtype) / student_temp, dim=-1)
    token_ce = -(t_prob * s_logp).sum(-1)  # [n]
    flat = mask.flatten(1)  # [M, T]
    owner = flat.nonzero()[:, 0].to(token_ce.device)  # image of each masked token, row-major
    per_image = torch.zeros(flat.shape[0], dtype=dtype, device=token_ce.device).index_add_(0, owner, token_ce)
    return per_image / flat.sum(1).clamp(min=1).to(per_image)


def ibot_combination_ce(
    cls_ce: torch.Tensor,
    patch_ce: torch.Tensor,
    n_terms: int,
    cls_weight: float = 1.0,
    patch_weight: float = 1.0,
) -> torch.Tensor:
    """The matrix for :class:`CombinationSpace` whose combination loss is iBOT's.

    ``cls_ce: [G, G+L, M]`` DINO [CLS] cross-entropies (core ``dino_cross_entropy``);
    ``patch_ce: [G, M]`` per-sample patch term of each global candidate with its own mask
    (:func:`ibot_patch_cross_entropy`); ``n_terms``: the space's ``n_terms``. Entry (t, s) for a
    global s != t gets ``patch_weight · n_terms / 2 · patch_ce[t]``: a combination's global terms
    ce[a, b] + ce[b, a] then carry ``n_terms · patch_weight · (p_a + p_b) / 2``, and the space's
    mean over its ``n_terms`` terms is ``cls_weight · dino + patch_weight · (p_a + p_b) / 2``.
    Returns ``[G, G+L, M]``.
    """
    g = cls_ce.shape[0]
    if cls_ce.dim() != 3 or cls_ce.shape[1] < g or patch_ce.shape != (g, cls_ce.shape[2]):
        raise ValueError(f"cls_ce must be [G, G+L, M] and patch_ce [G, M], got {list(cls_ce.shape)} and {list(patch_ce.shape)}")
    out = cls_weight * cls_ce
    off_diagonal = ~torch.eye(g, dtype=torch.bool, device=cls_ce.device)  # [G, G]: student global s != t
    bonus = (patch_weight * n_terms / 2) * patch_ce.to(out).unsqueeze(1) * off_diagonal.unsqueeze(-1)  # [G, G, M]
    return torch.cat([out[:, :g] + bonus, out[:, g:]], dim=1)
