"""Learned hard views (``hvs.generator``) inside a solo-learn method: the generator's part of the
method wrapper (:class:`~.method.HVSMethodMixin` inherits it).

After the selection (or, with ``hvs.enabled: false``, on the method's own crops) the two large crops
go through the core :class:`hvs_plugins.HardViewGenerator`; small crops pass unchanged. The generator
steps in ``on_train_batch_end``, after Lightning's ``optimizer.step()`` (with gradient accumulation
only on the batches where the method's optimiser stepped). Its logs: ``hvs_gen/eps``, ``delta``,
``realised``, ``hardness_gap`` (per generation), ``loss``, ``steps``, ``skipped`` (per step).

The mixin reads the wrapper's attributes (``hvs_config``, ``hvs_selector``, the scorers of
:class:`~.method_scorers.MethodScorers`); it imports no solo-learn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Sequence

import torch

from hvs_plugins import HardViewGenerator, HardViewSelector, make_pairs, unscorable_reason

from .config import HVSConfig, check_generator_method
from .generator import build_generator, large_crop_normalisation

# methods whose exact two-view scorer measures hvs_gen/hardness_gap (DINO: the two global crops' loss)
GAP_METHODS = ("simsiam", "simclr", "byol", "mocov2plus", "mocov3", "dino", "nnclr", "nnsiam", "nnbyol", "ressl", "supcon")


class GeneratorSteps:
    """The generator's hooks of the method wrapper: setup, generation, its step, its logs."""

    hvs_generator: Optional[HardViewGenerator]
    _hvs_gen_gap_selector: Optional[HardViewSelector]

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
