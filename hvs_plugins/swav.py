"""SwAV's swapped-prediction loss, per sample, for every (code view, prediction view) pair.

SwAV (Caron et al., 2020) computes soft codes ``q_g`` of each global (high-resolution) crop g
with Sinkhorn-Knopp over the batch (plus a queue of earlier batches) and predicts them from
every other crop v: ``CE(q_g, softmax(z_v / τ))``. The loss is the mean of these terms over
g in the globals and v != g (lightly's ``SwaVLoss``, solo-learn's and MMPretrain's ``SwAVLoss``).

HVS uses the per-sample terms ``ce[g, v, i]`` as the matrix of :class:`CombinationSpace`
(teacher index = code view, student index = prediction view): a SwAV multi-crop combination has
exactly DINO's term structure (2 code globals × (2 + n_local) views − 2 same-view terms), so
capped and exact search carry over unchanged, and two-view SwAV is the ``n_local=0`` case.

What "exact" means here. Sinkhorn couples the samples of a batch (its row/column normalisation
runs over the whole batch and the queue), like NT-Xent's negatives: the codes of sample i depend
on which views the other samples are on. HVS computes the codes of each candidate g over the
batch of candidate g (every sample on candidate g, the queue appended as in the host). So
``evaluate(ce, c).mean()`` equals the host's SwAV loss on combination (or pair) c exactly when
every sample of the batch is on c; after per-sample selection the training step recomputes its
codes over the selected views, which differ slightly from the ones HVS ranked with.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

# sinkhorn(scores: [B, K]) -> codes: [B, K]; the host's own function (lightly ``sinkhorn``,
# solo-learn ``SinkhornKnopp``, MMPretrain ``distributed_sinkhorn``) with its settings bound.
Sinkhorn = Callable[[torch.Tensor], torch.Tensor]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the input is float64 (for exactness checks)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def swav_codes(
    scores: torch.Tensor,
    sinkhorn: Sinkhorn,
    queue: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
    queue_slot: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """SwAV codes of every global candidate, each over its own batch: ``[G, M, K]``.

    ``scores: [G, M, K]`` prototype scores (``prototypes(normalize(z))``) of the G global
    candidates. ``sinkhorn`` maps ``[B, K]`` scores to ``[B, K]`` codes (the host's function).
    ``queue``: per global *slot* of the training step the queue's prototype scores ``[Q, K]``
    (the host's ``queue_outputs``); they are appended below the batch before Sinkhorn and their
    rows dropped after, as the host does. ``queue_slot[g]``: the slot candidate g fills in the
    training step (default ``g % len(queue)``: the interleaved layout of ``CandidateViews``).
    Inputs are read only: Sinkhorn runs on detached copies.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [G global candidates, M samples, K prototypes], got {list(scores.shape)}")
    g_total, m, k = scores.shape
    queues: list[torch.Tensor] = []
    if queue is not None:
        queues = list(queue.unbind(0)) if isinstance(queue, torch.Tensor) and queue.dim() == 3 else list(queue)
        if not queues:
            raise ValueError("queue is empty: pass None for SwAV without a queue")
        for q in queues:
            if q.dim() != 2 or q.shape[1] != k:
                raise ValueError(f"each queue entry must be [Q, K={k}] prototype scores, got {list(q.shape)}")
        slots = list(queue_slot) if queue_slot is not None else [g % len(queues) for g in range(g_total)]
        if len(slots) != g_total or any(not 0 <= s < len(queues) for s in slots):
            raise ValueError(f"queue_slot must give a slot in 0..{len(queues) - 1} for each of the {g_total} candidates, got {slots}")
    dtype = _compute_dtype(scores)
    codes = []
    with torch.no_grad():
        for g in range(g_total):
            out = scores[g].detach().to(dtype).clone()
            if queues:
                out = torch.cat([out, queues[slots[g]].detach().to(device=out.device, dtype=dtype)])
            q = sinkhorn(out)
            if q.shape != out.shape:
                raise ValueError(f"sinkhorn returned {list(q.shape)} codes for {list(out.shape)} scores")
            codes.append(q[:m])
    return torch.stack(codes)


def swav_cross_entropy(codes: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample swapped-prediction cross-entropy of every code view against every view.

    ``codes: [G, M, K]`` Sinkhorn codes of the G global candidates (:func:`swav_codes`, or the
    host's own Sinkhorn per candidate); ``logits: [V, M, K]`` prototype scores of the V student
    views (globals first, then locals, as in :class:`CombinationSpace`). Returns
    ``ce: [G, V, M]`` = ``−Σ_k codes[g, i, k] · log_softmax(logits[v, i] / τ)_k``; the g == v
    entries are computed too (the search skips them). See the module doc for what "exact" means.
    """
    if codes.dim() != 3 or logits.dim() != 3:
        raise ValueError(f"codes and logits must be [views, M, K], got {list(codes.shape)} and {list(logits.shape)}")
    if codes.shape[1:] != logits.shape[1:]:
        raise ValueError(f"codes {list(codes.shape)} and logits {list(logits.shape)} disagree on [M, K]")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(_compute_dtype(codes), _compute_dtype(logits))
    q = codes.detach().to(dtype)
    logp = F.log_softmax(logits.detach().to(device=q.device, dtype=dtype) / temperature, dim=-1)
    return -torch.einsum("gmk,vmk->gvm", q, logp)


def swav_pair_losses(ce: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Two-view SwAV per sample: ``½·(ce[k, l] + ce[l, k])`` for ``pairs: [P, 2]`` of global
    candidates; ``ce: [G, G(+L), M]`` from :func:`swav_cross_entropy`. Returns ``[P, M]``."""
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2], got {list(pairs.shape)}")
    k, l = pairs[:, 0].to(ce.device), pairs[:, 1].to(ce.device)
    return 0.5 * (ce[k, l] + ce[l, k])
