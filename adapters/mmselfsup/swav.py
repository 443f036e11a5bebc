"""SwAV (MMSelfSup 1.x / MMPretrain 1.x ``SwAV`` with ``SwAVLoss``) per-sample swapped-prediction
losses for the hook.

The host's ``SwAVLoss.forward`` normalises the prototypes in place, enqueues the embeddings and
flips ``use_queue``: it is never called here. Scores use a normalised *copy* of the prototypes,
the queue read only (used exactly when the host would use it), and the host's own
``distributed_sinkhorn`` on detached copies (queue rows first, as the host orders them).

What "exact" means (the Sinkhorn codes and the host's BatchNorm couple the samples of a batch):

- two views (``num_crops=[2]``): every candidate pair gets one joint forward of its two views,
  as the algorithm's ``loss()`` forwards its two crops as one batch, so ``pair_losses[p].mean()``
  equals ``loss()`` on pair p when every sample of the batch is on pair p;
- multi-crop (``num_crops=[2, n]``, 2 candidates per crop, 4 global candidates): two forwards
  of the host's own batch layout, globals (0, 1) with locals 0..n-1 and globals (2, 3) with locals
  n..2n-1 (per resolution one backbone batch, the neck over all), codes of each global candidate
  from Sinkhorn over its batch. These two combinations are exact when every sample is on them;
  every other combination mixes BatchNorm statistics of the two forwards, so its score
  approximates ``loss()`` (exact as well where normalisation is per sample, e.g. BatchNorm in eval
  mode). Other candidate counts: one forward of all global and one of all local candidates.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins import HardViewSelector, resize_views, swav_codes, swav_cross_entropy


def swav_loss_module(model: nn.Module) -> nn.Module:
    head = model.head
    loss = getattr(head, "loss_module", None)  # MMPretrain
    if not isinstance(loss, nn.Module):
        loss = getattr(head, "loss", None)  # MMSelfSup
    if type(loss).__name__ != "SwAVLoss":
        raise NotImplementedError(f"HVS scores SwAV with its SwAVLoss head only, got {type(loss).__name__}")
    if not isinstance(loss.prototypes, nn.Linear):
        raise NotImplementedError(
            "HVS scores SwAV with one prototype layer (num_prototypes: int); MultiPrototypes (a list) is not supported"
        )
    if list(loss.crops_for_assign) != [0, 1]:
        raise NotImplementedError(f"HVS scores SwAV with crops_for_assign=[0, 1], got {loss.crops_for_assign}")
    return loss


def _host_sinkhorn(model: nn.Module) -> Callable:
    host = type(model).__module__.split(".")[0]
    if host == "mmpretrain":
        return importlib.import_module("mmpretrain.models.losses.swav_loss").distributed_sinkhorn
    return importlib.import_module("mmselfsup.utils").distributed_sinkhorn


class SwAVScorer:
    """The host's SwAV settings read once per selection (prototypes, queue, Sinkhorn)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.loss = swav_loss_module(model)
        self.temperature = float(self.loss.temperature)
        # the host normalises its prototypes at the start of every loss(): score with that copy
        self.prototypes = F.normalize(self.loss.prototypes.weight.detach().clone(), dim=1, p=2)  # [K, D]
        self._sinkhorn = _host_sinkhorn(model)

    def queue_scores(self) -> Optional[list[torch.Tensor]]:
        """Per crop slot the queue's prototype scores ``[Q, K]``, when the host's next loss() would
        use the queue (it is set and either in use or full), else None."""
        queue = self.loss.queue
        if queue is None:
            return None
        use = [bool(self.loss.use_queue) or not bool(torch.all(queue[i, -1, :] == 0)) for i in range(2)]
        if not any(use):
            return None
        if not all(use):
            raise NotImplementedError("the SwAV queue is filled for one crop slot only; HVS expects both or neither")
        return [torch.mm(queue[i], self.prototypes.t()) for i in range(2)]

    def sinkhorn(self, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``[m (+Q), K]`` scores, batch first (the core's order) → codes, computed by the host's
        ``distributed_sinkhorn`` with the queue rows first (the host's order)."""
        loss = self.loss

        def run(scores: torch.Tensor) -> torch.Tensor:
            host_order = torch.cat([scores[m:], scores[:m]])
            q = self._sinkhorn(host_order, loss.sinkhorn_iterations, loss.world_size, loss.epsilon)
            return torch.cat([q[-m:], q[:-m]])

        return run

    def embed(self, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        """The host's multi-resolution forward: one backbone batch per group, the neck over all."""
        neck_out = self.model.neck([self.model.backbone(x) for x in groups])
        return neck_out[0] if isinstance(neck_out, (list, tuple)) else neck_out

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(emb, self.prototypes.to(emb.dtype))


def swav_pair_losses(model: nn.Module, selector: HardViewSelector, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Two-view SwAV ``[P, M]``: one joint forward per unordered pair; ordered pairs (a, b) take
    crop 1 = a (queue slot 0) and crop 2 = b (slot 1)."""
    sc = SwAVScorer(model)
    queue = sc.queue_scores()
    cache: dict[tuple[int, int], torch.Tensor] = {}
    out = []
    for a, b in selector.pairs.tolist():
        key = (min(a, b), max(a, b))
        if key not in cache:
            x = [resize_views(views[k], selector.resolution_scale) for k in key]
            m = x[0].shape[0]
            with selector._autocast(x[0].device):
                emb = sc.embed([torch.cat(x)]).float()
            cache[key] = sc.logits(emb).reshape(2, m, -1)  # [2, M, K]: views key[0], key[1]
        logits = cache[key] if a < b else cache[key].flip(0)  # row 0 = crop 1 = a
        codes = swav_codes(logits, sc.sinkhorn(logits.shape[1]), queue, queue_slot=[0, 1])
        ce = swav_cross_entropy(codes, logits, sc.temperature)  # [2, 2, M]
        out.append(0.5 * (ce[0, 1] + ce[1, 0]))
    return torch.stack(out)


def swav_multicrop_ce(
    model: nn.Module, selector: HardViewSelector, glob: Sequence[torch.Tensor], loc: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Multi-crop SwAV ``ce: [G, G+L, M]`` for :class:`CombinationSpace` ('cross': even global
    candidates are crop 1 / queue slot 0, odd ones crop 2 / slot 1)."""
    sc = SwAVScorer(model)
    g = [resize_views(v, selector.resolution_scale) for v in glob]
    lo = [resize_views(v, selector.resolution_scale) for v in loc]
    m, n_local = g[0].shape[0], len(lo) // 2
    parts = len(g) // 2
    if len(g) % 2 == 0 and n_local and len(lo) == parts * n_local:
        # batches of the host's own size: forward k holds globals (2k, 2k+1) and locals
        # k·n..(k+1)·n, as loss() forwards one combination (that combination is then exact)
        groups = [(g[2 * k : 2 * k + 2], lo[k * n_local : (k + 1) * n_local]) for k in range(parts)]
    else:  # all global candidates as one batch, all local ones as another
        groups = [(g, lo)]
    logits_g, logits_l = [], []
    with selector._autocast(g[0].device):
        for gs, ls in groups:
            emb = sc.embed([torch.cat(gs)] + ([torch.cat(ls)] if ls else [])).float()
            out = sc.logits(emb).reshape(len(gs) + len(ls), m, -1)
            logits_g.append(out[: len(gs)])
            logits_l.append(out[len(gs) :])
    logits = torch.cat(logits_g + logits_l)  # [G+L, M, K]: globals in order, then locals in order
    codes = swav_codes(logits[: len(g)], sc.sinkhorn(m), sc.queue_scores())
    return swav_cross_entropy(codes, logits, sc.temperature)
