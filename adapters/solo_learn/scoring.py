"""Per-sample pair losses of solo-learn's objectives (torch + the core only; no solo-learn import).

Each function maps stacked per-view outputs ``[N, M, D]`` and ``pairs: [P, 2]`` to ``[P, M]`` whose
mean over samples equals solo-learn's loss on that pair with view ``pairs[p, 0]`` as crop 1 and
``pairs[p, 1]`` as crop 2 (the exactness the integration tests check against solo-learn's own
loss functions).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from hvs_plugins import negative_cosine_pair_losses, ntxent_pair_losses
from hvs_plugins.devices import to_device


def byol_pair_losses(p: torch.Tensor, z_momentum: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """solo-learn BYOL: ``byol(P2, Zm1) + byol(P1, Zm2)`` with ``byol = 2 − 2·cos`` →
    per sample ``4 + 4·½(−cos(p_a, zm_b) − cos(p_b, zm_a))``."""
    return 4.0 + 4.0 * negative_cosine_pair_losses(p, z_momentum, pairs)


def cross_view_infonce(
    anchors: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    all_targets: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> torch.Tensor:
    """``ce[a, b, i]`` = cross-entropy of anchor ``anchors[a, i]`` against all targets of view b
    (``all_targets[b]``: every rank's targets, this rank's at rows ``offset..offset+M``), the
    positive being its own sample (solo-learn's MoCo v3 and NNCLR losses). ``[N, N, M]``."""
    q = F.normalize(anchors.float(), dim=-1)
    kall = F.normalize((targets if all_targets is None else all_targets).float().to(q.device), dim=-1)
    n, m, _ = q.shape
    if kall.dim() != 3 or kall.shape[0] != n or kall.shape[2] != q.shape[2]:
        raise ValueError(f"targets must be [N={n}, M_all, D={q.shape[2]}], got {list(kall.shape)}")
    logits = torch.einsum("amd,bjd->abmj", q, kall) / temperature  # [N, N, M, M_all]
    own = torch.arange(m, device=q.device) + offset
    pos = logits[..., torch.arange(m, device=q.device), own]  # [N, N, M]
    return torch.logsumexp(logits, dim=-1) - pos


def mocov3_pair_losses(
    q: torch.Tensor,
    k: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float,
    all_keys: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> torch.Tensor:
    """solo-learn MoCo v3: ``2τ·(CE(q_a, K_b) + CE(q_b, K_a))`` per sample (in-batch keys of the
    momentum encoder, gathered over ranks)."""
    ce = cross_view_infonce(q, k, temperature, all_keys, offset)
    a, b = to_device(pairs[:, 0], ce.device), to_device(pairs[:, 1], ce.device)
    return 2.0 * temperature * (ce[a, b] + ce[b, a])


def nnclr_pair_losses(
    nn: torch.Tensor,
    p: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float,
    all_p: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> torch.Tensor:
    """solo-learn NNCLR: ``½·CE(nn_a, P_b) + ½·CE(nn_b, P_a)`` per sample (``nn``: nearest
    neighbours of the normalised projections in the read-only support queue)."""
    ce = cross_view_infonce(nn, p, temperature, all_p, offset)
    a, b = to_device(pairs[:, 0], ce.device), to_device(pairs[:, 1], ce.device)
    return 0.5 * (ce[a, b] + ce[b, a])


def mocov2plus_pair_losses(q: torch.Tensor, k: torch.Tensor, pairs: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """solo-learn MoCo v2+: ``½·(CE(q_a, k_b; queue[1]) + CE(q_b, k_a; queue[0]))`` per sample.
    ``queue: [2, D, K]`` (read only): crop 1's loss uses the second half, crop 2's the first, so the
    pair is ordered (score ordered pairs)."""
    if queue.dim() != 3 or queue.shape[0] != 2:
        raise ValueError(f"MoCo v2+ queue must be [2, D, K], got {list(queue.shape)}")
    fwd = ntxent_pair_losses(q, pairs, temperature, keys=k, memory_bank=queue[1].t(), symmetric=False)
    bwd = ntxent_pair_losses(q, pairs.flip(1), temperature, keys=k, memory_bank=queue[0].t(), symmetric=False)
    return 0.5 * (fwd + bwd)


def ressl_pair_losses(
    q: torch.Tensor,
    k: torch.Tensor,
    pairs: torch.Tensor,
    queue: torch.Tensor,
    temperature_q: float,
    temperature_k: float,
) -> torch.Tensor:
    """solo-learn ReSSL: ``−Σ softmax(k_b·queue/τ_k) · log_softmax(q_a·queue/τ_q)`` per sample
    (query of crop 1 = view a, momentum key of crop 2 = view b: ordered pairs). ``q, k: [N, M, D]``
    normalised projections, ``queue: [Q, D]`` (read only)."""
    bank = queue.detach().float().to(q.device)
    log_q = F.log_softmax(torch.einsum("nmd,qd->nmq", q.float(), bank) / temperature_q, dim=-1)
    p_k = F.softmax(torch.einsum("nmd,qd->nmq", k.float(), bank) / temperature_k, dim=-1)
    a, b = pairs[:, 0].to(q.device), pairs[:, 1].to(q.device)
    return -(p_k[b] * log_q[a]).sum(-1)  # [P, M]


def supcon_pair_losses(
    z: torch.Tensor,
    labels: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float,
    all_z: Optional[torch.Tensor] = None,
    all_labels: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> torch.Tensor:
    """solo-learn SupCon (``simclr_loss_func`` with the labels as indexes) per sample: views a and b
    of all samples form the batch; the anchor (view v, sample i) has as positives every other
    embedding with its label and as denominator every other embedding,
    ``−log(Σ_pos e^{s/τ} / Σ_{≠self} e^{s/τ})``; sample i's loss is the mean of its two anchors.
    ``z: [N, M, D]``, ``labels: [M]``; distributed: every rank's ``all_z: [N, M_all, D]`` and
    ``all_labels: [M_all]``, this rank's samples at ``offset``. Returns ``[P, M]``."""
    zn = F.normalize(z.float(), dim=-1)
    zall = zn if all_z is None else F.normalize(all_z.float().to(zn.device), dim=-1)
    lall = labels if all_labels is None else all_labels
    n, m, _ = zn.shape
    own = torch.arange(m, device=zn.device) + offset
    gram = torch.einsum("kid,ljd->klij", zn, zall) / temperature  # [N, N, M, M_all]
    same_label = labels.to(zn.device).unsqueeze(1) == lall.to(zn.device).unsqueeze(0)  # [M, M_all]
    is_self = torch.zeros_like(same_label)
    is_self[torch.arange(m), own] = True
    neg_inf = torch.tensor(float("-inf"), device=zn.device)
    diag = gram[torch.arange(n), torch.arange(n)]  # [N, M, M_all]: anchor vs its own view
    own_all = torch.logsumexp(diag.masked_fill(is_self, neg_inf), -1)  # [N, M]
    own_pos = torch.logsumexp(diag.masked_fill(is_self | ~same_label, neg_inf), -1)
    cross_all = torch.logsumexp(gram, -1)  # [N, N, M]
    cross_pos = torch.logsumexp(gram.masked_fill(~same_label, neg_inf), -1)
    ce = torch.logaddexp(own_all.unsqueeze(1), cross_all) - torch.logaddexp(own_pos.unsqueeze(1), cross_pos)
    a, b = pairs[:, 0].to(zn.device), pairs[:, 1].to(zn.device)
    return 0.5 * (ce[a, b] + ce[b, a])


def deepclusterv2_pair_losses(logits: torch.Tensor, assignments: torch.Tensor, pairs: torch.Tensor, temperature: float) -> torch.Tensor:
    """solo-learn DeepClusterV2 per sample: the mean over prototype heads of
    ``½·(CE(logits_a/τ, y) + CE(logits_b/τ, y))`` with ``y`` the sample's k-means assignment.
    ``logits: [N, M, H, C]`` (heads' prototype scores), ``assignments: [H, M]`` (−1: none yet;
    a sample's heads without an assignment are left out, a sample without any scores 0 for
    every pair). Returns ``[P, M]``."""
    y = assignments.to(logits.device).t()  # [M, H]
    valid = y >= 0
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # [N, M, H, C]
    picked = logp.gather(-1, y.clamp(min=0).expand(logits.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1)
    per_view = -(picked * valid).sum(-1) / valid.sum(-1).clamp(min=1)  # [N, M]
    a, b = pairs[:, 0].to(logits.device), pairs[:, 1].to(logits.device)
    return 0.5 * (per_view[a] + per_view[b])
