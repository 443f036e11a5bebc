"""Per-sample pair losses, vectorised over all pairs at once.

Every function takes per-view outputs stacked as ``[N, M, D]`` (N candidate views, M samples)
and a pair table ``pairs: [P, 2]``, and returns ``pair_losses: [P, M]``: the host's own objective
on that pair, per sample, so that ``pair_losses[p].mean()`` equals the host's loss on pair p.
Inputs are read, never modified (centers, temperatures and memory banks included).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .devices import to_device


def _check_views(name: str, x: torch.Tensor, pairs: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be [N views, M samples, D], got shape {list(x.shape)}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2], got shape {list(pairs.shape)}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= x.shape[0]):
        raise ValueError(f"pairs index views 0..{x.shape[0] - 1} only, got {pairs.tolist()}")


def negative_cosine_pair_losses(predictions: torch.Tensor, targets: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Symmetric negative cosine (SimSiam, BYOL): for pair (k, l) and sample i,
    ``½·(−cos(p_i^k, z_i^l) − cos(p_i^l, z_i^k))``.

    ``predictions: [N, M, D]`` online predictor outputs p; ``targets: [N, M, D]`` stop-grad targets z
    (SimSiam: the projections; BYOL: the momentum network's projections). Returns ``[P, M]``.
    """
    _check_views("predictions", predictions, pairs)
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {list(targets.shape)} must match predictions {list(predictions.shape)}")
    p = F.normalize(predictions.float(), dim=-1)
    z = F.normalize(targets.float(), dim=-1)
    k, l = to_device(pairs[:, 0], p.device), to_device(pairs[:, 1], p.device)
    # cos(p^k, z^l) for the P pairs only: [P, M]
    return -0.5 * ((p[k] * z[l]).sum(-1) + (p[l] * z[k]).sum(-1))


