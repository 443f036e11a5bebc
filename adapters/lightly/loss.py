"""HVS as a wrapper around lightly loss objects.

``HVSLoss(criterion, n_views=4)`` behaves like ``criterion`` (calling it computes the lightly loss,
unchanged) and adds :meth:`HVSLoss.select`: given the N candidate views of a batch and the
network(s) of the training loop, it scores every candidate pair with the loss's own per-sample
objective (no gradients, no state change) and returns the hardest pair per sample, ready for the
loop's normal training step. DINO multi-crop: :meth:`HVSLoss.select` returns DINO's view list
``[global_a, global_b, local_1, ...]`` chosen from 2 candidates per crop.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from hvs_plugins import (
    DEFAULT_CAP,
    CombinationSpace,
    HardViewSelector,
    HVSSchedule,
    check_candidate_views,
    interleaved_groups,
    select_min_iou,
    reason_from_error,
    selection_stats,
    unscorable_reason,
    warn_fallbacks,
)
from hvs_plugins.deferred import DeferredFallbackWarnings
from hvs_plugins.devices import to_device

from . import more_losses  # noqa: F401  registers DCL(W), MACL, TiCo, DirectCLR and the Barlow/VICReg proxies
from .layer_score import check_score_layer, layer_pair_losses
from .multicrop_select import MultiCropSelection
from .methods import multicrop_method
from .registry import PairLossSpec, lookup, register_pair_loss, supported_losses  # noqa: F401 (public names)
from .transforms import CandidateList, CandidateViews, check_multicrop_layout, layout_from_candidates
from .target_reuse import (
    check_ran_modules,
    check_target_reuse,
    chosen_target_outputs,
    modules_run,
    plain_target_outputs,
    refuse_stale_target,
    watch_parameters,
)

Forward = Callable[[torch.Tensor], Any]


def _is_dino(criterion: nn.Module) -> bool:
    from lightly.loss import DINOLoss

    return isinstance(criterion, DINOLoss)


# ---------------------------------------------------------------- the wrapper
def _owner_modules(fns: Sequence[Any]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for fn in fns:
        if fn is None:
            continue
        if isinstance(fn, nn.Module):
            out.append(fn)
        elif isinstance(getattr(fn, "__self__", None), nn.Module):
            out.append(fn.__self__)
    return out


def _device_of(modules: Sequence[nn.Module]) -> Optional[torch.device]:
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            return t.device
    return None


def _flatten_criterion_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    inner = prefix + "criterion."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _nest_criterion_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    inner = prefix + "criterion."
    for name in module.criterion.state_dict():
        flat, nested = prefix + name, inner + name
        if flat in state_dict and nested not in state_dict:
            state_dict[nested] = state_dict.pop(flat)


class HVSLoss(MultiCropSelection, nn.Module):
    """A lightly loss with Hard View Selection.

    ``criterion``: the lightly loss object (NegativeCosineSimilarity — SimSiam, BYOL; NTXentLoss —
    SimCLR, MoCo with ``memory_bank_size``; DINOLoss — DINO multi-crop; SwaVLoss — SwAV multi-crop;
    IBOTLoss — iBOT; DCLLoss, DCLWLoss, MACLLoss, TiCoLoss, DirectCLRLoss; or a registered class).
    Calling the wrapper is calling ``criterion`` (the training step is the host's own).

    ``candidates``: the :class:`CandidateViews` of the data loader; ``n_views`` and ``groups`` are
    taken from it (one source: the recommended way). ``n_views``: candidates per sample for
    two-view methods (default 4, the paper's). ``groups``: for
    asymmetric pipelines (BYOL's two view transforms) ``"interleaved"`` (what
    :class:`CandidateViews` emits: even candidates from transform 1, odd from transform 2; only
    cross pairs are scored), ``"all"`` (every pair on purpose) or explicit index lists; ``None``
    scores every pair, and is refused on a batch from a two-pipeline ``CandidateViews`` (e.g. over
    ``BYOLTransform``; the collated candidates carry their layout, ``CandidateList``). DINO:
    ``n_global_candidates`` (4 = 2 per global crop), ``cap`` combinations compared per batch (the paper: 128) or ``exact=True`` for the true
    argmax over all combinations, ``global_pairing`` ``"cross"`` (default) or ``"any"``.
    ``resolution_scale``, ``chunk_size``, ``autocast_dtype``, ``seed``: as core ``HardViewSelector``.
    ``enabled=False`` turns selection off (``select`` returns the first pair / DINO's first layout).
    ``stats=False``: no ``last_stats`` and fallback warnings read back later, so that ``select``
    never waits for the GPU (statistics read device values on the host).
    Cost knobs (core ``HVSSchedule``): ``every`` (select on every k-th ``select`` call),
    ``probability`` (then with this probability, from the selector's own generator) and
    ``start_epoch`` (no selection before it; pass ``epoch=`` to ``select``). Off-steps return a plain
    random pair (the first candidates: i.i.d. augmentations).
    ``proxy=True`` (BarlowTwinsLoss, VICRegLoss only): select with the labelled invariance proxy,
    as these losses have no per-sample form; ``self.scoring`` is ``"proxy"`` then, else ``"exact"``.
    ``score_layer="backbone.layer1"`` (two-view losses; APPROXIMATE, ``self.scoring`` is
    ``"approximate"``): score pairs by the cosine distance of the online network's activations after
    that module (e.g. ``conv1``, ``layer1``, ``layer2``, ``avgpool`` of a ResNet backbone; names are
    relative to ``model``'s module), running the network only up to there (core ``layer_scoring``);
    cheaper, but not the loss's own objective (agreement: ``benchmarks/agreement.py``).
    ``select_by="min_iou"`` (two-view losses; a CONTROL, ``self.scoring`` is ``"geometric"``): no
    forward at all; per sample the pair whose crop boxes overlap least (``select(..., boxes=...)``
    from ``CandidateViews(return_boxes=True)``): what crop geometry alone buys.
    """

    def __init__(
        self,
        criterion: nn.Module,
        n_views: Optional[int] = None,
        groups: Union[None, str, Sequence[Sequence[int]]] = None,
        *,
        candidates: Optional[CandidateViews] = None,
        n_global_candidates: int = 4,
        cap: int = DEFAULT_CAP,
        exact: bool = False,
        global_pairing: str = "cross",
        resolution_scale: float = 1.0,
        chunk_size: Optional[int] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        seed: int = 0,
        enabled: bool = True,
        every: int = 1,
        probability: float = 1.0,
        start_epoch: int = 0,
        stats: bool = True,
        proxy: bool = False,
        score_layer: Optional[str] = None,
        select_by: str = "loss",
    ) -> None:
        super().__init__()
        if not isinstance(criterion, nn.Module):
            raise TypeError(f"HVSLoss wraps a lightly loss module, got {type(criterion).__name__}")
        n_views, groups = layout_from_candidates(candidates, n_views, groups)
        # groups=None on a batch of a two-pipeline CandidateViews is refused (select reads the batch's layout)
        self._layout_unchecked = groups is None and candidates is None
        self.criterion = criterion
        self.is_dino = _is_dino(criterion)
        self.method = multicrop_method(criterion)  # SwAV, iBOT: methods.py
        self.enabled = enabled
        self.schedule = HVSSchedule(every=every, probability=probability, start_epoch=start_epoch, seed=seed)
        self._step = 0  # select() calls so far (the schedule's step)
        self.cap = cap
        self.exact = exact
        self.global_pairing = global_pairing
        self.n_global_candidates = n_global_candidates
        kw = dict(resolution_scale=resolution_scale, chunk_size=chunk_size, autocast_dtype=autocast_dtype, seed=seed)
        if self.is_dino or self.method is not None:
            self.spec = None
            self.selector = HardViewSelector(n_views=n_global_candidates, **kw)
            CombinationSpace(n_global_candidates, 2, 1, global_pairing)  # validate early
        else:
            self.spec = lookup(criterion, proxy=proxy)
            if groups == "interleaved":
                groups = interleaved_groups(n_views, 2)
            elif groups == "all":  # every pair on purpose, also with two pipelines
                groups = None
            elif isinstance(groups, str):
                raise ValueError(f"groups must be None, 'interleaved', 'all' or index lists, got {groups!r}")
            self.selector = HardViewSelector(n_views=n_views, groups=groups, ordered=self.spec.is_ordered(criterion), **kw)
        self.scoring = "proxy" if getattr(self.spec, "proxy", False) else "exact"
        if proxy and self.scoring != "proxy":
            raise ValueError(
                f"proxy=True is for losses without a per-sample form (BarlowTwinsLoss, VICRegLoss); "
                f"{type(criterion).__name__} is selected with its exact objective: drop proxy=True"
            )
        self.score_layer = check_score_layer(score_layer, self.spec is None, self.scoring)
        if score_layer is not None:
            self.scoring = "approximate"
        if select_by not in ("loss", "min_iou"):
            raise ValueError(f"select_by must be 'loss' (HVS) or 'min_iou' (geometric control), got {select_by!r}")
        if select_by == "min_iou":
            if self.spec is None:
                raise ValueError(
                    "select_by='min_iou' is for two-view losses; multi-crop losses (DINO, SwAV, iBOT) "
                    "select with their loss: drop select_by"
                )
            if score_layer is not None:
                raise ValueError("select_by='min_iou' runs no forward: drop score_layer")
            self.scoring = "geometric"
        self.select_by = select_by
        self.n_views = n_views
        self.last_selection: Any = None
        self.last_stats: Any = None
        self.stats = stats
        self._reuse_watch: Optional[list] = None  # momentum parameters whose outputs select() handed out
        self._deferred = DeferredFallbackWarnings()  # stats=False: fallback counts read without a sync
        # checkpoints look the same with and without HVS: the wrapped loss's entries (DINO center,
        # ...) keep their keys ('criterion.center', not 'criterion.criterion.center'), so a run
        # resumes across switching HVS on or off; the nested layout still loads
        self._register_state_dict_hook(_flatten_criterion_keys)
        self._register_load_state_dict_pre_hook(_nest_criterion_keys, with_module=True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._reuse_watch is not None:  # select(return_target_out=True) handed momentum outputs out
            watch, self._reuse_watch = self._reuse_watch, None
            refuse_stale_target(watch)
        return self.criterion(*args, **kwargs)

    @property
    def pairs(self) -> torch.Tensor:
        return self.selector.pairs

    # -- checkpointing of the selector's own RNG (not in state_dict(), so that checkpoints load
    # strictly with and without HVS). In a LightningModule:
    #     def on_save_checkpoint(self, checkpoint):
    #         checkpoint["hvs_selector"] = self.criterion.selector_state_dict()
    #     def on_load_checkpoint(self, checkpoint):
    #         if "hvs_selector" in checkpoint:
    #             self.criterion.load_selector_state_dict(checkpoint["hvs_selector"])
    def selector_state_dict(self) -> dict:
        return {**self.selector.state_dict(), "schedule": self.schedule.state_dict(), "step": self._step}

    def load_selector_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state)
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
            self._step = int(state["step"])

    def _active(self, epoch: Optional[int]) -> bool:
        """Whether this select() call selects (``enabled`` and the schedule); counts the call."""
        step, self._step = self._step, self._step + 1
        return self.enabled and self.schedule.active(step, epoch or 0)

    def select(
        self,
        views: Sequence[torch.Tensor],
        model: Forward,
        target: Optional[Forward] = None,
        *,
        epoch: Optional[int] = None,
        teacher_temp: Optional[float] = None,
        modules: Sequence[nn.Module] = (),
        boxes: Optional[torch.Tensor] = None,
        return_teacher_out: bool = False,
        return_target_out: bool = False,
        queue: Optional[Sequence[torch.Tensor]] = None,
        masks: Optional[Sequence[torch.Tensor]] = None,
        train_views: Union[Sequence[torch.Tensor], Callable[[torch.Tensor], tuple], None] = None,
    ) -> Any:
        """The hard views of this batch.

        ``views``: the candidate list from the data loader (``batch[0]`` with a
        :class:`CandidateViews` transform); a ``(views, boxes)`` pair is accepted too.
        ``model``: the online/student forward (``model``; SimSiam: returns ``(z, p)``).
        ``target``: the momentum/teacher forward (BYOL, MoCo: ``model.forward_momentum``; DINO:
        ``model.forward_teacher``). ``epoch`` / ``teacher_temp``: DINO's teacher temperature, as
        passed to ``DINOLoss``. ``modules``: further networks the forwards use (the owners of
        ``model``/``target`` and the loss are included automatically); their parameters, buffers
        (BatchNorm statistics, DINO center, memory bank) and the global RNG are left unchanged.

        Returns ``(x0, x1)`` for two-view losses and DINO's list ``[g_a, g_b, l_1, ..., l_n]``, on
        the networks' device. ``self.last_selection`` / ``self.last_stats`` keep the details.
        SwaVLoss: ``model(x)`` -> prototype scores; ``queue``: the queue's prototype scores per
        high-resolution crop (SwaVLoss's ``queue_outputs``). IBOTLoss: ``select(views, student,
        teacher, masks=...)`` with one token mask per global candidate; returns ``(views, masks)``.

        ``train_views`` (two-view losses): score on ``views`` but return the chosen pair from these
        (the same candidates, augmented otherwise), e.g. :class:`StaticColourViews`'s independently
        coloured crops while ``views`` share one colour draw per image; or a function of
        ``chosen: [M, 2]`` (candidate indices) that builds the pair after the selection
        (``StaticColourViews(deferred=True).colour_chosen(crops)``).

        ``return_teacher_out=True`` (DINO): returns ``(views, teacher_out)``, ``teacher_out`` being
        the selection's teacher outputs of the 2 chosen globals (``[M, D]`` each, float32), so the
        training step skips its own teacher forward (saves 2 of the HVS step's global forwards).
        Call ``select`` where the teacher forward was (after the momentum update). Allowed only
        when reusing is exact: selection at ``resolution_scale=1.0`` and a teacher whose output per
        sample does not depend on the batch or the RNG (no BatchNorm or dropout in train mode, e.g.
        a ViT); with ``autocast_dtype`` the outputs carry that precision.

        ``return_target_out=True`` (BYOL, MoCo: a ``target`` forward): returns ``((x0, x1), (t0, t1))``,
        ``t0``/``t1`` the selection's momentum outputs of the chosen views (``[M, D]`` float32), so the
        training step skips its momentum forward. The same conditions as ``return_teacher_out``
        (call after the momentum update; full resolution; no BatchNorm/dropout in train mode in the
        momentum network), refused with the reason otherwise (``target_reuse.py``).
        """
        if (
            isinstance(views, (tuple, list))
            and len(views) == 2
            and isinstance(views[0], (tuple, list))
            and isinstance(views[1], torch.Tensor)
            and views[1].dim() == 3
        ):  # (views, boxes) from CandidateViews(..., return_boxes=True)
            views, boxes = views
        if self._layout_unchecked and isinstance(views, CandidateList) and views.groups is not None:
            self._refuse_pipeline_mix(views)
        mods = _owner_modules([model, target]) + [self.criterion] + list(modules)
        # empty batch, non-tensor views: errors naming the fix
        views = check_candidate_views(views, modules=mods, same_shape=False)
        device = _device_of(mods)
        if device is not None:
            views = [to_device(v, device) for v in views]
        if return_teacher_out:
            self._check_teacher_reuse(_owner_modules([target if target is not None else model]) or list(modules))
        if return_target_out:
            check_target_reuse(self, target, train_views)
        active = self._active(epoch)
        # a batch HVS cannot score (1 sample under train-mode BatchNorm) trains on a plain pair, counted
        reason = unscorable_reason(views, mods) if active else None
        if reason is not None:
            self.selector.unscorable.record(reason, stacklevel=3)
            active = False
        kw = dict(
            epoch=epoch,
            teacher_temp=teacher_temp,
            modules=modules,
            boxes=boxes,
            return_teacher_out=return_teacher_out,
            return_target_out=return_target_out,
            queue=queue,
            masks=masks,
            train_views=train_views,
        )
        try:
            return self._select(views, model, target, mods, device, active, **kw)
        except ValueError as exc:  # e.g. a forward given as a lambda: its BatchNorm is found when it runs
            reason = reason_from_error(exc) if active else None
            if reason is None:
                raise
        self.selector.unscorable.record(reason, stacklevel=3)
        return self._select(views, model, target, mods, device, False, **kw)

    @property
    def unscorable_batches(self) -> int:
        """Batches trained on a plain random pair because they could not be scored (see ``hvs_plugins.unscorable``)."""
        return self.selector.unscorable.count

    def _select(
        self,
        views: list,
        model: Forward,
        target: Optional[Forward],
        mods: list,
        device: Any,
        active: bool,
        *,
        epoch: Optional[int],
        teacher_temp: Optional[float],
        modules: Sequence[nn.Module],
        boxes: Optional[torch.Tensor],
        return_teacher_out: bool,
        return_target_out: bool,
        queue: Any,
        masks: Any,
        train_views: Any,
    ) -> Any:
        if self.method is not None:  # SwaVLoss (queue=), IBOTLoss (masks=): see swav.py, ibot.py
            check_multicrop_layout(views, self.n_global_candidates, self.method.name)
            return self.method.select(
                self,
                views,
                model,
                target,
                mods,
                active=active,
                epoch=epoch,
                teacher_temp=teacher_temp,
                queue=queue,
                masks=masks,
                boxes=boxes,
            )
        if self.is_dino:
            check_multicrop_layout(views, self.n_global_candidates, "DINO")
            return self._select_dino(
                views, model, target if target is not None else model, mods, epoch, teacher_temp, boxes, active, return_teacher_out
            )
        if len(views) != self.n_views:
            raise ValueError(
                f"HVSLoss(n_views={self.n_views}) got {len(views)} views per sample: wrap the transform "
                f"with CandidateViews(transform, n_views={self.n_views}) (or set n_views={len(views)})"
            )
        pair_fn = train_views if callable(train_views) else None  # views built after the selection
        if pair_fn is not None:
            if return_target_out:
                raise ValueError(
                    "return_target_out=True needs the training views before the selection (the "
                    "target outputs are of the scored views): pass them as a list, not a function"
                )
            train_views = None
        if train_views is not None:
            train_views = check_candidate_views(train_views, same_shape=False)
            if len(train_views) != len(views) or train_views[0].shape[0] != views[0].shape[0]:
                raise ValueError(
                    f"train_views must hold the same candidates as views ({len(views)} x {views[0].shape[0]} "
                    f"samples), got {len(train_views)} x {train_views[0].shape[0]}"
                )
            if device is not None:
                train_views = [to_device(v, device) for v in train_views]
        out_views = views if train_views is None else train_views
        if not active:
            a, b = self.selector.pairs[0].tolist()  # valid for cross-pipeline layouts too
            if pair_fn is not None:
                return self._built_pair(pair_fn, torch.tensor([[a, b]]).expand(views[0].shape[0], 2), device)
            if return_target_out:
                return (out_views[a], out_views[b]), plain_target_outputs(target, out_views[a], out_views[b])
            return out_views[a], out_views[b]
        sel = self.selector
        if self.select_by == "min_iou":  # geometric control: no forward, the least-overlapping crops
            if boxes is None:
                raise ValueError(
                    "select_by='min_iou' needs the crop boxes: CandidateViews(transform, "
                    "return_boxes=True) and select(views, model, boxes=boxes)"
                )
            if return_target_out:
                raise ValueError("select_by='min_iou' runs no forward, so it has no target outputs: drop return_target_out")
            selection = select_min_iou(boxes, sel.pairs, sel.generator)
            self.last_selection = selection
            self.last_stats = selection_stats(selection, boxes) if self.stats else None
            return self._built_pair(pair_fn, selection.chosen, device) if pair_fn is not None else selection.gather(out_views)
        with sel.scoring(mods):
            if self.score_layer is not None:  # APPROXIMATE: activations of the online network only
                losses = layer_pair_losses(sel, model, views, self.score_layer, modules)
            else:
                online = sel.forward_views(model, views, self.n_views)
                with modules_run() if return_target_out else contextlib.nullcontext([]) as ran:
                    tgt = sel.forward_views(target, views, self.n_views) if target is not None else None
                losses = self.spec.fn(self.criterion, online, tgt, sel.pairs)
        if return_target_out:  # exact only if the momentum network it ran is per-sample (no BN / dropout)
            check_ran_modules(ran, {id(m): n for o in mods for n, m in o.named_modules() if n})
            self._reuse_watch = watch_parameters(ran)  # checked at the loss call: no momentum update since
        if losses.shape != (sel.pairs.shape[0], views[0].shape[0]):
            raise ValueError(f"pair loss returned {list(losses.shape)}, expected [P={sel.pairs.shape[0]}, M={views[0].shape[0]}]")
        selection = sel.choose(losses)
        self._warn(selection.fallback, "pair loss")
        self.last_selection = selection
        self.last_stats = selection_stats(selection, boxes) if self.stats else None
        if return_target_out:  # tgt: [N, M, D] per output; chosen: [M, 2]
            return selection.gather(out_views), chosen_target_outputs(tgt, selection.chosen)
        if pair_fn is not None:
            return self._built_pair(pair_fn, selection.chosen, device)
        return selection.gather(out_views)

    def _refuse_pipeline_mix(self, views: CandidateList) -> None:
        if self.spec is not None:  # two-view losses; multi-crop layouts are the method's own
            raise ValueError(
                f"HVSLoss(groups=None) scores all {self.pairs.shape[0]} pairs of the {self.n_views} candidates, same-pipeline "
                f"pairs included, but the batch comes from CandidateViews({views.transform_name}) with two different view pipelines "
                "(even candidates from view transform 1, odd from view transform 2), so the method's asymmetric "
                "augmentation would be lost. Build the loss from the transform: HVSLoss(criterion, "
                "candidates=candidate_views) (or groups='interleaved'); to score all pairs on purpose, pass groups='all'."
            )

    @staticmethod
    def _built_pair(pair_fn: Callable, chosen: torch.Tensor, device: Optional[torch.device]) -> tuple[torch.Tensor, torch.Tensor]:
        """``train_views`` given as a function of ``chosen: [M, 2]`` (e.g. ``StaticColourViews.colour_chosen``)."""
        out = pair_fn(chosen)
        if not (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and all(isinstance(x, torch.Tensor) for x in out)
            and out[0].shape[0] == chosen.shape[0] == out[1].shape[0]
        ):
            raise ValueError(f"train_views(chosen) must return two tensors of {chosen.shape[0]} samples each")
        return tuple(to_device(x, device) for x in out) if device is not None else tuple(out)

    def _warn(self, fallback: torch.Tensor, what: str) -> None:
        if self.stats:
            warn_fallbacks(fallback, what, stacklevel=4)
        else:
            self._deferred.push(fallback, what)
