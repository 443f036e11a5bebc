"""``hvs.reuse_target: true``: the momentum network's selection outputs of the chosen views handed to
the training step of solo-learn's BYOL / MoCo v3, so that ``BaseMomentumMethod.training_step`` does
not forward the momentum network on them a second time.

How: during the selection the momentum forward's whole output dict (``feats`` and ``z`` / ``k``) is
kept for every candidate; after the choice, the two chosen views' rows are gathered. For that one
``training_step`` the method's ``momentum_forward`` is shadowed by an instance attribute that
returns the kept dict when called with exactly (``is``) one of the two selected view tensors, and
runs the real forward otherwise (small crops, any other caller).

Exact only when the training step's momentum forward would compute the same values, so refused
otherwise (ValueError naming the fix): at setup for other methods, ``resolution_scale < 1``,
``score_layer``, ``autocast`` and momentum networks with BatchNorm / dropout / drop-path in train
mode (standard solo-learn BYOL / MoCo v3 projectors have BatchNorm1d); at every reusing selection
for the modules the momentum forward actually ran (a mode flipped back to train, a subclass that
runs other modules) and for buffers it wrote (skipping its second forward would lose the write).

This module does not import solo-learn.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from hvs_plugins.per_sample import breaks_per_sample, modules_run, ran_violations

from .config import HVSConfig

REUSE_METHODS = ("byol", "mocov3")
_FIX = "set hvs.reuse_target: false (the default)"


def check_reuse_config(method: str, hvs: HVSConfig) -> None:
    """Setup: refuse settings under which the selection's momentum outputs are not the step's."""
    if method not in REUSE_METHODS:
        raise ValueError(f"hvs.reuse_target is implemented for solo-learn's momentum methods {list(REUSE_METHODS)}, not {method!r}: {_FIX}")
    if hvs.resolution_scale != 1.0:
        raise ValueError(
            f"hvs.reuse_target needs selection at full resolution (hvs.resolution_scale: 1.0, got "
            f"{hvs.resolution_scale}): momentum outputs of downscaled views are not the ones the training step "
            f"computes. Set hvs.resolution_scale: 1.0 or {_FIX}"
        )
    if hvs.score_layer is not None:
        raise ValueError(
            f"hvs.reuse_target cannot be combined with hvs.score_layer ({hvs.score_layer!r}): layer scoring does "
            f"not run the momentum network. Remove score_layer or {_FIX}"
        )
    if hvs.autocast is not None:
        raise ValueError(
            f"hvs.reuse_target cannot be combined with hvs.autocast ({hvs.autocast!r}): the selection's "
            f"low-precision momentum outputs differ from the training step's. Remove autocast or {_FIX}"
        )


def _refuse(found: list[str], when: str) -> None:
    """``found``: ``"where (why)"`` from :mod:`hvs_plugins.per_sample` (why: ``"BatchNorm1d"``,
    ``"Dropout, p=0.1"``, ...), grouped per top-level network and kind of module."""
    if not found:
        return
    tops: dict[tuple[str, str], list[str]] = {}
    for item in found:  # "momentum_projector has BatchNorm1d in train mode (momentum_projector.1)"
        where, why = item[:-1].split(" (", 1)
        tops.setdefault((where.split(".")[0], why.split(",")[0]), []).append(where)
    parts = [f"{top} has {kind} in train mode ({', '.join(w[:3])}{', ...' if len(w) > 3 else ''})" for (top, kind), w in tops.items()]
    raise ValueError(
        f"hvs.reuse_target needs momentum networks whose output per sample depends neither on the rest of the "
        f"batch nor on the RNG, so that the selection's momentum outputs equal the training step's; {when}: "
        f"{'; '.join(parts)}. {_FIX[0].upper() + _FIX[1:]}, or use momentum networks without BatchNorm / dropout / "
        "drop-path in train mode (e.g. LayerNorm instead of BatchNorm1d in the projectors)"
    )


def momentum_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The method's momentum networks (second element of each of solo-learn's ``momentum_pairs``) by name."""
    names = {id(m): n for n, m in model.named_modules()}
    return [(names.get(id(m), type(m).__name__), m) for _, m in model.momentum_pairs]


