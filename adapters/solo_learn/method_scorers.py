"""Per-sample pair losses of every solo-learn method: the scoring part of the method wrapper
(:class:`~.method.HVSMethodMixin` inherits it).

For a method, ``_hvs_forward_fn`` gives the forward that the selection runs on every candidate
(``x: [B, C, H, W]`` → the outputs its loss reads, e.g. SimSiam's ``(p, z)``, BYOL's online
prediction and momentum projection), and ``hvs_pair_losses`` turns the stacked outputs ``[N, M, ...]``
into per-sample pair losses ``[P, M]`` with the method's own loss (its temperature, queue, nearest
neighbours, k-means assignments, Sinkhorn, DINO centre), read only. Multi-crop (DINO, SwAV):
``_hvs_multicrop_ce`` gives the cross-entropies ``[G, G+L, M]`` of every global/crop combination.

It reads the method's attributes; it imports no solo-learn.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from hvs_plugins import (
    dino_cross_entropy,
    dino_pair_losses,
    invariance_proxy_pair_losses,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
    swav_codes,
    swav_cross_entropy,
    swav_pair_losses,
)

from .scoring import (
    byol_pair_losses,
    deepclusterv2_pair_losses,
    mocov2plus_pair_losses,
    mocov3_pair_losses,
    nnclr_pair_losses,
    ressl_pair_losses,
    supcon_pair_losses,
)
from .target_reuse import MomentumRecorder


def _gather_all(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x: [N, M, D]`` → every rank's ``[N, M·W, D]`` in rank order and this rank's offset
    (solo-learn gathers negatives over ranks). Identity without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1), dist.get_rank() * x.shape[1]


class MethodScorers:
    """The method's forwards and per-sample losses for the selection."""

    def _hvs_forward_fn(self) -> Callable[[torch.Tensor], Any]:
        m = self.hvs_method_name
        if m in ("simsiam", "nnsiam", "nnclr"):
            return lambda x: (lambda o: (o["p"], o["z"]))(self(x))
        if m in ("byol", "nnbyol"):
            return lambda x: (self(x)["p"], self.momentum_forward(x)["z"])
        if m == "ressl":  # online query, momentum key (both normalised by the method)
            return lambda x: (self(x)["z"], self.momentum_forward(x)["z"])
        if m == "deepclusterv2":  # p: [heads, B, C] -> [B, heads, C]
            return lambda x: self(x)["p"].transpose(0, 1)
        if m == "swav":  # prototype scores of the normalised projection
            return lambda x: self(x)["p"]
        if m == "mocov2plus":
            return lambda x: (self(x)["z"], self.momentum_forward(x)["z"])
        if m == "mocov3":
            return lambda x: (self(x)["q"], self.momentum_forward(x)["k"])
        if m == "dino":  # student, teacher
            return lambda x: (self(x)["z"], self.momentum_forward(x)["z"])
        return lambda x: self(x)["z"]  # simclr, supcon, proxy methods

    def _hvs_reuse_forward_fn(self, recorder: MomentumRecorder) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        """BYOL / MoCo v3 with hvs.reuse_target: ``x: [B, C, H, W]`` → (online prediction, momentum
        target, *every momentum_forward output) — the first two are what the scorers read."""
        key_online, key_target = {"byol": ("p", "z"), "mocov3": ("q", "k")}[self.hvs_method_name]

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            online = self(x)[key_online]
            momentum = recorder(self.momentum_forward, x)
            return (online, momentum[recorder.keys.index(key_target)]) + momentum

        return forward

    def _hvs_nn(self, z: torch.Tensor) -> torch.Tensor:
        n, mm, d = z.shape
        _, nn = self.find_nn(z.reshape(n * mm, d).to(self.queue.dtype))  # read-only queue lookup
        return nn.reshape(n, mm, -1).float()

    def hvs_pair_losses(self, outputs: Sequence[torch.Tensor], pairs: torch.Tensor) -> torch.Tensor:
        """Per-sample pair losses ``[P, M]`` from the stacked per-view outputs."""
        m = self.hvs_method_name
        if self.hvs_mode == "proxy":
            return invariance_proxy_pair_losses(outputs[0], pairs)  # PROXY, labelled in the logs
        if m == "simsiam":
            p, z = outputs
            return negative_cosine_pair_losses(p, z, pairs)
        if m == "nnsiam":
            p, z = outputs
            return negative_cosine_pair_losses(p, self._hvs_nn(z), pairs)
        if m == "byol":
            return byol_pair_losses(outputs[0], outputs[1], pairs)
        if m == "nnbyol":  # the momentum projections' nearest neighbours in the read-only queue
            return byol_pair_losses(outputs[0], self._hvs_nn(outputs[1]), pairs)
        if m == "ressl":
            q, k = outputs
            return ressl_pair_losses(q, k, pairs, self.queue, float(self.temperature_q), float(self.temperature_k))
        if m == "supcon":
            (z,) = outputs
            labels = self._hvs_targets
            if labels is None:
                raise ValueError("SupCon scores need the batch's labels: call training_step, or hvs_select(X, targets=y)")
            labels = labels.to(z.device)
            zall, offset = _gather_all(z)
            lall, _ = _gather_all(labels.view(1, -1, 1))
            return supcon_pair_losses(z, labels, pairs, float(self.temperature), zall, lall.view(-1), offset)
        if m == "deepclusterv2":
            idx = self._hvs_indexes.to(self.assignments.device)
            return deepclusterv2_pair_losses(outputs[0], self.assignments[:, idx], pairs, float(self.temperature))
        if m == "swav":
            return self._hvs_swav_pair_losses(outputs[0], pairs)
        if m == "simclr":
            (z,) = outputs
            zall, offset = _gather_all(z)
            return ntxent_pair_losses(z, pairs, float(self.temperature), all_embeddings=zall, offset=offset)
        if m == "mocov2plus":
            q, k = outputs
            return mocov2plus_pair_losses(q, k, pairs, self.queue.detach(), float(self.temperature))
        if m == "mocov3":
            q, k = outputs
            kall, offset = _gather_all(k)
            return mocov3_pair_losses(q, k, pairs, float(self.temperature), kall, offset)
        if m == "nnclr":
            p, z = outputs
            pall, offset = _gather_all(p)
            return nnclr_pair_losses(self._hvs_nn(z), p, pairs, float(self.temperature), pall, offset)
        if m == "dino":
            student, teacher = outputs
            ce = dino_cross_entropy(teacher, student, *self._hvs_dino_temps())
            return dino_pair_losses(ce, pairs)
        raise ValueError(f"no HVS scorer for method {m!r}")  # pragma: no cover - check_method guards

    def _hvs_have_assignments(self) -> bool:
        """DeepClusterV2: whether any sample of the batch has a k-means assignment (none before the
        end of the first epoch: solo-learn fills them with -1)."""
        a = getattr(self, "assignments", None)
        if self._hvs_indexes is None:
            raise ValueError("DeepClusterV2 scores need the batch's indexes: call training_step, or hvs_select(X, indexes=i)")
        return a is not None and bool((a[:, self._hvs_indexes.to(a.device)] >= 0).any())

    # ------------------------------------------------------------------- SwAV
    def _hvs_swav_queue(self) -> Optional[list[torch.Tensor]]:
        """The queue's prototype scores per crop slot ``[Q, K]`` when the method uses it this epoch
        (as its ``get_assignments``), else None. Read only."""
        if int(getattr(self, "queue_size", 0)) > 0 and int(self.current_epoch) >= int(self.epoch_queue_starts):
            return [self.prototypes(self.queue[i]).float() for i in range(2)]
        return None

    def _hvs_swav_sinkhorn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        sk = getattr(self, "sk", None)
        if sk is None:
            raise RuntimeError(
                "SwAV's Sinkhorn-Knopp (self.sk) is made in on_train_start: select inside a Trainer run, or call on_train_start() first"
            )
        return sk

    def _hvs_swav_pair_losses(self, scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Two-view SwAV, ``scores: [N, M, K]``: ``½·(CE(q¹_a, p_b) + CE(q²_b, p_a))``, codes q¹/q²
        from the host's Sinkhorn over each candidate's batch with queue half 1 / 2 (crop 1 / crop 2;
        two pipelines: a candidate's pipeline is its crop)."""
        queue, sk, t = self._hvs_swav_queue(), self._hvs_swav_sinkhorn(), float(self.temperature)
        n = scores.shape[0]
        groups = self.hvs_layout.groups
        if queue is None or groups is not None:
            slot = None if queue is None else [0 if g in groups[0] else 1 for g in range(n)]
            ce = swav_cross_entropy(swav_codes(scores, sk, queue, slot), scores, t)
            return swav_pair_losses(ce, pairs)
        ce1 = swav_cross_entropy(swav_codes(scores, sk, queue, [0] * n), scores, t)
        ce2 = swav_cross_entropy(swav_codes(scores, sk, queue, [1] * n), scores, t)
        a, b = pairs[:, 0].to(ce1.device), pairs[:, 1].to(ce1.device)
        return 0.5 * (ce1[a, b] + ce2[b, a])

    def _hvs_dino_temps(self) -> tuple[torch.Tensor, float, float]:
        loss = self.dino_loss_func
        return loss.center, float(loss.teacher_temp_schedule[loss.epoch]), float(loss.student_temp)

    def _hvs_multicrop_ce(self, glob: list[torch.Tensor], small: list[torch.Tensor]) -> torch.Tensor:
        """``ce: [G, G+L, M]`` for :class:`CombinationSpace` (call inside the scoring context):
        DINO's teacher/student cross-entropy, or SwAV's code/prediction cross-entropy (codes of the
        interleaved globals: even candidates crop 1, odd crop 2)."""
        sel, swav = self.hvs_selector, self.hvs_method_name == "swav"
        outs = sel.forward_views(self._hvs_forward_fn(), glob)  # SwAV: scores; DINO: student, teacher
        student = outs[0]
        if small:
            local = sel.forward_views(lambda x: self.multicrop_forward(x)["p" if swav else "z"], small)[0]
            student = torch.cat([student, local])
        if swav:
            codes = swav_codes(outs[0], self._hvs_swav_sinkhorn(), self._hvs_swav_queue())
            return swav_cross_entropy(codes, student, float(self.temperature))
        return dino_cross_entropy(outs[1], student, *self._hvs_dino_temps())
