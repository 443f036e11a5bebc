"""The method wrapper: a solo-learn method class → its HVS version.

``make_hvs_method(cls)`` returns a subclass whose ``training_step`` receives the candidate crops
(``n_views`` large candidates, then the small candidates), scores every pair (DINO multi-crop:
every combination, capped or exact) with the method's own modules under the core's
side-effect guard, and calls the method's own ``training_step`` with the crops it expects (2 large
crops, plus the small crops). Everything else (online linear probe, kNN, momentum updates in
``on_train_batch_end``, schedulers, logging, checkpoints) is the method's own. A batch that cannot
be scored (1 sample under train-mode BatchNorm) trains on the plain pair, counted
(``hvs/unscorable_batches``). Checkpoints hold plain data only (see :func:`drop_scheduler_functions`).

Learned hard views (``hvs.generator``, design §7): after the selection (or, with
``hvs.enabled: false``, on the method's own crops) the two large crops go through the core
:class:`hvs_plugins.HardViewGenerator`, normalised as solo-learn's augmentation pipelines normalise
them; small crops (DINO / SwAV multi-crop) pass unchanged. The generator is trained against the
method's loss through gradient reversal and its own Adam, stepped in ``on_train_batch_end`` (after
Lightning's ``optimizer.step()``; with gradient accumulation only on the batches where the method's
optimiser stepped, on every rank alike). It is not a submodule: the method's ``parameters()``,
optimiser and ``state_dict()`` are solo-learn's own; its state is a separate checkpoint entry
(``hvs_generator``).

This module does not import solo-learn: the wrapper reads the method's attributes (``forward``,
``momentum_forward``, ``queue``, ``find_nn``, ``dino_loss_func``, ...), so it can be unit-tested
with a stand-in class.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from hvs_plugins import (
    CombinationSpace,
    HardViewGenerator,
    HardViewSelector,
    HVSSchedule,
    check_candidate_views,
    dino_cross_entropy,
    dino_pair_losses,
    gather_views,
    invariance_proxy_pair_losses,
    make_pairs,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
    reason_from_error,
    selection_stats,
    swav_codes,
    swav_cross_entropy,
    swav_pair_losses,
    unscorable_reason,
    warn_fallbacks,
)
from hvs_plugins.devices import to_device
from hvs_plugins.layer_scoring import cosine_distance_pair_losses, layer_forward, resolve_layer

from .config import MULTICROP_METHODS, HVSConfig, check_generator_method, check_method, parse_hvs_config
from .generator import CHECKPOINT_KEY as GENERATOR_KEY
from .generator import build_generator, large_crop_normalisation, to_cpu
from .layout import CandidateLayout, candidate_layout
from .scoring import (
    byol_pair_losses,
    deepclusterv2_pair_losses,
    mocov2plus_pair_losses,
    mocov3_pair_losses,
    nnclr_pair_losses,
    ressl_pair_losses,
    supcon_pair_losses,
)
from .target_reuse import MomentumRecorder, check_momentum_networks, check_reuse_config, reusing_momentum_forward


def _gather_all(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x: [N, M, D]`` → every rank's ``[N, M·W, D]`` in rank order and this rank's offset
    (solo-learn gathers negatives over ranks). Identity without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=1), dist.get_rank() * x.shape[1]


# methods whose exact two-view scorer measures hvs_gen/hardness_gap (DINO: the two global crops' loss)
GAP_METHODS = ("simsiam", "simclr", "byol", "mocov2plus", "mocov3", "dino", "nnclr", "nnsiam", "nnbyol", "ressl", "supcon")


class HVSMethodMixin:
    """Mixed in before a solo-learn method class by :func:`make_hvs_method`.

    ``hvs_selector`` / ``hvs_schedule``: the selection (None with ``hvs.enabled: false``);
    ``hvs_generator``: the core :class:`HardViewGenerator` of ``hvs.generator`` (None without one) —
    an attribute, not a submodule. Its hooks: ``on_train_epoch_start`` (``set_epoch``),
    ``training_step`` (generation, ``hvs_gen/eps``, ``delta``, ``realised``, ``hardness_gap``),
    ``on_train_batch_end`` (:meth:`hvs_generator_step`: its Adam step after the method's,
    ``hvs_gen/loss``, ``steps``, ``skipped``), ``on_save_checkpoint`` / ``on_load_checkpoint``
    (``hvs_generator``: weights, noise-stream positions, Adam state, schedule position, step count).
    """

    hvs_method_name: str = ""

    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self._hvs_setup(cfg)

    # ------------------------------------------------------------------ setup
    def _hvs_setup(self, cfg: Any) -> None:
        method = str(cfg.method)
        hvs = parse_hvs_config(cfg.hvs)
        self.hvs_config: HVSConfig = hvs
        self.hvs_method_name = method
        self.hvs_last: dict = {}
        self._hvs_target_cache: Optional[list] = None
        self.hvs_space: Optional[CombinationSpace] = None
        self._hvs_global_order: Optional[torch.Tensor] = None
        self.hvs_generator: Optional[HardViewGenerator] = None
        self._hvs_gen_seen_step: Optional[int] = None
        self._hvs_gen_calls = 0
        self._hvs_gen_method_loss: Optional[torch.Tensor] = None
        self._hvs_gen_gap_selector: Optional[HardViewSelector] = None
        if hvs.selection:
            self._hvs_setup_selection(cfg, method, hvs)
        else:
            self._hvs_setup_plain(cfg, method)
        if hvs.generator is not None:
            self._hvs_setup_generator(cfg, method, hvs)

    def _hvs_setup_plain(self, cfg: Any, method: str) -> None:
        """No selection (``hvs.enabled: false``): the method's own crops, the generator (if any) on the 2 large ones."""
        self.hvs_mode = "off"
        self.hvs_selector: Optional[HardViewSelector] = None
        self.hvs_schedule: Optional[HVSSchedule] = None
        if self.hvs_config.generator is None:  # nothing to do: the method's own training step, unchanged
            self.hvs_layout = None  # type: ignore[assignment]
            return
        if getattr(self, "num_large_crops", 2) != 2:
            raise ValueError(
                f"the method was built with num_large_crops={self.num_large_crops}; hvs.generator makes the pair of "
                "large crops harder: set the large pipelines' num_crops to 2 (one pipeline) or 1 and 1 (two)"
            )
        try:
            self.hvs_layout: CandidateLayout = candidate_layout(cfg.augmentations, 2, small_candidates=False)
        except ValueError as exc:
            raise ValueError(
                f"hvs.generator makes the pair of large crops harder, but {exc.args[0].split(':')[0]}: set the large "
                "pipelines' num_crops to 2 (one pipeline) or 1 and 1 (two)"
            ) from None

    def _hvs_setup_generator(self, cfg: Any, method: str, hvs: HVSConfig) -> None:
        """``hvs.generator``: the core generator, normalised as solo-learn's large-crop pipelines."""
        check_generator_method(method)
        assert hvs.generator is not None
        mean, std = large_crop_normalisation(cfg)
        self.hvs_generator = build_generator(hvs.generator, mean, std)
        self.hvs_generator_gap_interval = int(hvs.generator.get("gap_interval", 0))
        if self.hvs_generator_gap_interval:
            if method not in GAP_METHODS:
                raise ValueError(
                    f"hvs.generator.gap_interval: the hardness gap is measured with the exact two-view scorer, which "
                    f"exists for {', '.join(GAP_METHODS)}, not {method!r}: set gap_interval: 0"
                )
            ordered = method in ("mocov2plus", "ressl")  # asymmetric losses: crop 1 -> crop 2
            self._hvs_gen_gap_selector = HardViewSelector(2, ordered=ordered, seed=0)
            self._hvs_gen_gap_row = make_pairs(2, None, ordered).tolist().index([0, 1])

    def _hvs_setup_selection(self, cfg: Any, method: str, hvs: HVSConfig) -> None:
        self.hvs_mode = check_method(method, hvs)
        if getattr(self, "num_large_crops", 2) != 2:
            raise ValueError(
                f"the method was built with num_large_crops={self.num_large_crops}; with HVS it must "
                "see 2 (pass the config through hvs_parse_cfg, which resets cfg.data.num_large_crops to 2)"
            )
        layout = candidate_layout(cfg.augmentations, hvs.n_views, small_candidates=(method in MULTICROP_METHODS))
        if layout.n_small != getattr(self, "num_small_crops", layout.n_small):
            raise ValueError(
                f"the method expects {self.num_small_crops} small crops but the data pipeline gives "
                f"{layout.n_small_candidates} small candidates: build the config with hvs_parse_cfg"
            )
        if layout.n_small and method not in MULTICROP_METHODS:
            raise ValueError(
                f"HVS with small crops (multi-crop) is supported for DINO and SwAV only, not {method!r}: "
                "set the small pipelines' num_crops to 0 or remove the hvs block"
            )
        # SwAV with a queue: crop 1 and crop 2 meet different queue halves (slots), like MoCo v2+
        swav_slots = method == "swav" and int(getattr(self, "queue_size", 0)) > 0
        self.hvs_layout: CandidateLayout = layout
        self.hvs_selector = HardViewSelector(
            n_views=hvs.n_views,
            groups=layout.groups,
            # crop 1 and crop 2 meet different queue halves (MoCo v2+, SwAV) or roles (ReSSL: query
            # of crop 1, key of crop 2); two pipelines already fix which candidate is crop 1
            ordered=(method == "mocov2plus")
            or (method in ("ressl", "swav") and layout.groups is None and (method == "ressl" or swav_slots)),
            resolution_scale=hvs.resolution_scale,
            chunk_size=hvs.chunk_size,
            joint_views=hvs.joint_views,
            autocast_dtype=hvs.autocast_dtype,
            seed=hvs.seed,
        )
        self.hvs_schedule = HVSSchedule(every=hvs.every, probability=hvs.probability, start_epoch=hvs.start_epoch, seed=hvs.seed)
        if method in MULTICROP_METHODS and layout.n_small:
            pairing = hvs.global_pairing or ("cross" if layout.groups or swav_slots else "any")
            if pairing == "any" and swav_slots:
                raise ValueError(
                    "hvs.global_pairing 'any' cannot be scored exactly for SwAV with a queue (a candidate's "
                    "codes depend on which crop's queue half it meets); use 'cross' (the default: even "
                    "candidates are crop 1, odd ones crop 2) or method_kwargs.queue_size: 0"
                )
            if pairing == "cross" and not layout.groups and method == "swav":
                pass  # one pipeline: its i.i.d. candidates alternate crop 1 / crop 2 as they come
            elif pairing == "cross":
                if not layout.groups:
                    raise ValueError("hvs.global_pairing 'cross' needs two large (global) pipelines; with one use 'any'")
                g0, g1 = layout.groups
                if len(g0) != len(g1):
                    raise ValueError(f"the two global pipelines give {len(g0)} and {len(g1)} candidates")
                # CombinationSpace's 'cross' expects alternating pipelines (even = pipeline 1)
                self._hvs_global_order = torch.tensor([i for ab in zip(g0, g1) for i in ab])
            self.hvs_space = CombinationSpace(
                n_global_candidates=hvs.n_views,
                n_local_candidates=layout.n_small_candidates,
                n_local=layout.n_small,
                global_pairing=pairing,
            )
            if method == "dino":  # solo-learn's DINO ignores small crops: head them, count them
                self.dino_loss_func.num_large_crops = 2 + layout.n_small
        if hvs.score_layer is not None:  # APPROXIMATE layer scoring (two-view methods)
            if self.hvs_space is not None:
                raise ValueError(
                    f"hvs.score_layer is for two-view selection, not {method!r} multi-crop "
                    "combinations: remove score_layer (or the small crops)"
                )
            resolve_layer(self, hvs.score_layer)  # unknown name: an error listing the valid ones, now
            self.hvs_mode = "approximate"
        if hvs.reuse_target:  # refused at setup wherever reuse would not be exact
            check_reuse_config(method, hvs)
            check_momentum_networks(self)

    # --------------------------------------------------------------- DINO crops
    def multicrop_forward(self, X: torch.Tensor) -> dict:
        out = super().multicrop_forward(X)
        if self.hvs_space is not None and "z" not in out:
            out["z"] = self.head(out["feats"])
        return out

    # ----------------------------------------------------------- the training step
    def training_step(self, batch: Sequence[Any], batch_idx: int) -> Any:
        indexes, X, targets = batch
        X = [X] if isinstance(X, torch.Tensor) else list(X)
        if self.hvs_selector is not None:
            crops = self.hvs_select(X, indexes=indexes, targets=targets)
        else:
            crops = self._hvs_plain_crops(X, indexes, targets)
        if self.hvs_generator is not None:
            crops = self._hvs_generate(crops)
        cache, self._hvs_target_cache = self._hvs_target_cache, None
        if self.hvs_generator is not None and self.hvs_generator.enabled:
            with _classifier_losses(self) as class_losses:  # hvs_gen/loss: the method's own loss
                out = super().training_step([indexes, crops, targets], batch_idx)
            total = out.get("loss") if isinstance(out, Mapping) else out
            if isinstance(total, torch.Tensor):
                self._hvs_gen_method_loss = total.detach() - sum(v.detach() for v in class_losses)
            return out
        if not cache:
            return super().training_step([indexes, crops, targets], batch_idx)
        # hvs.reuse_target: the momentum outputs of the two selected views come from the selection
        with reusing_momentum_forward(self, cache) as hits:
            out = super().training_step([indexes, crops, targets], batch_idx)
        self.hvs_last["target_reused"] = len(hits)
        return out

    def _hvs_plain_crops(self, X: list, indexes: Any, targets: Any) -> list:
        """No selection: the method's own crops, checked."""
        self._hvs_indexes, self._hvs_targets = indexes, targets
        self.hvs_last = {}
        if self.hvs_layout is not None and len(X) != self.hvs_layout.n_crops_out:
            raise ValueError(
                f"the method expected {self.hvs_layout.n_crops_out} crops per batch (2 large + "
                f"{self.hvs_layout.n_small} small), got {len(X)}: with hvs.enabled: false the data pipeline is "
                "solo-learn's own; build the config with hvs_parse_cfg (the launcher or the Hydra callback)"
            )
        return X

    # ------------------------------------------------------- learned hard views (hvs.generator)
    def _hvs_generate(self, crops: list) -> list:
        """The two large crops -> the generator's views (gradient reversal into the generator); small crops unchanged."""
        gen = self.hvs_generator
        assert gen is not None
        trainer = getattr(self, "_trainer", None)
        self._hvs_gen_seen_step = int(trainer.global_step) if trainer is not None else None
        if not gen.enabled:
            return crops
        if not getattr(self, "_hvs_gen_announced", False):
            self._hvs_gen_announced = True
            sched = gen.schedule
            eps = (
                f"eps {sched.eps_end:g}"
                if sched.ramp_epochs == 0 or sched.eps_start == sched.eps_end
                else f"eps {sched.eps_start:g} -> {sched.eps_end:g} over {sched.ramp_epochs:g} epochs"
            )
            small = f" (the {len(crops) - 2} small crops pass unchanged)" if len(crops) > 2 else ""
            print(
                f"[hvs] first generation by {type(self).__name__}: the 2 large crops of {len(crops)}{small}, {eps} "
                f"([0, 1] pixel units), {'one shared generator' if gen.shared else 'a pair of generators'}"
                + (" after the selection" if self.hvs_selector is not None else " (no selection)")
            )
        view_a, view_b = gen(crops[0], crops[1])
        self._hvs_gen_calls += 1
        stats: dict = {"hvs_gen/eps": float(gen.eps)}
        deltas = [d for n in gen.networks if isinstance(d := n.last_delta, torch.Tensor)]
        real = [r for n in gen.networks if isinstance(r := n.last_realised, torch.Tensor)]
        if deltas:
            stats["hvs_gen/delta"] = torch.cat(deltas).mean()
        if real:
            stats["hvs_gen/realised"] = torch.cat(real).mean()
        if self._hvs_gen_gap_selector is not None:
            step = self._hvs_gen_seen_step if self._hvs_gen_seen_step is not None else self._hvs_gen_calls - 1
            if step % self.hvs_generator_gap_interval == 0:  # the same steps on every rank (collectives inside)
                gap = self.hvs_generator_gap([crops[0], crops[1]], [view_a.detach(), view_b.detach()])
                if gap is not None:
                    stats["hvs_gen/hardness_gap"] = gap
        self.hvs_last["generator"] = stats
        self._hvs_gen_log(stats)
        return [view_a, view_b] + list(crops[2:])

    def hvs_generator_gap(self, inputs: Sequence[torch.Tensor], generated: Sequence[torch.Tensor]) -> Optional[float]:
        """The method's loss on the generated pair minus its loss on the input pair (mean over the batch), both
        from the exact two-view scorer at the current weights: no gradients, parameters, BatchNorm statistics,
        queues, momentum networks and RNG left as they were (DINO: the two global crops' loss). None where it
        cannot be scored (a 1-sample batch under train-mode BatchNorm)."""
        sel = self._hvs_gen_gap_selector
        if sel is None:
            raise ValueError("set hvs.generator.gap_interval > 0 to measure the hardness gap")
        if unscorable_reason(list(inputs), [self]) is not None:
            return None
        row = self._hvs_gen_gap_row
        with sel.scoring(self.hvs_scoring_modules()):
            before = self.hvs_pair_losses(sel.forward_views(self._hvs_forward_fn(), list(inputs), 2), sel.pairs)[row]
            after = self.hvs_pair_losses(sel.forward_views(self._hvs_forward_fn(), list(generated), 2), sel.pairs)[row]
        self.hvs_last["generator_gap_losses"] = {"input": float(before.mean()), "generated": float(after.mean())}
        return float(after.mean() - before.mean())

    def hvs_generator_step(self, loss: Optional[torch.Tensor] = None) -> None:
        """The generator's update (its own Adam; under DDP its gradients averaged over the ranks first): call
        after the method's optimiser step, on every rank. ``on_train_batch_end`` does it in a Trainer run;
        call it yourself in a hand-written loop. ``loss``: recorded as ``hvs_gen/loss`` (``-reverse_scale ·``
        loss); default: the method's own loss of the last ``training_step`` (the step's loss minus the online
        classifiers' cross-entropies, which give the views no gradient)."""
        gen = self.hvs_generator
        if gen is None:
            return
        if loss is None:
            loss = self._hvs_gen_method_loss
        self._hvs_gen_method_loss = None
        gen.step(loss.detach() if isinstance(loss, torch.Tensor) else None)
        if gen.enabled:
            stats: dict = {"hvs_gen/steps": float(gen.steps)}
            if gen.last_loss is not None:
                stats["hvs_gen/loss"] = gen.last_loss
            if gen.skipped:
                stats["hvs_gen/skipped"] = float(gen.skipped)
            self._hvs_gen_log(stats)

    def _hvs_gen_log(self, stats: dict) -> None:
        if getattr(self, "_trainer", None) is None or not self.hvs_config.log_stats:
            return
        self.log_dict(stats, on_step=True, on_epoch=False, sync_dist=False)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()  # type: ignore[misc]
        if self.hvs_generator is not None:
            self.hvs_generator.set_epoch(int(self.current_epoch))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)  # type: ignore[misc]  # e.g. momentum updates
        if self.hvs_generator is None:
            return
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and self._hvs_gen_seen_step is not None and int(trainer.global_step) == self._hvs_gen_seen_step:
            return  # gradient accumulation: the method's optimiser did not step; the generator accumulates too
        loss = self._hvs_gen_method_loss  # the method's own loss of this step (without the online classifiers')
        if loss is None:
            found = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            loss = found if isinstance(found, torch.Tensor) else None
        self.hvs_generator_step(loss)

    def hvs_scoring_modules(self) -> list[torch.nn.Module]:
        """Networks the selection forward touches (the guard saves/restores their buffers). The
        method's own top-level buffers (queues) are only read by the scorers, never written."""
        return list(self.children())

    def hvs_select(
        self, X: Sequence[torch.Tensor], indexes: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None
    ) -> list[torch.Tensor]:
        """Candidate crops → the crops the method's ``training_step`` expects. ``indexes: [M]`` /
        ``targets: [M]``: the batch's sample indexes and labels (DeepClusterV2 reads its k-means
        assignments by index, SupCon's positives are the samples of the same label)."""
        layout = self.hvs_layout
        if self.hvs_selector is None:
            raise ValueError("hvs.enabled is false: this method does not select (training_step passes its crops on)")
        self._hvs_indexes, self._hvs_targets = indexes, targets
        self._hvs_target_cache = None
        if len(X) != layout.n_crops_in:
            raise ValueError(
                f"HVS expected {layout.n_crops_in} crops per batch ({layout.n_views} large candidates"
                f" + {layout.n_small_candidates} small), got {len(X)}: the data pipeline does not "
                "produce the candidates; run through hvs_plugins.adapters.solo_learn.launch"
            )
        # empty batch, non-tensor crops: errors naming the fix (1 sample under BatchNorm: see below)
        large = check_candidate_views(list(X[: layout.n_views]), layout.n_views, self.hvs_scoring_modules())
        small = check_candidate_views(list(X[layout.n_views :]), modules=self.hvs_scoring_modules()) if layout.n_small_candidates else []
        if not getattr(self, "_hvs_announced", False):
            self._hvs_announced = True
            print(
                f"[hvs] first selection by {type(self).__name__}: {layout.n_views} large candidates + "
                f"{layout.n_small_candidates} small -> {layout.n_crops_out} crops ({self.hvs_mode} scores)"
            )
        step, epoch = int(getattr(self, "global_step", 0)), int(getattr(self, "current_epoch", 0))
        if not self.hvs_schedule.active(step, epoch):
            return self._hvs_plain(large, small)
        # a batch HVS cannot score (1 sample under train-mode BatchNorm, ...) trains on a plain pair, counted
        reason = unscorable_reason(large, [self])  # [self]: BatchNorm named from the method (backbone.bn1)
        if reason is None:
            try:
                return self._hvs_select_scored(large, small)
            except ValueError as exc:  # e.g. torch's 'Expected more than 1 value per channel' in the forward
                reason = reason_from_error(exc)
                if reason is None:
                    raise
        return self._hvs_unscorable(large, small, reason)

    def _hvs_select_scored(self, large: list[torch.Tensor], small: list[torch.Tensor]) -> list[torch.Tensor]:
        """A step with HVS: score the candidates, return the chosen crops."""
        layout = self.hvs_layout
        if self.hvs_space is not None:
            return self._hvs_select_multicrop(large, small)
        if self.hvs_method_name == "deepclusterv2" and not self._hvs_have_assignments():
            crops = self._hvs_plain(large, small)  # nothing to rank with: a plain (random) pair
            self.hvs_last["reason"] = "no k-means assignments yet (DeepClusterV2's first epoch)"
            return crops
        sel = self.hvs_selector
        with sel.scoring(self.hvs_scoring_modules()):
            if self.hvs_config.score_layer is not None:  # APPROXIMATE: activations after that module
                run = layer_forward(self, self, self.hvs_config.score_layer)
                losses = cosine_distance_pair_losses(sel.forward_views(run, large, layout.n_views)[0], sel.pairs)
            elif self.hvs_config.reuse_target:  # (online, target) as without reuse, then the momentum dict
                recorder = MomentumRecorder(self)
                outputs = sel.forward_views(self._hvs_reuse_forward_fn(recorder), large, layout.n_views)
                losses = self.hvs_pair_losses(outputs[:2], sel.pairs)
            else:
                outputs = sel.forward_views(self._hvs_forward_fn(), large, layout.n_views)
                losses = self.hvs_pair_losses(outputs, sel.pairs)
        selection = sel.choose(losses)
        warn_fallbacks(selection.fallback)
        view_a, view_b = selection.gather(large)
        self.hvs_last = {"selection": selection, "pair_losses": losses}
        if self.hvs_config.reuse_target:  # score_layer is refused with it at setup
            out_a, out_b = recorder.chosen(outputs[2:], selection.chosen)
            self._hvs_target_cache = [(view_a, out_a), (view_b, out_b)]
        if self.hvs_config.log_stats:
            self._hvs_log(selection_stats(selection).as_dict())
        return [view_a, view_b] + small

    def _hvs_unscorable(self, large: list[torch.Tensor], small: list[torch.Tensor], reason: str) -> list[torch.Tensor]:
        """A batch HVS cannot score: the plain pair of a step without HVS (first candidate of each
        slot; multi-crop: and the first small candidates), counted in ``hvs_selector.unscorable``
        (one ``HVSUnscorableWarning``), logged as ``hvs/unscorable_batches``."""
        self._hvs_target_cache = None
        unscorable = self.hvs_selector.unscorable
        unscorable.record(reason, stacklevel=4)
        crops = self._hvs_plain(large, small)
        self.hvs_last["unscorable"] = reason
        if self.hvs_config.log_stats:
            self._hvs_log({})  # hvs/unscorable_batches
        return crops

    def _hvs_plain(self, large: list[torch.Tensor], small: list[torch.Tensor]) -> list[torch.Tensor]:
        """A step without HVS (schedule): the first candidate of each slot, i.e. a random pair."""
        groups = self.hvs_layout.groups
        a, b = (groups[0][0], groups[1][0]) if groups else (0, 1)
        self.hvs_last = {"skipped": True}
        return [large[a], large[b]] + small[: self.hvs_layout.n_small]

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

    def _hvs_select_multicrop(self, large: list[torch.Tensor], small: list[torch.Tensor]) -> list[torch.Tensor]:
        sel, space = self.hvs_selector, self.hvs_space
        order = self._hvs_global_order
        glob = large if order is None else [large[i] for i in order.tolist()]
        with sel.scoring(self.hvs_scoring_modules()):
            ce = self._hvs_multicrop_ce(glob, small)
        if self.hvs_config.exact:
            choice = space.exact_search(ce, sel.generator)
        else:
            choice = space.search(ce, self.hvs_config.cap, sel.generator)
        warn_fallbacks(choice.fallback, "combination loss")
        g = choice.globals_ if order is None else to_device(order, choice.globals_.device)[choice.globals_]
        view_a, view_b = gather_views(large, g)
        locals_ = gather_views(small, choice.locals_) if small else []
        self.hvs_last = {"choice": choice, "ce": ce, "globals": g, "locals": choice.locals_}
        if self.hvs_config.log_stats:
            finite = torch.isfinite(choice.candidate_losses)
            selected = float(choice.losses.mean())
            compared = float(choice.candidate_losses[finite].mean()) if bool(finite.any()) else float("nan")
            self._hvs_log(
                {
                    "hvs/selected_loss": selected,
                    "hvs/pair_loss": compared,  # mean over the compared combinations (exact: best per global pair)
                    "hvs/hardness_gap": selected - compared,
                    "hvs/fallbacks": float(choice.fallback.sum()),
                    "hvs/combinations": float(choice.n_evaluated),
                }
            )
        return [view_a, view_b] + locals_

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

    def _hvs_log(self, stats: dict) -> None:
        if getattr(self, "_trainer", None) is None:
            return  # outside a Trainer (unit tests, manual calls)
        # batches trained on a plain pair because HVS could not score them
        stats = {**stats, "hvs/unscorable_batches": float(self.hvs_selector.unscorable.count)}
        if self.hvs_mode in ("proxy", "approximate"):  # labelled: not the method's own loss (every scalar)
            stats = {k.replace("hvs/", f"hvs_{self.hvs_mode}/", 1): v for k, v in stats.items()}
        self.log_dict(stats, on_step=True, on_epoch=False, sync_dist=False)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super_hook = getattr(super(), "on_save_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        if self.hvs_selector is not None and self.hvs_schedule is not None:
            checkpoint["hvs_selector"] = self.hvs_selector.state_dict()
            checkpoint["hvs_schedule"] = self.hvs_schedule.state_dict()
            checkpoint["hvs_unscorable"] = self.hvs_selector.unscorable.state_dict()
        if self.hvs_generator is not None:  # weights, noise positions, Adam, schedule position, steps
            checkpoint[GENERATOR_KEY] = to_cpu(self.hvs_generator.state_dict())
        drop_scheduler_functions(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a checkpoint saved without this wrapper and loaded with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1:
        # its stale get_lr partial would replace the new scheduler's (RecursionError in static_lr)
        drop_scheduler_functions(checkpoint)
        super_hook = getattr(super(), "on_load_checkpoint", None)
        if super_hook is not None:
            super_hook(checkpoint)
        if self.hvs_selector is not None and self.hvs_schedule is not None:
            if "hvs_selector" in checkpoint:
                self.hvs_selector.load_state_dict(checkpoint["hvs_selector"])
            if "hvs_schedule" in checkpoint:
                self.hvs_schedule.load_state_dict(checkpoint["hvs_schedule"])
            if "hvs_unscorable" in checkpoint:
                self.hvs_selector.unscorable.load_state_dict(checkpoint["hvs_unscorable"])
        if GENERATOR_KEY in checkpoint and self.hvs_generator is not None:
            self.hvs_generator.load_state_dict(checkpoint[GENERATOR_KEY])
        elif GENERATOR_KEY in checkpoint:
            warnings.warn(
                "the checkpoint holds a hard-view generator (hvs_generator) but the config has no "
                "hvs.generator: the generator is not restored",
                stacklevel=2,
            )
        elif self.hvs_generator is not None and "state_dict" in checkpoint:
            warnings.warn(
                "the checkpoint holds no hard-view generator (saved without hvs.generator): the generator starts from its initial weights",
                stacklevel=2,
            )


# what solo-learn's BaseMethod / BaseMomentumMethod log for their online classifiers (added to the step's loss)
_CLASSIFIER_LOSS_KEYS = ("train_class_loss", "train_momentum_class_loss")


@contextlib.contextmanager
def _classifier_losses(model: Any) -> Iterator[list[torch.Tensor]]:
    """For the body (one ``training_step``): the online classifiers' losses as solo-learn logs them
    (``log_dict`` forwarded unchanged). The step's loss minus them is the method's own loss: the
    classifiers see detached features, so they give the views (and the generator) no gradient."""
    found: list[torch.Tensor] = []
    real = model.log_dict
    had = "log_dict" in model.__dict__

    def log_dict(dictionary: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(dictionary, Mapping):
            found.extend(v for k, v in dictionary.items() if k in _CLASSIFIER_LOSS_KEYS and isinstance(v, torch.Tensor))
        return real(dictionary, *args, **kwargs)

    model.log_dict = log_dict  # instance attribute shadows the method for this step only
    try:
        yield found
    finally:
        if had:
            model.log_dict = real
        else:
            del model.log_dict


def drop_scheduler_functions(checkpoint: dict) -> list[str]:
    """Remove functions from the checkpoint's learning-rate scheduler states (in place); returns
    their keys.

    solo-learn's ``configure_optimizers`` replaces the scheduler's ``get_lr`` with
    ``functools.partial(static_lr, get_lr=<the scheduler's own get_lr>, ...)`` when a parameter group
    keeps a fixed learning rate (SimSiam's and NNSiam's predictor). torch's ``LRScheduler.state_dict``
    saves every instance attribute, so that partial lands in the checkpoint: under torch >= 2.6 the
    default ``torch.load(weights_only=True)`` of Lightning's resume and of ``main_linear.py`` refuses it
    ("Unsupported global: GLOBAL functools.partial"), and a full load restores a partial whose
    ``get_lr`` is the partial itself (``RecursionError`` in ``static_lr``). It is no state:
    ``configure_optimizers`` builds it again on every run, bound to the new scheduler; without it
    the checkpoint holds plain data and the resumed learning rates are the uninterrupted run's."""
    dropped = []
    for state in checkpoint.get("lr_schedulers", None) or []:
        if isinstance(state, dict):
            for key in [k for k, v in state.items() if callable(v)]:
                del state[key]
                dropped.append(key)
    return dropped


@lru_cache(maxsize=None)
def make_hvs_method(cls: type) -> type:
    """The HVS version of a solo-learn method class (cached: one subclass per class)."""
    if issubclass(cls, HVSMethodMixin):
        return cls
    return type(
        f"HVS{cls.__name__}",
        (HVSMethodMixin, cls),
        {
            "__module__": __name__,
            "__doc__": (
                f"{cls.__name__} with Hard View Selection (hvs_plugins): training_step receives the "
                "candidate crops and trains on the hardest pair per sample."
            ),
        },
    )


def __getattr__(name: str) -> type:
    """``HVS<Method>`` classes by name (pickling, e.g. Lightning's ddp_spawn): resolved from
    solo-learn's ``METHODS`` on first use."""
    if name.startswith("HVS") and len(name) > 3:
        try:
            from solo.methods import METHODS
        except ImportError:
            raise AttributeError(name) from None
        for cls in METHODS.values():
            if cls.__name__ == name[3:]:
                return make_hvs_method(cls)
    raise AttributeError(name)