def check_momentum_networks(model: nn.Module, when: str = "in the method's momentum networks") -> None:
    """Refuse momentum networks that couple samples or draw random numbers in train mode (at
    setup, and again at each reusing selection: Lightning's ``train()`` may have flipped modes, and
    fused attention applies its dropout without calling the dropout module)."""
    found = [
        f"{top}.{n} ({why})" if n else f"{top} ({why})"
        for top, net in momentum_modules(model)
        for n, m in net.named_modules()
        if (why := breaks_per_sample(m)) is not None
    ]
    _refuse(found, when)


class MomentumRecorder:
    """Runs ``momentum_forward`` inside the selection's forward and keeps its whole output dict per
    call (as extra outputs stacked by the selector), checking each call can be reused exactly."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.keys: Optional[tuple[str, ...]] = None
        self.dtypes: dict[str, torch.dtype] = {}
        check_momentum_networks(model, "at this selection, in the method's momentum networks")

    def __call__(self, momentum_forward: Callable[[torch.Tensor], dict], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x: [B, C, H, W]`` → the momentum outputs ``[B, ...]`` in ``self.keys`` order."""
        bufs = [(n, b, b._version) for n, b in self.model.named_buffers()]
        with modules_run() as ran:
            out = momentum_forward(x)
        _refuse(ran_violations(ran, self.names), "the selection's momentum forward ran")
        wrote = [n for n, b, v in bufs if b._version != v]
        if wrote:
            raise ValueError(
                f"hvs.reuse_target: the momentum forward writes buffers ({wrote[:4]}), so skipping it in the training "
                f"step would change the training state; {_FIX}"
            )
        keys = tuple(out)
        bad = [k for k in keys if not (isinstance(out[k], torch.Tensor) and out[k].dim() >= 1 and out[k].shape[0] == x.shape[0])]
        if bad:
            raise ValueError(f"hvs.reuse_target needs momentum_forward to return per-sample tensors [B, ...]; {bad} are not: {_FIX}")
        if self.keys is None:
            self.keys, self.dtypes = keys, {k: out[k].dtype for k in keys}
        elif keys != self.keys:
            raise ValueError(f"momentum_forward returned keys {keys}, earlier {self.keys}: {_FIX}")
        return tuple(out[k] for k in keys)

    def chosen(self, stacked: Sequence[torch.Tensor], chosen: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per slot j of ``chosen: [M, 2]``, the output dict of the chosen views, from the stacked
        ``[N, M, ...]`` outputs (the selector stacks in float32: cast back to the forward's dtype)."""
        assert self.keys is not None and len(stacked) == len(self.keys)
        m = torch.arange(chosen.shape[0], device=stacked[0].device)
        c = chosen.to(stacked[0].device)
        return [{k: s[c[:, j], m].to(self.dtypes[k]) for k, s in zip(self.keys, stacked)} for j in range(2)]


@contextlib.contextmanager
def reusing_momentum_forward(model: nn.Module, cache: Sequence[tuple[torch.Tensor, dict]]) -> Iterator[list[int]]:
    """For the body (one ``training_step``), ``model.momentum_forward(X)`` returns a copy of the kept
    dict when ``X`` is one of the cached view tensors (identity), and the real forward otherwise.
    Yields the list of cache slots used (one entry per reused call)."""
    real = model.momentum_forward
    had = "momentum_forward" in model.__dict__
    previous = model.__dict__.get("momentum_forward")
    hits: list[int] = []

    def momentum_forward(X: torch.Tensor) -> Any:
        for slot, (x, out) in enumerate(cache):
            if X is x:
                hits.append(slot)
                return dict(out)  # the step adds keys (momentum classifier): keep the cache intact
        return real(X)

    model.momentum_forward = momentum_forward  # instance attribute shadows the method for this step only
    try:
        yield hits
    finally:
        if had:
            model.momentum_forward = previous
        else:
            del model.momentum_forward
