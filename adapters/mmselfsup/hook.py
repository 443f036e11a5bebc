"""``HardViewSelectionHook``: Hard View Selection for MMSelfSup 1.x and MMPretrain 1.x.

Config (two lines plus N views in the pipeline)::

    custom_imports = dict(imports=['hvs_plugins.adapters.mmselfsup'], allow_failed_imports=False)
    custom_hooks = [dict(type='HardViewSelectionHook', n_views=4)]
    # and in the train pipeline: dict(type='MultiView', num_views=4, transforms=[view_pipeline])
    # (two asymmetric pipelines, e.g. BYOL / MoCo v3: num_views=[2, 2])

Before every train step the hook scores all candidate pairs of the batch with the current model
(no gradients; parameters, BatchNorm running statistics, queues, momentum networks and the global
RNG are left untouched), picks per sample the pair with the highest loss and replaces
``data_batch['inputs']`` by that pair of raw views. The algorithm's own ``train_step`` then runs
on its usual 2 views: optimisation, EMA updates, queues, logging and checkpoints are unchanged.

Options beyond exact scoring: ``score_layer='backbone.layer1'`` (APPROXIMATE: cosine distance of an
earlier layer's activations, the network run only up to there; core ``hvs_plugins.layer_scoring``)
and, for BYOL / MoCo v3 with a per-sample momentum network, ``reuse_target=True`` (``loss()`` reuses
the selection's momentum outputs of the chosen views; ``target_reuse.py``).
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence, Union

import torch
from mmengine.hooks import Hook

from hvs_plugins import (
    DEFAULT_CAP,
    CombinationSpace,
    HardViewSelector,
    HVSSchedule,
    check_candidate_views,
    gather_views,
    selection_stats,
    warn_fallbacks,
)
from hvs_plugins.unscorable import reason_from_error, unscorable_reason

from .runner_config import find_multiviews, options_of, unknown_options_text, unwrap
from .scoring import PROXY, SUPPORTED, check_score_layer, check_supported, layer_pair_losses, score_pairs
from .swav import swav_loss_module, swav_multicrop_ce
from .target_reuse import TargetReuse, check_reuse_model, check_reuse_options

DATA_BATCH = Optional[Union[dict, tuple, list]]


def hook_options() -> list[str]:
    """The option names ``HardViewSelectionHook`` accepts."""
    return options_of(HardViewSelectionHook)


def unknown_options_message(unknown) -> str:
    return unknown_options_text("HardViewSelectionHook", hook_options(), unknown)


class HardViewSelectionHook(Hook):
    """Hard View Selection (Ferreira et al., 2023) as an mmengine hook.

    Args:
        n_views: candidate views per image (the paper: 4); must equal the pipeline's
            ``MultiView`` ``num_views`` (its sum for two pipelines).
        resolution_scale: select on downscaled copies (e.g. 0.5); training uses the full views.
        chunk_size: samples per selection forward (memory cap; BatchNorm then sees chunks).
        joint_views: one forward of all N views (faster; BatchNorm sees N·B views; not exact).
        autocast_dtype: e.g. ``'bfloat16'`` for the selection forward only.
        interval: select every ``interval``-th iteration (1 = every step); other steps train on
            the first candidate pair (a plain random pair: candidates are i.i.d. augmentations).
        probability: on those iterations, select with this probability (own seeded generator).
        start_epoch: no selection before this epoch (0-based, mmengine's ``runner.epoch``).
        simclr_pair_forward: SimCLR forwards both views of a pair as one BatchNorm batch; True
            (default) repeats that per pair (exact scores, P forwards of 2B views), False scores
            each view alone (N forwards of B views; approximate).
        seed: seed of the selector's own generator (only used for all-non-finite fallbacks).
        log_stats: put ``hvs/*`` scalars into the MessageHub (and so the log): ``selected_loss``,
            ``pair_loss``, ``hardness_gap``, ``fallbacks``, ``time`` (SwAV multi-crop: and
            ``combinations``; reuse_target: ``target_reused``; after a batch it could not score:
            ``unscorable_batches``, the running count).
        proxy: allow BarlowTwins, scored with the labelled invariance proxy (it has no per-sample
            loss); all its scalars (``time`` and ``unscorable_batches`` included) are logged as
            ``hvs_proxy/*``.
        cap / exact: SwAV multi-crop (``MultiView num_views=[n_views, 2 * n_local]``): combinations
            compared per batch (the paper: 128), or the true argmax over all of them.
        score_layer: APPROXIMATE two-view scoring (e.g. ``'backbone.layer1'``, ``'backbone.layer2'``,
            ``'neck'``): per sample the pair whose online activations after that module are the most
            cosine-distant, the network run only up to there (cheaper; not the algorithm's loss, so
            the pair can differ from the exact selection). Names are the model's modules on its
            online path (backbone, neck, head.predictor); scalars are logged as ``hvs_layer/*``.
            Not for SwAV multi-crop nor with ``proxy=True``. None (default): exact scoring.
            All scalars of such a run are logged as ``hvs_layer/*``.
        reuse_target: BYOL / MoCoV3: hand the momentum network's selection outputs of the chosen views
            to ``loss()``, which then skips its momentum forward (see ``target_reuse.py``). Only where
            that is exact: full resolution, float32, no score_layer / proxy, and a momentum network
            without BatchNorm or dropout in train mode; refused with the reason otherwise (the
            standard ResNet + BatchNorm-neck configs are refused).

    An unknown option raises a TypeError naming it, the closest valid name and every valid one.
    A batch the selection forward cannot score (1 sample while the model has BatchNorm in train
    mode: the last batch of an epoch without ``drop_last``) trains on a plain random pair, as on
    the schedule's off-steps; it is counted (``unscorable_batches``, kept in the checkpoint) and
    warned about once (``HVSUnscorableWarning``).
    """

    priority = "NORMAL"

    def __init__(
        self,
        n_views: int = 4,
        resolution_scale: float = 1.0,
        chunk_size: Optional[int] = None,
        joint_views: bool = False,
        autocast_dtype: Optional[Union[str, torch.dtype]] = None,
        interval: int = 1,
        probability: float = 1.0,
        start_epoch: int = 0,
        simclr_pair_forward: bool = True,
        seed: int = 0,
        log_stats: bool = True,
        proxy: bool = False,
        cap: int = DEFAULT_CAP,
        exact: bool = False,
        score_layer: Optional[str] = None,
        reuse_target: bool = False,
        **unknown,
    ) -> None:
        if unknown:  # a misspelt option (e.g. from a config dict): name it, list the valid ones
            raise TypeError(unknown_options_message(unknown))
        if isinstance(autocast_dtype, str):
            autocast_dtype = getattr(torch, autocast_dtype, None)
            if not isinstance(autocast_dtype, torch.dtype):
                raise ValueError("autocast_dtype must name a torch dtype such as 'bfloat16' or 'float16'")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1 (1 = select every iteration), got {interval!r}")
        # the core's cost-knob schedule validates probability / start_epoch
        self.schedule = HVSSchedule(every=interval, probability=probability, start_epoch=start_epoch, seed=seed)
        # validates n_views, resolution_scale, chunk_size, autocast_dtype now (config errors early)
        HardViewSelector(
            n_views,
            resolution_scale=resolution_scale,
            chunk_size=chunk_size,
            joint_views=joint_views,
            autocast_dtype=autocast_dtype,
            seed=seed,
        )
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"cap must be an int >= 1 (SwAV multi-crop combinations per batch; the paper: 128), got {cap!r}")
        self.proxy, self.cap, self.exact = bool(proxy), cap, bool(exact)
        if score_layer is not None:
            if not isinstance(score_layer, str) or not score_layer:
                raise TypeError(f"score_layer must be None or a module name such as 'backbone.layer1', got {score_layer!r}")
            if self.proxy:
                raise ValueError("score_layer and proxy=True are two different approximations: choose one")
        self.score_layer = score_layer
        if not isinstance(reuse_target, bool):
            raise TypeError(f"reuse_target must be True or False, got {reuse_target!r}")
        if reuse_target:
            check_reuse_options(score_layer, self.proxy, resolution_scale, autocast_dtype)
        self.reuse_target = reuse_target
        self.reuse: Optional[TargetReuse] = None  # set in before_train (reuse_target=True)
        self.space: Optional[CombinationSpace] = None  # SwAV multi-crop combinations
        self.n_views = n_views
        self.resolution_scale = resolution_scale
        self.chunk_size = chunk_size
        self.joint_views = joint_views
        self.autocast_dtype = autocast_dtype
        self.interval = interval
        self.simclr_pair_forward = simclr_pair_forward
        self.seed = seed
        self.log_stats = log_stats
        self.selector: Optional[HardViewSelector] = None
        self.algorithm: Optional[str] = None
        self.groups: Optional[list[list[int]]] = None
        self._pending_state: Optional[dict] = None
        self._unscorable_logged = False
        self.last_selection = None  # the latest Selection (for inspection and tests)

    # ------------------------------------------------------------------ setup
    def before_run(self, runner) -> None:
        self.algorithm = check_supported(unwrap(runner.model), self.proxy)
        if self.score_layer is not None:  # an unknown name: an error listing the valid ones, now
            check_score_layer(unwrap(runner.model), self.score_layer)
        if self.reuse_target:
            check_reuse_model(self.algorithm, unwrap(runner.model), runner)
        loading = getattr(runner, "_resume", False) or getattr(runner, "_load_from", None)
        if loading and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ:
            # mmengine 0.10 checkpoints hold numpy/python objects: torch >= 2.6 refuses them with its
            # default weights_only=True load ("Weights only load failed"). The run resumes (or
            # loads) an mmengine checkpoint, so allow the full load for this process.
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
            runner.logger.warning(
                "HardViewSelectionHook: set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 so that mmengine can "
                "resume / load its checkpoint under torch >= 2.6 (only load checkpoints you trust)"
            )

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        self.algorithm = check_supported(model, self.proxy)
        self.groups = self._check_pipeline(runner)
        # query/key asymmetric (MoCo); SwAV's crop 1 and crop 2 meet different queue halves
        ordered = self.algorithm in ("MoCo", "SwAV") and self.groups is None
        if self.algorithm == "SwAV":
            self._setup_swav(model)
        if self.score_layer is not None:
            if self.space is not None:
                raise ValueError(
                    "score_layer is for two-view selection; SwAV multi-crop combinations are selected with "
                    "SwAV's own objective: drop score_layer (or the local crops)"
                )
            check_score_layer(model, self.score_layer)
        if self.reuse_target:
            self.reuse = TargetReuse(self.algorithm, check_reuse_model(self.algorithm, model, runner))
        self.selector = HardViewSelector(
            self.n_views,
            groups=self.groups,
            ordered=ordered,
            resolution_scale=self.resolution_scale,
            chunk_size=self.chunk_size,
            joint_views=self.joint_views,
            autocast_dtype=self.autocast_dtype,
            seed=self.seed,
        )
        if self._pending_state is not None:
            self._load_selector_state(self._pending_state)
            self._pending_state = None
        if self.space is not None:
            what = (
                f"{self.n_views} global + {2 * self._swav_n_local} local candidate views, "
                f"{'all' if self.exact else min(self.cap, self.space.size)} of {self.space.size} combinations"
            )
        else:
            what = (
                f"{self.n_views} candidate views, {self.selector.pairs.shape[0]} pairs"
                + (f" (cross-pipeline, groups {self.groups})" if self.groups else "")
                + (", ordered (crop 1, crop 2)" if ordered else "")
            )
        proxy = " (labelled invariance PROXY: no per-sample loss exists)" if self.algorithm in PROXY else ""
        if self.score_layer is not None:
            proxy = f" (APPROXIMATE: cosine distance after {self.score_layer!r})"
        if self.reuse is not None:
            proxy += " (momentum outputs of the chosen views reused by loss())"
        runner.logger.info(f"HardViewSelectionHook: {self.algorithm}, {what}{proxy}")

    def _check_pipeline(self, runner) -> Optional[list[list[int]]]:
        loader = getattr(runner.train_loop, "dataloader", None)
        dataset = getattr(loader, "dataset", None)
        views = find_multiviews(dataset)
        if not views:
            runner.logger.warning(
                "HardViewSelectionHook: no MultiView transform found in the train pipeline; the view "
                f"count ({self.n_views} expected) is checked on every batch instead"
            )
            return None
        counts = {tuple(v.num_views) for v in views}
        if len(counts) > 1:
            raise ValueError(f"HardViewSelectionHook: the train datasets disagree on MultiView num_views: {sorted(counts)}")
        num_views = list(views[0].num_views)
        if self.algorithm == "SwAV":
            self._swav_num_views = num_views
            return None
        if sum(num_views) != self.n_views:
            raise ValueError(self._view_count_message(views[0].num_views))
        if len(num_views) == 1:
            return None
        if len(num_views) == 2:
            if min(num_views) < 1:
                raise ValueError(f"MultiView num_views={num_views}: both pipelines need >= 1 candidate")
            return [list(range(num_views[0])), list(range(num_views[0], sum(num_views)))]
        raise ValueError(
            f"HardViewSelectionHook supports MultiView with one pipeline or two (asymmetric "
            f"augmentation), got {len(num_views)} pipelines (num_views={num_views}); multi-crop "
            "layouts are not supported by this hook"
        )

    def _view_count_message(self, made) -> str:
        """The error for a MultiView whose view count differs from n_views, naming fixes that work:
        with two (asymmetric) pipelines the candidates are split evenly, so n_views must be even."""
        n, num_views = self.n_views, list(made)
        have = sum(num_views)
        head = (
            f"HardViewSelectionHook(n_views={n}) needs {n} candidate views per image, but the train "
            f"pipeline's MultiView makes num_views={made} (= {have}). "
        )
        where = "in MultiView (train_dataloader.dataset.pipeline)"
        if len(num_views) != 2:
            return head + f"Set num_views={n} {where}, or n_views={have} in the hook."
        if n % 2 == 0:
            return head + f"Set num_views=[{n // 2}, {n // 2}] {where}, or n_views={have} in the hook."
        # odd n_views: two pipelines cannot each make n/2 candidates
        fixes = []
        if have % 2 == 0:
            fixes.append(f"n_views={have} in the hook (it matches num_views={made})")
        for even in (n + 1, n - 1):
            if even >= 2 and even != have:
                fixes.append(
                    f"n_views={even} in the hook with num_views=[{even // 2}, {even // 2}] in MultiView"
                    + (" (a single pair: nothing to select)" if even == 2 else "")
                )
        return (
            head + "With two pipelines (asymmetric augmentation, e.g. BYOL / MoCo v3) the candidates are "
            "split evenly between them (num_views=[n_views / 2, n_views / 2]), so n_views must be even "
            "(the paper: 4): use " + ", or ".join(fixes) + ". MultiView is in train_dataloader.dataset.pipeline."
        )

    def _setup_swav(self, model) -> None:
        """SwAV: two views (``num_crops=[2]``, pairs) or multi-crop (``num_crops=[2, n]``, 2
        candidates per crop, combinations of a global pair and n locals)."""
        if self.chunk_size is not None or self.joint_views:
            raise ValueError(
                "HardViewSelectionHook for SwAV scores every batch as a whole (its Sinkhorn codes couple "
                "the samples): remove chunk_size / joint_views from the hook"
            )
        num_crops = [int(n) for n in swav_loss_module(model).num_crops]
        num_views = getattr(self, "_swav_num_views", None)
        n_local = num_crops[1] if len(num_crops) == 2 else 0
        if num_crops[0] != 2 or len(num_crops) > 2:
            raise NotImplementedError(f"HVS scores SwAV with num_crops [2] or [2, n], got {num_crops}")
        want = [self.n_views] + ([2 * n_local] if n_local else [])
        if num_views is not None and num_views != want:
            raise ValueError(
                f"HardViewSelectionHook(n_views={self.n_views}) for SwAV with num_crops={num_crops} needs "
                f"MultiView num_views={want} ({self.n_views} global candidates"
                + (", 2 candidates per local crop" if n_local else "")
                + f"), got {num_views}"
            )
        self._swav_n_local = n_local
        if n_local:  # even global candidates are crop 1 (queue half 1), odd ones crop 2
            self.space = CombinationSpace(self.n_views, 2 * n_local, n_local, global_pairing="cross")

    @property
    def n_inputs(self) -> int:
        """Views per batch the pipeline must emit (SwAV multi-crop: global + local candidates)."""
        return self.n_views + (2 * self._swav_n_local if self.space is not None else 0)

    # -------------------------------------------------------------- selection
    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        if self.selector is None or not isinstance(data_batch, dict):
            return
        inputs = data_batch.get("inputs")
        if not isinstance(inputs, (list, tuple)) or len(inputs) != self.n_inputs:
            got = len(inputs) if isinstance(inputs, (list, tuple)) else type(inputs).__name__
            raise ValueError(
                f"HardViewSelectionHook(n_views={self.n_views}) got {got} views in the batch: the "
                f"train pipeline must emit {self.n_inputs} views (MultiView num_views), e.g. "
                f"dict(type='MultiView', num_views={self.n_inputs}, transforms=[view_pipeline])"
            )
        model = unwrap(runner.model)
        if self.reuse is not None:
            self.reuse.remove()  # a cache left by a step that raised never serves another batch
        # empty batch, non-tensor views: errors naming the fix
        check_candidate_views(inputs[: self.n_views], self.n_views, modules=[model])
        if self.space is not None:
            check_candidate_views(inputs[self.n_views :], modules=[model])
        step = runner.iter if hasattr(runner, "iter") else batch_idx
        if not self.schedule.active(step, getattr(runner, "epoch", 0)):
            self._plain_pair(data_batch, inputs)
            return
        # a batch the selection forward cannot score (1 sample under train-mode BatchNorm: the last
        # batch of an epoch without drop_last) trains on a plain pair, counted, as the host would
        reason = unscorable_reason(list(inputs[: self.n_views]), [model])
        if reason is not None:
            return self._train_unscorable(runner, data_batch, inputs, reason)
        if self.space is not None:
            return self._select_multicrop(runner, model, data_batch, list(inputs))
        start = time.perf_counter()
        keep: dict = {}
        # reuse_target: the momentum network at the weights loss() will use this step (a shadow copy)
        shadow = self.reuse.prepare(model) if self.reuse is not None else None
        try:
            with self.selector.scoring([model] + ([shadow] if shadow is not None else [])):
                views = self._preprocess(model, list(inputs))
                if self.score_layer is not None:  # APPROXIMATE: online activations after that module
                    losses = layer_pair_losses(model, self.selector, views, self.score_layer)
                elif shadow is not None:
                    losses = score_pairs(self.algorithm, model, self.selector, views, target=shadow, keep=keep)
                else:
                    losses = score_pairs(self.algorithm, model, self.selector, views, simclr_pair_forward=self.simclr_pair_forward)
        except ValueError as exc:
            reason = reason_from_error(exc)
            if reason is None:  # a real error, not an unscorable batch
                raise
            return self._train_unscorable(runner, data_batch, inputs, reason)
        selection = self.selector.choose(losses)
        n_fallback = warn_fallbacks(selection.fallback)
        if n_fallback:
            runner.logger.warning(
                f"HardViewSelectionHook: {n_fallback} of {selection.fallback.numel()} samples had no "
                f"finite pair loss at iteration {runner.iter} (NaN/inf model outputs); they train on "
                "a random candidate pair"
            )
        view_a, view_b = selection.gather(list(inputs))
        data_batch["inputs"] = [view_a, view_b]
        self.last_selection = selection
        if self.reuse is not None:  # loss() gets these outputs for exactly these (preprocessed) views
            self.reuse.cache(tuple(selection.gather(views)), keep["target"], selection.chosen)
        if self.log_stats:
            hub, prefix = runner.message_hub, self.stats_prefix
            for key, value in selection_stats(selection).as_dict(prefix).items():
                hub.update_scalar(key, value)
            hub.update_scalar(prefix + "time", time.perf_counter() - start)

    @property
    def stats_prefix(self) -> str:
        """Where every scalar of this hook goes: ``train/hvs_proxy/`` for the labelled invariance
        proxy (proxy=True), ``train/hvs_layer/`` for score_layer's approximation, else ``train/hvs/``."""
        if self.algorithm in PROXY:
            return "train/hvs_proxy/"
        return "train/hvs_layer/" if self.score_layer is not None else "train/hvs/"

    def _plain_pair(self, data_batch: dict, inputs: Sequence[torch.Tensor]) -> None:
        """The batch trains on candidate pair 0 (candidates are i.i.d. augmentations, so a plain
        random pair; SwAV multi-crop: and the first candidate of every local crop)."""
        a, b = self.selector.pairs[0].tolist()
        data_batch["inputs"] = [inputs[a], inputs[b]] + list(inputs[self.n_views :: 2] if self.space else [])

    def _train_unscorable(self, runner, data_batch: dict, inputs: Sequence[torch.Tensor], reason: str) -> None:
        """A batch HVS cannot score: a plain pair, counted (``<prefix>unscorable_batches``, kept in
        the checkpoint), warned once (``HVSUnscorableWarning``)."""
        m = int(inputs[0].shape[0])
        if self.space is None:
            self.last_selection = self.selector.unscorable_selection(m, reason)  # counts, warns once
        else:
            self.selector.unscorable.record(reason)
            self.last_selection = None
        self._plain_pair(data_batch, inputs)
        count = self.selector.unscorable.count
        if not self._unscorable_logged:  # once per run (the Python warning is shown once, too)
            self._unscorable_logged = True
            runner.logger.warning(
                f"HardViewSelectionHook: iteration {runner.iter}: cannot score this batch ({reason}); it trains "
                "on a plain random pair. Such batches are counted as "
                f"{self.stats_prefix[len('train/') :]}unscorable_batches; use drop_last=True in "
                "train_dataloader to select on every batch"
            )
        if self.log_stats:
            # the running count: one value, so the logger's window mean is the count itself
            hub, key = runner.message_hub, self.stats_prefix + "unscorable_batches"
            hub.log_scalars.pop(key, None)
            hub.update_scalar(key, float(count))

    def _select_multicrop(self, runner, model, data_batch: dict, inputs: list) -> None:
        """SwAV multi-crop: the combination (global pair + locals) with the highest loss per sample."""
        start = time.perf_counter()
        sel, space = self.selector, self.space
        try:
            with sel.scoring([model]):
                views = self._preprocess(model, inputs)
                ce = swav_multicrop_ce(model, sel, views[: self.n_views], views[self.n_views :])
        except ValueError as exc:
            reason = reason_from_error(exc)
            if reason is None:
                raise
            return self._train_unscorable(runner, data_batch, inputs, reason)
        choice = space.exact_search(ce, sel.generator) if self.exact else space.search(ce, self.cap, sel.generator)
        n_fallback = warn_fallbacks(choice.fallback, "combination loss")
        if n_fallback:
            runner.logger.warning(f"HardViewSelectionHook: {n_fallback} samples had no finite combination loss")
        glob, loc = inputs[: self.n_views], inputs[self.n_views :]
        data_batch["inputs"] = gather_views(glob, choice.globals_) + gather_views(loc, choice.locals_)
        self.last_selection = choice
        if self.log_stats:
            hub, prefix = runner.message_hub, self.stats_prefix
            finite = torch.isfinite(choice.candidate_losses)
            hub.update_scalar(prefix + "selected_loss", float(choice.losses.mean()))
            hub.update_scalar(prefix + "pair_loss", float(choice.candidate_losses[finite].mean()) if bool(finite.any()) else float("nan"))
            hub.update_scalar(prefix + "fallbacks", float(choice.fallback.sum()))
            hub.update_scalar(prefix + "combinations", float(choice.n_evaluated))
            hub.update_scalar(prefix + "time", time.perf_counter() - start)

    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None, outputs=None) -> None:
        if self.reuse is not None and self.reuse._installed:
            if self.log_stats:
                runner.message_hub.update_scalar(self.stats_prefix + "target_reused", float(self.reuse.hits))
            self.reuse.remove()

    def after_train(self, runner) -> None:
        if self.reuse is not None:
            self.reuse.remove()

    @staticmethod
    def _preprocess(model, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The model's own data preprocessor on the N raw views (scoring only; training
        preprocesses the selected pair as usual)."""
        out = model.data_preprocessor({"inputs": list(inputs), "data_samples": None}, True)
        views = out["inputs"] if isinstance(out, dict) else out[0]
        if not isinstance(views, (list, tuple)):
            raise TypeError(f"the data preprocessor returned {type(views).__name__}, expected a list of views")
        return list(views)

    # ------------------------------------------------------------ checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.selector is not None:
            checkpoint["hvs_selector"] = {
                **self.selector.state_dict(),
                "schedule": self.schedule.state_dict(),
                "unscorable": self.selector.unscorable.state_dict(),
            }

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("hvs_selector")
        if state is None:
            return
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if self.selector is not None:
            self._load_selector_state(state)
        else:
            self._pending_state = state

    def _load_selector_state(self, state: dict) -> None:
        self.selector.load_state_dict(state)
        if "unscorable" in state:  # checkpoints before the count have none: it starts at 0
            self.selector.unscorable.load_state_dict(state["unscorable"])


__all__ = ["HardViewSelectionHook", "SUPPORTED", "find_multiviews"]
