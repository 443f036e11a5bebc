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

Two concepts live in their own modules and are inherited: :mod:`.method_scorers` (each method's
selection forward and per-sample pair losses) and :mod:`.generator_steps` (the generator's hooks).

This module does not import solo-learn: the wrapper reads the method's attributes (``forward``,
``momentum_forward``, ``queue``, ``find_nn``, ``dino_loss_func``, ...), so it can be unit-tested
with a stand-in class.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Optional, Sequence

import torch

from hvs_plugins import (
    CombinationSpace,
    HardViewGenerator,
    HardViewSelector,
    HVSSchedule,
    check_candidate_views,
    gather_views,
    reason_from_error,
    selection_stats,
    unscorable_reason,
    warn_fallbacks,
)
from hvs_plugins.devices import to_device
from hvs_plugins.layer_scoring import cosine_distance_pair_losses, layer_forward, resolve_layer

from .config import MULTICROP_METHODS, HVSConfig, check_method, parse_hvs_config
from .generator import CHECKPOINT_KEY as GENERATOR_KEY
from .generator import to_cpu
from .generator_steps import GeneratorSteps, _classifier_losses
from .layout import CandidateLayout, candidate_layout
from .method_scorers import MethodScorers, _gather_all  # noqa: F401 (_gather_all: tests, re-exported)
from .target_reuse import MomentumRecorder, check_momentum_networks, check_reuse_config, reusing_momentum_forward


class HVSMethodMixin(GeneratorSteps, MethodScorers):
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
