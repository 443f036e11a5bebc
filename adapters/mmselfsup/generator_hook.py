"""``HardViewGeneratorHook``: learned hard views (design §7) for MMSelfSup 1.x and MMPretrain 1.x.

Config::

    custom_imports = dict(imports=['hvs_plugins.adapters.mmselfsup'], allow_failed_imports=False)
    custom_hooks = [dict(type='HardViewGeneratorHook', eps_start=0.02, eps_end=0.06, ramp_epochs=10)]

    # selection first, then generation of the chosen pair (MultiView num_views=4 in the pipeline):
    custom_hooks = [dict(type='HardViewSelectionHook', n_views=4),
                    dict(type='HardViewGeneratorHook', eps=0.05)]

How it works. The generator (the core :class:`hvs_plugins.HardViewGenerator`: a Viewmaker-style
network, its own Adam, gradient reversal) runs INSIDE the algorithm's ``train_step``, on the
output of the model's own data preprocessor: a forward hook on ``model.data_preprocessor``
replaces the two normalised float views by the generated ones, so ``loss()`` (backbone, neck,
head, momentum network, queue) sees the generated pair. The generated views leave the generator
through a gradient-reversal function: the runner's ``optim_wrapper.update_params`` backward gives
the algorithm the gradients of the generated views as plain tensors and the generator the negated
gradient of the algorithm's loss; ``after_train_iter`` (after the runner's optimizer step) then
calls the generator's own ``step()`` (Adam step, zero_grad; under DDP it first averages the
generator's gradients over the ranks). The algorithm's optimizer never sees the generator's
parameters (it is not a submodule of the model).

The hook arms the generator in ``before_train_iter``; it fires once, on the first call of the data
preprocessor with ``training=True`` and gradients enabled, i.e. the one in ``train_step``. The
selection hook's scoring forwards (no gradients) and validation (``training=False``) never see
it. Order with ``HardViewSelectionHook``: every ``before_train_iter`` hook (selection included)
runs before ``train_step``, so the generator always receives the selected pair, wherever the two
hooks stand in ``custom_hooks``. The priority is ``'NORMAL'`` so that ``after_train_iter`` (the
generator's step and its scalars) runs before the ``LoggerHook`` (``'BELOW_NORMAL'``) and the
``hvs_gen/*`` scalars appear on the same log line as the step's loss.

Units. MMSelfSup/MMPretrain preprocess uint8 views with 0-255 mean/std (e.g.
``mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]``, possibly after ``bgr_to_rgb``);
the generator's budget ε is in [0, 1] pixel units (ε = 0.05: 12.75 grey levels of 255). The
generator uses ``mean/255`` and ``std/255`` of the data preprocessor (channel order of its output;
no normalisation: mean 0, std 1/255), so per image ``mean |δ| = ε`` in [0, 1] units, and the
generated view stays within the 0-255 range (clamped).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Sequence

import torch
from mmengine.hooks import Hook

from hvs_plugins import HardViewSelector
from hvs_plugins.generator import HardViewGenerator

from .hook import DATA_BATCH, HardViewSelectionHook
from .runner_config import find_multiviews, options_of, unknown_options_text, unwrap
from .scoring import algorithm_name, score_pairs

# algorithms whose exact per-sample scorer (the selection's) can measure the hardness gap
GAP_ALGORITHMS = ("SimSiam", "SimCLR", "BYOL", "MoCo", "MoCoV3")
CHECKPOINT_KEY = "hvs_generator"
_FROM_PREPROCESSOR = ("mean", "std", "channels", "normalize", "transform")


def generator_hook_options() -> list[str]:
    """The option names ``HardViewGeneratorHook`` accepts (its constructor's keyword arguments)."""
    return options_of(HardViewGeneratorHook)


def unknown_generator_options_message(unknown) -> str:
    """The error for option names the hook does not know (closest valid name, the list)."""
    note = ""
    if any(str(k) in _FROM_PREPROCESSOR for k in unknown):
        note = " The normalisation (mean/std, channels) is read from the model's data_preprocessor: remove it from the hook."
    return unknown_options_text("HardViewGeneratorHook", generator_hook_options(), unknown, note)


def _to_cpu(obj: Any) -> Any:
    """A state (nested dicts / lists of tensors) with every tensor on the CPU; module state_dicts keep
    their ``_metadata``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out: Any = type(obj)((k, _to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def preprocessor_normalisation(preprocessor) -> tuple[list[float], list[float]]:
    """The ``(mean, std)`` in [0, 1] units of an mmengine/MMSelfSup/MMPretrain image data
    preprocessor: its 0-255 ``mean``/``std`` buffers divided by 255 (no normalisation: 0 and 1/255)."""
    enabled = getattr(preprocessor, "_enable_normalize", None)
    mean, std = getattr(preprocessor, "mean", None), getattr(preprocessor, "std", None)
    if enabled is None:
        raise ValueError(
            f"HardViewGeneratorHook needs the model's image data preprocessor (SelfSupDataPreprocessor or "
            f"mmengine's ImgDataPreprocessor) to know the views' pixel range; this model has "
            f"{type(preprocessor).__name__}: set model.data_preprocessor=dict(type='SelfSupDataPreprocessor', "
            "mean=..., std=..., bgr_to_rgb=True), or remove the hook"
        )
    if not enabled:
        return [0.0, 0.0, 0.0], [1.0 / 255.0] * 3
    if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
        raise ValueError(
            f"HardViewGeneratorHook: the data preprocessor {type(preprocessor).__name__} normalises "
            "but has no mean/std buffers; remove the hook or use SelfSupDataPreprocessor"
        )
    return ([float(v) / 255.0 for v in mean.flatten().tolist()], [float(v) / 255.0 for v in std.flatten().tolist()])


class HardViewGeneratorHook(Hook):
    """Learned hard views (Wu et al. 2022; Viewmaker, Tamkin et al. 2021) as an mmengine hook.

    A Viewmaker-style generator adds to each of the two training views a perturbation with
    ``mean |δ| = ε`` per image ([0, 1] pixel units), trained adversarially to the algorithm's own
    loss through a gradient-reversal function and its own Adam (see the module docstring for where
    it runs and how its gradient gets there). Works alone (the pipeline's ``MultiView`` makes the
    pair: ``num_views=2``, or ``[1, 1]`` for two asymmetric pipelines) or after
    ``HardViewSelectionHook`` (it then generates from the selected pair; the order of the two in
    ``custom_hooks`` does not matter).

    Config::

        custom_imports = dict(imports=['hvs_plugins.adapters.mmselfsup'], allow_failed_imports=False)
        custom_hooks = [dict(type='HardViewGeneratorHook', eps_start=0.02, eps_end=0.06, ramp_epochs=10)]

    Args:
        eps: constant budget ε, mean ``|δ|`` per image in [0, 1] pixel units (1/255 of the 0-255
            scale of MMSelfSup's views), in (0, 1]; the Viewmaker uses 0.05.
        eps_start / eps_end / ramp_epochs: progressive hardness: ε rises linearly from
            ``eps_start`` to ``eps_end`` over ``ramp_epochs`` epochs (the runner's epoch; in an
            ``IterBasedTrainLoop``: iterations / len(train_dataloader)), then stays at ``eps_end``.
            ``eps_start`` / ``eps_end`` default to ``eps``; ``ramp_epochs=0``: no ramp.
        shared: True (default): one generator for both views (Viewmaker); False: a pair, view a
            through G1 and view b through G2 (Wu et al.).
        width / n_blocks / stem_kernel: the generator network (channels of the first stage, 32;
            residual blocks, 3; first and last kernel, 9).
        lr / betas / weight_decay: the generator's Adam (1e-3, (0.9, 0.999), 0).
        reverse_scale: λ, the generator receives ``-λ ·`` the gradient of the algorithm's loss (1.0).
        seed: the generator's initial weights and its noise stream (its own ``torch.Generator``,
            seeded per call from (seed, rank, call count); the global RNG is never touched).
        sync_grads: average the generator's gradients over the DDP ranks in its step (True).
        enabled: False: the views pass unchanged (nothing else of the run changes).
        gap_interval: every ``gap_interval``-th iteration log ``hvs_gen/hardness_gap``: the
            algorithm's loss on the generated pair minus its loss on the input pair, both
            from the selection's exact per-sample scorer at the step's weights (no gradients;
            parameters, BatchNorm statistics, queues and momentum networks left as they were).
            Costs about 4 extra no-grad view forwards on those iterations; 0 (default): off.
            SimSiam, SimCLR, BYOL, MoCo, MoCoV3.
        log_stats: put ``hvs_gen/*`` scalars into the MessageHub (and so the log): ``eps`` (current
            budget), ``delta`` (mean ``|δ|`` per image before the clamp to the pixel range: ε),
            ``realised`` (after the clamp, ≤ ε), ``loss`` (the generator's loss, ``-λ ·`` the
            algorithm's loss), ``hardness_gap`` (with ``gap_interval``) and, once a generator step
            was skipped for non-finite gradients (e.g. an AMP overflow), ``skipped`` (the running count).

    The generator's weights, Adam state, schedule position, step count and noise-stream position are
    saved in the runner's checkpoints (key ``hvs_generator``) and restored on resume: a resumed run
    continues exactly as an uninterrupted one. With gradient accumulation (``accumulative_counts``)
    the generator steps when the runner's optimizer does.

    An unknown option raises a TypeError naming it, the closest valid name and every valid one; ε
    outside (0, 1] a ValueError; an algorithm that does not train on a pair of views (one view,
    more than two views without ``HardViewSelectionHook``, SwAV multi-crop) a ValueError naming the fix.
    """

    priority = "NORMAL"

    def __init__(
        self,
        eps: Optional[float] = 0.05,
        eps_start: Optional[float] = None,
        eps_end: Optional[float] = None,
        ramp_epochs: float = 0,
        shared: bool = True,
        width: int = 32,
        n_blocks: int = 3,
        stem_kernel: int = 9,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        reverse_scale: float = 1.0,
        seed: int = 0,
        sync_grads: bool = True,
        enabled: bool = True,
        gap_interval: int = 0,
        log_stats: bool = True,
        **unknown,
    ) -> None:
        if unknown:  # a misspelt option (e.g. from a config dict): name it, list the valid ones
            raise TypeError(unknown_generator_options_message(unknown))
        if isinstance(gap_interval, bool) or not isinstance(gap_interval, int) or gap_interval < 0:
            raise ValueError(f"HardViewGeneratorHook: gap_interval must be an int >= 0 (0: no hardness gap), got {gap_interval!r}")
        for name, value in (("shared", shared), ("sync_grads", sync_grads), ("enabled", enabled), ("log_stats", log_stats)):
            if not isinstance(value, bool):
                raise TypeError(f"HardViewGeneratorHook: {name} must be True or False, got {value!r}")
        self.options: dict[str, Any] = dict(
            eps=eps,
            eps_start=eps_start,
            eps_end=eps_end,
            ramp_epochs=ramp_epochs,
            shared=shared,
            width=width,
            n_blocks=n_blocks,
            stem_kernel=stem_kernel,
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            reverse_scale=reverse_scale,
            seed=seed,
            sync_grads=sync_grads,
            enabled=enabled,
        )
        # built now to validate the options early (construction errors at config time); rebuilt in
        # before_run with the data preprocessor's normalisation (same seed: the same weights)
        self.generator: HardViewGenerator = self._build()
        self.gap_interval, self.log_stats = gap_interval, log_stats
        self.algorithm: Optional[str] = None
        self._handle = None  # the forward hook on the data preprocessor
        self._armed = False
        self._iter_based = False
        self._pending_state: Optional[dict] = None  # a checkpoint loaded before before_run
        self._ready = False  # before_run has built the generator with the preprocessor's normalisation
        self._gap: Optional[float] = None
        self._gap_selector: Optional[HardViewSelector] = None
        self._dtype_warned = False
        self._gap_due = False
        self._model: Any = None
        self.last_gap_losses: Optional[dict] = None  # the two scored losses behind the last hardness gap

    def _build(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> HardViewGenerator:
        norm: dict[str, Any] = {} if mean is None or std is None else dict(channels=len(mean), mean=tuple(mean), std=tuple(std))
        try:
            return HardViewGenerator(**norm, **self.options)
        except ValueError as exc:
            message = str(exc)
            if "eps" in message:
                message += " (in [0, 1] pixel units: 1/255 of the 0-255 scale of MMSelfSup's views; 0.05 is 12.75 grey levels)"
            raise ValueError(f"HardViewGeneratorHook: {message}") from None

    # ------------------------------------------------------------------ setup
    def before_run(self, runner) -> None:
        model = unwrap(runner.model)
        mean, std = preprocessor_normalisation(getattr(model, "data_preprocessor", None))
        self.generator = self._build(mean, std)
        if self._pending_state is not None:  # a checkpoint loaded before this point
            self.generator.load_state_dict(self._pending_state)
            self._pending_state = None
        self._ready = True
        loading = getattr(runner, "_resume", False) or getattr(runner, "_load_from", None)
        if loading and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ:
            # mmengine 0.10 checkpoints hold numpy/python objects: torch >= 2.6 refuses them with its
            # default weights_only=True load ("Weights only load failed")
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
            runner.logger.warning(
                "HardViewGeneratorHook: set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 so that mmengine can "
                "resume / load its checkpoint under torch >= 2.6 (only load checkpoints you trust)"
            )

    def before_train(self, runner) -> None:
        from mmengine.runner import IterBasedTrainLoop

        model = unwrap(runner.model)
        self.algorithm = algorithm_name(model) or type(model).__name__
        self._model = model
        self._iter_based = isinstance(runner.train_loop, IterBasedTrainLoop)
        selection = [h for h in runner.hooks if isinstance(h, HardViewSelectionHook)]
        if len([h for h in runner.hooks if isinstance(h, HardViewGeneratorHook)]) > 1:
            raise ValueError("HardViewGeneratorHook appears more than once in custom_hooks: keep one")
        self._check_pipeline(runner, selection[0] if selection else None)
        if self.gap_interval:
            if self.algorithm not in GAP_ALGORITHMS:
                raise ValueError(
                    f"HardViewGeneratorHook(gap_interval={self.gap_interval}): the hardness gap is measured with "
                    f"the exact per-sample scorer, which exists for {', '.join(GAP_ALGORITHMS)}, not "
                    f"{self.algorithm}: set gap_interval=0"
                )
            self._gap_selector = HardViewSelector(2, ordered=self.algorithm == "MoCo", seed=0)
        if selection and selection[0].reuse_target and self.generator.enabled:
            runner.logger.warning(
                "HardViewGeneratorHook: HardViewSelectionHook(reuse_target=True) has no effect with the generator "
                "(the momentum network runs on the generated views, not the selected ones): drop reuse_target"
            )
        preprocessor = model.data_preprocessor
        if self._handle is not None:
            self._handle.remove()
        self._handle = preprocessor.register_forward_hook(self._on_preprocess, with_kwargs=True)
        sched = self.generator.schedule
        eps = (
            f"eps {sched.eps_end:g}"
            if sched.ramp_epochs == 0 or sched.eps_start == sched.eps_end
            else f"eps {sched.eps_start:g} -> {sched.eps_end:g} over {sched.ramp_epochs:g} epochs"
        )
        runner.logger.info(
            f"HardViewGeneratorHook: {self.algorithm}, {eps} ([0, 1] pixel units), "
            f"{'one shared generator' if self.generator.shared else 'a pair of generators'}"
            + (" after HardViewSelectionHook (generates from the selected pair)" if selection else "")
            + ("" if self.generator.enabled else " -- DISABLED (enabled=False): views pass unchanged")
        )

    def _check_pipeline(self, runner, selection: Optional[HardViewSelectionHook]) -> None:
        """A pair of views must reach the algorithm: MultiView num_views sums to 2, or to the
        selection hook's n_views (it then picks the pair)."""
        loader = getattr(runner.train_loop, "dataloader", None)
        views = find_multiviews(getattr(loader, "dataset", None))
        if not views:
            runner.logger.warning(
                "HardViewGeneratorHook: no MultiView transform found in the train pipeline; the pair of "
                "views is checked on every batch instead"
            )
            return
        made = list(views[0].num_views)
        have = sum(made)
        if selection is not None:
            if have > selection.n_views:  # SwAV multi-crop: local crops beside the global pair
                raise ValueError(
                    f"HardViewGeneratorHook generates the pair of views of two-view algorithms; the pipeline's "
                    f"MultiView num_views={made} adds {have - selection.n_views} local crops to the "
                    f"{selection.n_views} candidates (multi-crop): use MultiView num_views={[selection.n_views]} "
                    "(SwAV: num_crops=[2]), or remove HardViewGeneratorHook"
                )
            return
        if have == 2:
            return
        if self.algorithm == "SwAV" and len(made) == 2:
            raise ValueError(
                f"HardViewGeneratorHook generates the pair of views of two-view algorithms; SwAV multi-crop "
                f"(MultiView num_views={made}: 2 global crops and {made[1]} local ones) is not supported: use "
                "num_crops=[2] in the SwAV loss with MultiView num_views=[2], or remove HardViewGeneratorHook"
            )
        if have < 2:
            raise ValueError(
                f"HardViewGeneratorHook needs an algorithm that trains on a pair of views (SimCLR, MoCo, BYOL, "
                f"SimSiam, ...); the train pipeline makes one view per image (MultiView num_views={made}) for "
                f"{self.algorithm}: remove HardViewGeneratorHook from custom_hooks for this algorithm"
            )
        two = "[1, 1]" if len(made) == 2 else "2"
        raise ValueError(
            f"HardViewGeneratorHook generates the pair of views the algorithm trains on, but the train pipeline "
            f"makes {have} views per image (MultiView num_views={made}) and {self.algorithm} would use only part "
            f"of them: add dict(type='HardViewSelectionHook', n_views={have}) to custom_hooks to select the pair "
            f"first, or set num_views={two} in MultiView (train_dataloader.dataset.pipeline)"
        )

    # ------------------------------------------------------------------ schedule
    def before_train_epoch(self, runner) -> None:
        if not self._iter_based:
            self.generator.set_epoch(runner.epoch)

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        if self._iter_based:
            try:
                per_epoch = len(runner.train_loop.dataloader)
            except TypeError:
                per_epoch = 0
            self.generator.set_epoch(runner.iter / per_epoch if per_epoch else 0)
        else:
            self.generator.set_epoch(runner.epoch)
        self._gap = None
        self._armed = self._handle is not None
        self._gap_due = bool(self.gap_interval) and (runner.iter % self.gap_interval == 0)

    # ------------------------------------------------------------------ generation (inside train_step)
    def _on_preprocess(self, module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook on the data preprocessor: in train_step's call, the two normalised views ->
        the generated views (gradient reversal on the way back). Every other call: unchanged."""
        if not self._armed or not torch.is_grad_enabled():
            return None
        training = kwargs.get("training", args[1] if len(args) > 1 else False)
        if not training:
            return None
        self._armed = False  # once per iteration: train_step's call
        is_dict = isinstance(output, dict)
        views: Any = output.get("inputs") if is_dict else (output[0] if isinstance(output, (tuple, list)) else None)
        self._check_views(views, args[0] if args else kwargs.get("data"))
        if not self.generator.enabled:
            return None
        generated = list(self.generator(views[0], views[1]))
        if self._gap_due:
            self._gap = self._hardness_gap(module, list(views), [g.detach() for g in generated])
        if is_dict:
            return {**output, "inputs": generated}
        return type(output)([generated, *output[1:]])

    def _check_views(self, views: Any, data: Any) -> None:
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            got = f"{len(views)} view(s)" if isinstance(views, (list, tuple)) else type(views).__name__
            raise ValueError(
                f"HardViewGeneratorHook generates the pair of views of two-view algorithms, but {self.algorithm}'s "
                f"train_step got {got} from its data preprocessor: use MultiView num_views=2 (or [1, 1]) in the "
                "train pipeline, add HardViewSelectionHook to select the pair from N candidates, or remove "
                "HardViewGeneratorHook for this algorithm"
            )
        for i, v in enumerate(views):
            if not isinstance(v, torch.Tensor) or v.dim() != 4:
                raise ValueError(
                    f"HardViewGeneratorHook: view {i} after the data preprocessor is "
                    f"{type(v).__name__ if not isinstance(v, torch.Tensor) else list(v.shape)}, "
                    "expected an image batch [B, C, H, W]"
                )
        raw = data.get("inputs") if isinstance(data, dict) else None
        if (
            not self._dtype_warned
            and isinstance(raw, (list, tuple))
            and raw
            and isinstance(raw[0], torch.Tensor)
            and raw[0].dtype != torch.uint8
        ):
            self._dtype_warned = True
            warnings.warn(
                f"HardViewGeneratorHook: the raw views are {raw[0].dtype}, not uint8: the budget assumes "
                "pixel values on the 0-255 scale (eps in units of 1/255 of it)",
                stacklevel=2,
            )

    def _hardness_gap(self, preprocessor, inputs: list, generated: list) -> float:
        """The algorithm's loss on the generated pair minus on the input pair (exact scorer, no
        gradients, the model's state preserved), at the weights this step uses."""
        model, sel, algorithm = self._model, self._gap_selector, self.algorithm
        assert model is not None and sel is not None and algorithm is not None  # set in before_train
        row = next(i for i, (a, b) in enumerate(sel.pairs.tolist()) if (a, b) == (0, 1))
        with sel.scoring([model]):
            before = score_pairs(algorithm, model, sel, [v.detach() for v in inputs])[row].mean()
            after = score_pairs(algorithm, model, sel, generated)[row].mean()
        self.last_gap_losses = {"input": float(before), "generated": float(after)}
        return float(after - before)

    # ------------------------------------------------------------------ the generator's step
    def after_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None, outputs=None) -> None:
        if self._armed:
            self._armed = False
            raise RuntimeError(
                f"HardViewGeneratorHook: {type(unwrap(runner.model)).__name__}.train_step did not call its "
                "data_preprocessor(data, training=True) with gradients enabled, so no view was generated: the hook "
                "needs mmengine's train_step (BaseModel / MMDistributedDataParallel); remove it for this model"
            )
        loss = outputs.get("loss") if isinstance(outputs, dict) else None
        loss = loss if isinstance(loss, torch.Tensor) else None
        optim_wrapper = getattr(runner, "optim_wrapper", None)
        should_update = getattr(optim_wrapper, "should_update", None)
        if should_update is None or should_update():  # with accumulation: when the runner's optimizer steps
            self.generator.step(loss)
        elif loss is not None:
            self.generator.last_loss = -self.generator.reverse_scale * loss.detach()
        if self.log_stats:
            hub, prefix = runner.message_hub, "train/hvs_gen/"
            stats = self.generator.stats()
            for key in ("eps", "delta", "realised", "loss"):
                value = getattr(stats, key)
                if value is not None:
                    hub.update_scalar(prefix + key, float(value))
            if self._gap is not None:
                hub.update_scalar(prefix + "hardness_gap", self._gap)
            if stats.skipped:  # the running count: one value, so the logger's window mean is the count
                hub.log_scalars.pop(prefix + "skipped", None)
                hub.update_scalar(prefix + "skipped", float(stats.skipped))

    def after_train(self, runner) -> None:
        self._armed = False
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ------------------------------------------------------------ checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = _to_cpu(self.generator.state_dict())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            runner.logger.warning(
                "HardViewGeneratorHook: the checkpoint has no generator state "
                f"({CHECKPOINT_KEY!r}); the generator starts from its initial weights"
            )
            return
        self.generator.load_state_dict(state)
        if not self._ready:  # runner.load_checkpoint(...) before train(): before_run rebuilds, then loads it
            self._pending_state = state


__all__ = ["HardViewGeneratorHook", "generator_hook_options", "preprocessor_normalisation"]


def _register() -> list[str]:
    """Register the hook in MMSelfSup's and MMPretrain's HOOKS registries (where installed), else
    in mmengine's, as the selection hook is (``custom_hooks = [dict(type='HardViewGeneratorHook')]``)."""
    import importlib

    done = []
    for host in ("mmselfsup", "mmpretrain"):
        try:
            hooks = importlib.import_module(f"{host}.registry").HOOKS
        except Exception:  # host not installed (or broken)
            continue
        if hooks._module_dict.get("HardViewGeneratorHook") is not HardViewGeneratorHook:
            hooks.register_module(name="HardViewGeneratorHook", module=HardViewGeneratorHook, force=True)
        done.append(host)
    if not done:
        from mmengine.registry import HOOKS

        HOOKS.register_module(name="HardViewGeneratorHook", module=HardViewGeneratorHook, force=True)
        done.append("mmengine")
    return done


registered_in = _register()
