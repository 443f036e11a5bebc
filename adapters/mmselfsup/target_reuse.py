"""``HardViewSelectionHook(reuse_target=True)``: the momentum network's selection outputs of the
chosen views handed to the training step of BYOL / MoCo v3, whose ``loss()`` then skips its own
momentum forward (2 forwards of B views per HVS step).

``loss()`` first steps the momentum network (``update_parameters``) and then forwards both views
through it. So that the reused outputs are the ones ``loss()`` would compute, the selection
forwards the candidates through a *shadow* copy of the momentum network brought to exactly those
post-update weights by the host's own ``update_parameters`` (the real network is not touched).
For the training step a temporary ``forward`` on the momentum network returns the cached output
only for an input equal (``torch.equal``) to the preprocessed chosen view and only if the real
network's weights and buffers then equal the shadow's (bitwise); any other call runs the real
forward. It is removed after the iteration.

Exact only when the output per sample depends neither on the rest of the batch nor on the RNG:
no BatchNorm or dropout / drop-path in train mode in the momentum network (e.g. GroupNorm or
LayerNorm networks, or one kept in eval mode), the selection at full resolution in float32 on the
views the step trains on. Anything else is refused with the reason (:func:`check_reuse_options`,
:func:`check_reuse_model`).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

# the core's scan (BatchNorm in train mode; dropout, attention dropout, drop-path / stochastic depth
# with a rate > 0 in train mode), shared with the lightly and solo-learn adapters
from hvs_plugins.per_sample import per_sample_violations

# the momentum network loss() forwards both views through, per algorithm
MOMENTUM_NETWORK = {"BYOL": "target_net", "MoCoV3": "momentum_encoder"}


def check_reuse_options(score_layer: Optional[str], proxy: bool, resolution_scale: float, autocast_dtype: Optional[torch.dtype]) -> None:
    """At construction: options under which the selection's momentum outputs are not the step's."""
    if score_layer is not None:
        raise ValueError(
            "reuse_target=True cannot be combined with score_layer: layer scoring never runs the "
            "momentum network, so there is nothing to reuse. Drop one of them."
        )
    if proxy:
        raise ValueError("reuse_target=True is for BYOL and MoCoV3 (exact scoring), not with proxy=True: drop one")
    if resolution_scale != 1.0:
        raise ValueError(
            f"reuse_target=True needs selection at full resolution (resolution_scale=1.0, got {resolution_scale}): "
            "momentum outputs of downscaled views are not those of the training views. Drop reuse_target or "
            "the resolution scale."
        )
    if autocast_dtype is not None:
        raise ValueError(
            f"reuse_target=True needs the selection forward in float32 (autocast_dtype=None, got {autocast_dtype}): "
            "low-precision momentum outputs are not those the training step computes. Drop one of them."
        )


def check_reuse_model(algorithm: str, model: nn.Module, runner: Optional[object] = None) -> nn.Module:
    """Before training: the momentum network to reuse, or a ValueError saying why reuse would not
    be exact for this model."""
    if algorithm not in MOMENTUM_NETWORK:
        raise ValueError(
            f"reuse_target=True is for BYOL and MoCoV3 (loss() forwards both chosen views through a momentum "
            f"network); {algorithm} has no such forward to skip: drop reuse_target"
        )
    target = getattr(model, MOMENTUM_NETWORK[algorithm], None)
    if not (
        isinstance(target, nn.Module)
        and callable(getattr(target, "update_parameters", None))
        and isinstance(getattr(target, "steps", None), torch.Tensor)
    ):
        raise ValueError(
            f"reuse_target=True needs {algorithm}.{MOMENTUM_NETWORK[algorithm]} to be an mmengine averaged model "
            f"(update_parameters, steps), got {type(target).__name__}: drop reuse_target"
        )
    wrapper = getattr(runner, "optim_wrapper", None) if runner is not None else None
    kind = str(wrapper.get("type", "")) if isinstance(wrapper, dict) else type(wrapper).__name__
    if "Amp" in kind:  # an AmpOptimWrapper, built or still a config dict
        raise ValueError(
            f"reuse_target=True with {kind}: the training step runs the momentum network under "
            "autocast, the selection in float32, so their outputs differ. Drop reuse_target (or AMP)."
        )
    bad = per_sample_violations(target)
    if bad:
        raise ValueError(
            f"reuse_target=True is not exact for this {algorithm}: its momentum network "
            f"({MOMENTUM_NETWORK[algorithm]}) has {len(bad)} module(s) whose output per sample depends on the "
            f"batch or the RNG in train mode: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. The selection "
            "forwards other batches (all candidates) than the training step, so its outputs are not the step's. "
            "Drop reuse_target (standard ResNet + BatchNorm-neck configs), or use a momentum network without "
            "BatchNorm / dropout (e.g. GroupNorm / LayerNorm) or kept in eval mode."
        )
    return target


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class TargetReuse:
    """Shadow momentum network for the selection, cached outputs and the temporary forward for
    the training step (one instance per hook)."""

    def __init__(self, algorithm: str, target: nn.Module) -> None:
        self.algorithm = algorithm
        self.target = target
        # not a submodule of the model: checkpoints, optimizers and DDP never see it
        self.shadow = copy.deepcopy(target).requires_grad_(False)
        self._slots: list[dict] = []
        self._installed = False
        self.hits = 0  # momentum forwards skipped in the latest iteration
        self.misses = 0  # calls that ran the real forward while the cache was set

    def prepare(self, model: nn.Module) -> nn.Module:
        """The shadow at the weights loss() will forward with this step: the real network's state
        then the host's own update from the online backbone + neck (the real network is untouched)."""
        self.remove()
        bad = per_sample_violations(self.target)  # the mode may have changed since before_train
        if bad:
            raise ValueError(
                f"reuse_target=True: the momentum network is now in train mode with {', '.join(bad[:4])} (batch- or "
                "RNG-dependent outputs), so reuse would not be exact. Drop reuse_target or keep it in eval mode."
            )
        for s, t in zip(self.shadow.modules(), self.target.modules()):
            s.training = t.training
        with torch.no_grad():
            self.shadow.load_state_dict(self.target.state_dict())
            self.shadow.update_parameters(nn.Sequential(model.backbone, model.neck))
        return self.shadow

    def cache(self, chosen_inputs: tuple[torch.Tensor, torch.Tensor], outputs: torch.Tensor, chosen: torch.Tensor) -> None:
        """``chosen_inputs``: the preprocessed chosen views ``([M, C, H, W], [M, C, H, W])`` (what
        loss() will get); ``outputs: [N, M, D]`` the shadow's outputs of all N candidates;
        ``chosen: [M, 2]`` candidate indices. Installs the forward."""
        m = torch.arange(chosen.shape[0], device=outputs.device)
        c = chosen.to(outputs.device)
        self._slots = [dict(x=chosen_inputs[j], out=outputs[c[:, j], m], used=False) for j in range(2)]
        self._verified: Optional[bool] = None
        self.hits = self.misses = 0
        target, real_forward = self.target, type(self.target).forward.__get__(self.target)

        def forward(*args, **kwargs):
            if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                x = args[0]
                for slot in self._slots:
                    if (
                        not slot["used"]
                        and x.shape == slot["x"].shape
                        and x.device == slot["x"].device
                        and torch.equal(x, slot["x"])
                        and self._weights_match()
                    ):
                        slot["used"] = True
                        self.hits += 1
                        return (slot["out"].to(x.device),)  # the neck's output layout: a 1-tuple
            self.misses += 1
            return real_forward(*args, **kwargs)

        target.forward = forward  # instance attribute: shadows the class's forward for this iteration
        self._installed = True

    def _weights_match(self) -> bool:
        """The real network now holds the shadow's weights and buffers (loss() stepped it once,
        as the shadow was): checked once per iteration, bitwise."""
        if self._verified is None:
            self._verified = _same_state(self.target, self.shadow)
        return self._verified

    def remove(self) -> None:
        """Back to the class's forward; the cache is dropped."""
        if self._installed:
            self.target.__dict__.pop("forward", None)
            self._installed = False
        self._slots = []
