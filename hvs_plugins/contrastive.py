"""More per-sample pair losses: decoupled contrastive (DCL, DCLW), model-aware contrastive (MACL)
and TiCo, vectorised like :mod:`hvs_plugins.losses`.

Each takes per-view outputs ``[N, M, D]`` and ``pairs: [P, 2]`` and returns ``[P, M]`` whose mean
over samples is the host's loss on that pair. Their per-sample terms read the rest of the batch
(negatives; MACL's temperature from the batch's mean alignment; DCLW's softmax weights over the
batch; TiCo's covariance update), so — as for NT-Xent — a pair's value is exact when every sample
of the batch is on that pair. Inputs are read only.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .losses import _check_views

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (u [M, D], v [M, D]) -> [M]


def _normalized(x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F.normalize(x.detach().to(dtype), dim=-1)


def _anchor_terms(u: torch.Tensor, v: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors ``u: [M, D]`` (normalised) with positives ``v: [M, D]``: ``pos: [M]`` = cos(u_i, v_i)/τ
    and ``lse_neg: [M]`` = logsumexp over the 2M − 2 negatives (u_j and v_j, j != i) / τ."""
    m = u.shape[0]
    s_uu, s_uv = u @ u.t() / temperature, u @ v.t() / temperature  # [M, M]
    eye = torch.eye(m, dtype=torch.bool, device=u.device)
    pos = s_uv.diagonal()
    neg = torch.cat([s_uu.masked_fill(eye, float("-inf")), s_uv.masked_fill(eye, float("-inf"))], dim=1)
    return pos, torch.logsumexp(neg, dim=1)


def dcl_pair_losses(
    embeddings: torch.Tensor, pairs: torch.Tensor, temperature: float = 0.1, weight_fn: Optional[WeightFn] = None
) -> torch.Tensor:
    """Decoupled contrastive loss (lightly ``DCLLoss``; ``DCLWLoss``: its ``weight_fn``) per sample:
    ``½·(ℓ(k→l) + ℓ(l→k))`` with ``ℓ_i = −w_i·cos(z_i^k, z_i^l)/τ + logsumexp`` over the negatives
    (the positive excluded from the denominator). ``weight_fn(u, v) -> [M]`` gets the normalised
    views as the host's does. ``embeddings: [N, M, D]`` → ``[P, M]``."""
    _check_views("embeddings", embeddings, pairs)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = _normalized(embeddings)
    rows = []
    for k, l in pairs.tolist():
        halves = []
        for a, b in ((k, l), (l, k)):
            pos, lse_neg = _anchor_terms(z[a], z[b], temperature)
            if weight_fn is not None:
                pos = pos * torch.as_tensor(weight_fn(z[a], z[b])).to(pos)
            halves.append(lse_neg - pos)
        rows.append(0.5 * (halves[0] + halves[1]))
    return torch.stack(rows)


def macl_pair_losses(
    embeddings: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float = 0.1,
    alpha: float = 0.5,
    a0: float = 0.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Model-aware contrastive loss (lightly ``MACLLoss``) per sample: NT-Xent at the temperature
    ``τ·(1 + α·(A − A₀))`` (A: the pair's mean positive cosine over the batch), each anchor's term
    weighted by ``1 / (1 − p_pos + eps)`` (detached); the mean of both anchors. ``[P, M]``."""
    _check_views("embeddings", embeddings, pairs)
    z = _normalized(embeddings)
    rows = []
    for k, l in pairs.tolist():
        a_mean = (z[k] * z[l]).sum(-1).mean()
        t = temperature * (1 + alpha * (float(a_mean) - a0))
        halves = []
        for a, b in ((k, l), (l, k)):
            pos, lse_neg = _anchor_terms(z[a], z[b], t)
            log_p = pos - torch.logaddexp(pos, lse_neg)
            halves.append(-log_p / (1.0 - log_p.exp() + eps))
        rows.append(0.5 * (halves[0] + halves[1]))
    return torch.stack(rows)


def tico_pair_losses(
    online: torch.Tensor,
    target: torch.Tensor,
    pairs: torch.Tensor,
    beta: float = 0.9,
    rho: float = 8.0,
    covariance: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """TiCo (lightly ``TiCoLoss``) per sample for ordered pairs (k, l): ``1 − cos(z_a, z_b) + ρ·z_aᵀ C z_a``
    with z_a = ``online[k]``, z_b = ``target[l]`` and ``C = β·covariance + (1 − β)·z_aᵀz_a / M`` the
    loss's running covariance updated with this batch (``covariance``: the host's ``C``, None at the
    start = zeros; read only). ``online``, ``target: [N, M, D]`` → ``[P, M]``."""
    _check_views("online", online, pairs)
    if target.shape != online.shape:
        raise ValueError(f"target {list(target.shape)} must match online {list(online.shape)}")
    za_all, zb_all = _normalized(online), _normalized(target)
    d = za_all.shape[-1]
    prev = torch.zeros(d, d, dtype=za_all.dtype, device=za_all.device) if covariance is None else covariance.detach().to(za_all)
    if prev.shape != (d, d):
        raise ValueError(f"covariance must be [D={d}, D], got {list(prev.shape)}")
    rows = []
    for k, l in pairs.tolist():
        za, zb = za_all[k], zb_all[l]
        c = beta * prev + (1 - beta) * (za.t() @ za) / za.shape[0]
        rows.append(1.0 - (za * zb).sum(-1) + rho * ((za @ c) * za).sum(-1))
    return torch.stack(rows)