def ntxent_pair_losses(
    embeddings: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float = 0.5,
    keys: Optional[torch.Tensor] = None,
    memory_bank: Optional[torch.Tensor] = None,
    symmetric: bool = True,
    all_embeddings: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> torch.Tensor:
    """NT-Xent / InfoNCE per sample (SimCLR; MoCo with a read-only memory bank).

    Without ``memory_bank`` (SimCLR): views k and l of all M samples form the batch; the anchor
    i of view k has positive i of view l and negatives all other 2M−2 embeddings. The loss of
    sample i is the mean of its two anchors' cross-entropies (so the batch mean equals lightly's
    ``NTXentLoss(temperature)(z_k, z_l)``). ``symmetric=False`` keeps the view-k anchor only.

    With ``memory_bank: [K, D]`` (MoCo): anchor ``embeddings[k, i]`` (the query), positive
    ``keys[l, i]`` (momentum encoder; ``embeddings`` if ``keys`` is None), negatives the bank
    only, as lightly's ``NTXentLoss(memory_bank_size=...)``. ``symmetric`` averages both
    orientations (k→l and l→k); otherwise the loss of query view k and key view l.

    Distributed SimCLR (lightly's ``gather_distributed=True``, solo-learn's gathered negatives):
    pass ``all_embeddings: [N, M_all, D]``, every rank's embeddings gathered in rank order, and
    ``offset``, the row of this rank's first sample in it; negatives then come from all ranks
    exactly as in the host's step, and the losses of this rank's M samples are returned.

    ``embeddings``, ``keys``: ``[N, M, D]``. Returns ``[P, M]``.
    """
    _check_views("embeddings", embeddings, pairs)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(embeddings.float(), dim=-1)
    k, l = to_device(pairs[:, 0], z.device), to_device(pairs[:, 1], z.device)
    if memory_bank is not None:
        kz = z if keys is None else F.normalize(keys.float(), dim=-1)
        if kz.shape != z.shape:
            raise ValueError(f"keys {list(kz.shape)} must match embeddings {list(z.shape)}")
        bank = F.normalize(memory_bank.detach().float().to(z.device), dim=-1)  # [K, D]
        if bank.dim() != 2 or bank.shape[1] != z.shape[-1]:
            raise ValueError(f"memory_bank must be [K, D={z.shape[-1]}], got {list(memory_bank.shape)}")
        neg = torch.einsum("nmd,kd->nmk", z, bank) / temperature  # [N, M, K]
        pos = (z.unsqueeze(1) * kz.unsqueeze(0)).sum(-1) / temperature  # [N(query), N(key), M]
        lse_neg = torch.logsumexp(neg, dim=-1)  # [N, M]
        # CE with the positive as class 0: logsumexp(pos, negs) - pos
        ce = torch.logaddexp(pos, lse_neg.unsqueeze(1)) - pos  # [Nq, Nk, M]
        forward = ce[k, l]
        return 0.5 * (forward + ce[l, k]) if symmetric else forward
    if keys is not None:
        raise ValueError("keys are only used with a memory_bank (MoCo); SimCLR uses one network")
    n, m, _ = z.shape
    if all_embeddings is None:
        zall = z
    else:
        zall = F.normalize(all_embeddings.detach().float().to(z.device), dim=-1)
        if zall.dim() != 3 or zall.shape[0] != n or zall.shape[2] != z.shape[2]:
            raise ValueError(f"all_embeddings must be [N={n}, M_all, D={z.shape[2]}], got {list(zall.shape)}")
        if not 0 <= offset <= zall.shape[1] - m:
            raise ValueError(f"offset {offset} leaves no room for {m} local samples in {zall.shape[1]}")
    own = torch.arange(m, device=z.device) + offset  # column of each anchor's own sample
    gram = torch.einsum("kid,ljd->klij", z, zall) / temperature  # [N, N, M, M_all]
    self_mask = torch.zeros(m, zall.shape[1], dtype=torch.bool, device=z.device)
    rows, views = torch.arange(m, device=z.device), torch.arange(n, device=z.device)  # device indices: no copy
    self_mask[rows, own] = True
    same = gram[views, views].masked_fill(self_mask, float("-inf"))  # [N, M, M_all]
    lse_same = torch.logsumexp(same, dim=-1)  # [N, M]: anchor vs other samples of its own view
    lse_cross = torch.logsumexp(gram, dim=-1)  # [N, N, M]: anchor of view k vs all of view l
    pos = gram[..., rows, own]  # [N, N, M]
    ce = torch.logaddexp(lse_same.unsqueeze(1), lse_cross) - pos  # [N(anchor), N(other), M]
    forward = ce[k, l]
    return 0.5 * (forward + ce[l, k]) if symmetric else forward


def dino_cross_entropy(
    teacher_out: torch.Tensor,
    student_out: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """DINO's per-sample cross-entropy of every teacher view against every student view.

    ``teacher_out: [T, M, K]`` teacher head outputs (global candidates), ``student_out: [S, M, K]``
    student head outputs (globals first, then locals), ``center: [K]`` or ``[1, K]`` (read only).
    Returns ``ce: [T, S, M]`` = ``−Σ softmax((t − c)/τ_t) · log_softmax(s/τ_s)``.
    """
    if teacher_out.dim() != 3 or student_out.dim() != 3:
        raise ValueError(f"teacher_out and student_out must be [views, M, K], got {list(teacher_out.shape)} and {list(student_out.shape)}")
    if teacher_out.shape[1:] != student_out.shape[1:]:
        raise ValueError(f"teacher {list(teacher_out.shape)} and student {list(student_out.shape)} disagree on [M, K]")
    if teacher_temp <= 0 or student_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got teacher {teacher_temp}, student {student_temp}")
    c = center.detach().float().reshape(1, 1, -1).to(teacher_out.device)
    t_prob = F.softmax((teacher_out.float() - c) / teacher_temp, dim=-1)
    s_logp = F.log_softmax(student_out.float() / student_temp, dim=-1)
    return -torch.einsum("tmk,smk->tsm", t_prob, s_logp)


def dino_pair_losses(ce: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """DINO loss of two global views only (no locals), per sample: ``½·(ce[k,l] + ce[l,k])``.
    ``ce: [T, S, M]`` from :func:`dino_cross_entropy` over the same global candidates. ``[P, M]``."""
    k, l = to_device(pairs[:, 0], ce.device), to_device(pairs[:, 1], ce.device)
    return 0.5 * (ce[k, l] + ce[l, k])


def invariance_proxy_pair_losses(embeddings: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """PROXY, not the host loss: per-sample invariance term ``‖z_i^k − z_i^l‖² / D`` (VICReg's
    invariance term; for Barlow Twins a stand-in for its on-diagonal term).

    VICReg and Barlow Twins are not sample-decomposable (variance, covariance and
    cross-correlation terms couple the batch), so no exact per-sample loss exists; this proxy
    ranks pairs by how far apart their embeddings are. ``embeddings: [N, M, D]`` → ``[P, M]``.
    """
    _check_views("embeddings", embeddings, pairs)
    z = embeddings.float()
    k, l = to_device(pairs[:, 0], z.device), to_device(pairs[:, 1], z.device)
    return (z[k] - z[l]).pow(2).mean(-1)
