"""Learned hard views: a Viewmaker-style generator trained against the model (design §7).

A second route to harder views beside selection (Wu et al. 2022, "Learn by Challenging
Yourself"; Tamkin et al. 2021, Viewmaker networks). An image-to-image network adds a bounded
perturbation to each view; it is trained to *increase* the host's loss while the host's encoder
trains to decrease it. Torch only: no host framework is imported here.

Usage in any PyTorch training loop (the host's optimiser is untouched)::

    gen = HardViewGenerator(eps=0.05)              # mean/std: the views' normalisation
    x0, x1 = gen(x0, x1)                           # views -> generated views (fresh noise per call)
    loss = criterion(model(x0), model(x1))
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    gen.step(loss)                                 # the generator's own Adam step, then zero_grad

How the adversarial gradient gets there: the generated views pass through a gradient-reversal
function (identity forward, ``-λ·grad`` backward). The encoder's gradients are exactly those it
would get from the same views given as plain tensors; the generator's parameters receive the
negated gradient, so their own optimiser (a descent step) ascends the host's loss.

Budget: per image the perturbation ``δ = ε · tanh(r) / mean|tanh(r)|`` (``r`` the network's
output) has mean absolute value ε EXACTLY, in [0, 1] pixel units. The views are normalised by the
host (``(x - mean) / std``): the generator denormalises, adds δ, clamps to [0, 1] and normalises
again. Clamping can only lower the change actually applied: ``mean|clamp(x + δ) - x| ≤ ε``.
We keep δ (before the clamp, Viewmaker's definition) as the budgeted quantity and report the
realised post-clamp value beside it (:class:`GeneratorStats` ``delta`` / ``realised``).

Randomness: every call draws fresh uniform noise from the module's own ``torch.Generator``,
reseeded per call from ``(seed, rank, call count)``: reproducible from the seed, resumable from
the call count (:meth:`ViewGenerator.get_extra_state`, part of ``state_dict()``), different on
every DDP rank, and the global RNG streams are never touched (construction included).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .generator_net import (  # noqa: F401 (public names, re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_SIDE,
    ViewGenerator,
    ViewmakerNet,
    _check_eps,
    _check_views,
    budget_perturbation,
    mean_abs_per_sample,
)


# ----------------------------------------------------------------------------- gradient reversal
class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``-scale`` on the way back
    (only what lies *before* ``x`` in the graph — the generator — sees the reversed gradient)."""
    return _GradReverse.apply(x, float(scale))


# ----------------------------------------------------------------------------- schedule, stats
@dataclass
class EpsSchedule:
    """Progressive hardness (Wu et al. 2022): ε rises linearly from ``eps_start`` to ``eps_end``
    over ``ramp_epochs`` epochs, then stays at ``eps_end`` (``ramp_epochs=0``: ``eps_end`` from the
    start). ``value(epoch)`` accepts fractional epochs."""

    eps_start: float
    eps_end: float
    ramp_epochs: float = 0

    def __post_init__(self) -> None:
        _check_eps(self.eps_start, "eps_start")
        _check_eps(self.eps_end, "eps_end")
        if not isinstance(self.ramp_epochs, (int, float)) or not self.ramp_epochs >= 0:
            raise ValueError(f"ramp_epochs must be >= 0 (0: no ramp), got {self.ramp_epochs!r}")

    def value(self, epoch: float) -> float:
        if self.ramp_epochs == 0:
            return float(self.eps_end)
        t = min(max(float(epoch) / self.ramp_epochs, 0.0), 1.0)
        return float(self.eps_start + (self.eps_end - self.eps_start) * t)


@dataclass
class GeneratorStats:
    """For logging: ``eps`` the current budget; ``delta`` / ``realised`` mean ``mean|δ|`` per image of
    the last call before / after the clamp to [0, 1]; ``loss`` the generator's last loss
    (``-reverse_scale ·`` host loss given to ``step``); ``hardness_gap`` host loss on generated views
    minus host loss on the input views (when both were given); ``steps`` generator updates so far, ``skipped`` updates skipped for
    non-finite gradients."""

    eps: float
    delta: Optional[float] = None
    realised: Optional[float] = None
    loss: Optional[float] = None
    hardness_gap: Optional[float] = None
    steps: int = 0
    skipped: int = 0

    def as_dict(self, prefix: str = "generator/") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in asdict(self).items() if v is not None}


def hardness_gap(loss_generated: Union[torch.Tensor, float], loss_input: Union[torch.Tensor, float]) -> float:
    """Host loss on the generated views minus host loss on the input views (same model, same
    batch): > 0 means the generated views are harder. Reads tensors back (a sync on GPU)."""
    return float(loss_generated) - float(loss_input)


# ----------------------------------------------------------------------------- generation then selection
@dataclass
class GeneratedCandidates:
    """N generated candidates of a batch, for selection among them ("generation then selection").

    ``views``: N tensors ``[M, C, H, W]`` still attached to the generator's graph. Score the
    detached ``scoring_views`` (selection runs without gradients) and build the training pair with
    :meth:`pair` (an autograd-friendly gather), so that the generator is trained through the chosen
    views. With lightly's ``HVSLoss``::

        cands = gen.candidates(views)                      # views: N candidates (CandidateViews)
        x0, x1 = criterion.select(cands.scoring_views, model, train_views=cands.pair)
        loss = criterion(model(x0), model(x1))
        loss.backward(); optimizer.step(); optimizer.zero_grad(); gen.step(loss)

    With ``shared=False`` candidate k comes from generator ``k % 2``: select cross pairs only
    (``HVSLoss(..., groups="interleaved")``) so that every pair is one view of each generator.
    """

    views: list[torch.Tensor]
    scoring_views: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.scoring_views = [v.detach() for v in self.views]

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.views)

    def pair(self, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``chosen [M, 2]`` candidate index per sample and slot -> ``(view_a, view_b)``, each
        ``[M, C, H, W]``, gradients flowing to the generator."""
        m = self.views[0].shape[0]
        if chosen.dim() != 2 or chosen.shape != (m, 2):
            raise ValueError(f"chosen must be [M={m}, 2] candidate indices, got {list(chosen.shape)}")
        stack = torch.stack(self.views)  # [N, M, C, H, W]
        chosen = chosen.to(stack.device)
        rows = torch.arange(m, device=stack.device)
        return stack[chosen[:, 0], rows], stack[chosen[:, 1], rows]


# ----------------------------------------------------------------------------- the trainer
class HardViewGenerator:
    """Hard-view generator(s) with their own Adam optimiser, gradient reversal and ε schedule.

    Not an ``nn.Module`` on purpose: assigned to a model it stays out of ``model.parameters()``, so
    the host's optimiser never sees it. ``shared=True``: one generator for both views (Viewmaker);
    ``shared=False``: a pair, view a through G1 and view b through G2 (Wu et al.).
    ``eps`` (constant budget) or ``eps_start``/``eps_end``/``ramp_epochs`` (progressive hardness,
    :meth:`set_epoch`; ``eps_start``/``eps_end`` default to ``eps``). ``reverse_scale`` λ: the
    generator receives ``-λ ·`` the host's gradient.
    ``lr``/``betas``/``weight_decay``: its Adam. ``width``/``n_blocks``/``stem_kernel``: the network
    (:class:`ViewmakerNet`). ``mean``/``std``: the views' normalisation. ``seed``: weights and noise.
    ``sync_grads``: average the generator's gradients over DDP ranks in :meth:`step` (all_reduce, when
    a process group is initialised), as DDP does for the model. ``enabled=False``: views pass unchanged.
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        eps: Optional[float] = 0.05,
        eps_start: Optional[float] = None,
        eps_end: Optional[float] = None,
        ramp_epochs: float = 0,
        shared: bool = True,
        width: int = 32,
        n_blocks: int = 3,
        stem_kernel: int = 9,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        reverse_scale: float = 1.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        sync_grads: bool = True,
        enabled: bool = True,
    ) -> None:
        if eps is not None:
            _check_eps(eps, "eps")
        start = eps_start if eps_start is not None else eps  # eps_start / eps_end default to eps
        end = eps_end if eps_end is not None else eps
        if start is None or end is None:
            raise ValueError("give the budget: eps=0.05, or eps_start and eps_end (with ramp_epochs)")
        self.schedule = EpsSchedule(start, end, ramp_epochs)
        if not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"n_blocks must be an int >= 0 (default 3), got {n_blocks!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1 (default 32), got {width!r}")
        if not (isinstance(stem_kernel, int) and stem_kernel % 2 == 1 and stem_kernel > 0):
            raise ValueError(f"stem_kernel must be an odd int (3 or 9), got {stem_kernel!r}")
        if not reverse_scale > 0:
            raise ValueError(f"reverse_scale must be > 0 (the generator ascends the host's loss), got {reverse_scale!r}")
        self.config = dict(
            channels=channels,
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
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            seed=seed,
            sync_grads=sync_grads,
            enabled=enabled,
        )
        kw: dict[str, Any] = dict(width=width, n_blocks=n_blocks, stem_kernel=stem_kernel, mean=mean, std=std)
        self.networks = nn.ModuleList(ViewGenerator(channels, seed=seed + i, **kw) for i in range(1 if shared else 2))
        self.optimizer = torch.optim.Adam(
            self.networks.parameters(), lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay
        )
        self.shared, self.reverse_scale, self.sync_grads, self.enabled = shared, float(reverse_scale), sync_grads, enabled
        self.channels = channels
        self.epoch: float = 0
        self.steps = 0
        self.skipped = 0  # steps skipped for non-finite gradients
        self.last_loss: Optional[torch.Tensor] = None

    # -- construction from a config dict
    @classmethod
    def valid_keys(cls) -> list[str]:
        import inspect

        return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "HardViewGenerator":
        """Build from a dict (e.g. a YAML section); unknown keys are an error listing the valid ones."""
        if not isinstance(config, Mapping):
            raise TypeError(f"from_config takes a dict of {cls.__name__} options, got {type(config).__name__}")
        cls.check_keys(config)
        return cls(**dict(config))

    @classmethod
    def check_keys(cls, config: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming unknown keys (with the closest valid one) and listing the valid keys."""
        valid = cls.valid_keys()
        unknown = [k for k in config if k not in valid]
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), valid, 1)) else repr(k) for k in unknown]
            raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(hints)}; valid keys: {', '.join(valid)}")

    # -- schedule
    def set_epoch(self, epoch: float) -> None:
        """Position in the ε schedule (call at the start of every epoch; fractions allowed)."""
        if not epoch >= 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.epoch = epoch

    @property
    def eps(self) -> float:
        return self.schedule.value(self.epoch)

    # -- modules
    def parameters(self) -> Iterator[nn.Parameter]:
        return self.networks.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.networks.parameters()).device

    def to(self, device: Union[str, torch.device]) -> "HardViewGenerator":
        """Move the networks and the optimiser state (Adam's ``step`` counters stay on the CPU)."""
        self.networks.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(device)
        return self

    def train(self, mode: bool = True) -> "HardViewGenerator":
        self.networks.train(mode)
        return self

    def eval(self) -> "HardViewGenerator":
        return self.train(False)

    # -- generation
    def _run(self, x: torch.Tensor, which: int) -> torch.Tensor:
        if self.device != x.device:
            self.to(x.device)
        out = self.networks[which % len(self.networks)](x, self.eps)
        return reverse_gradient(out, self.reverse_scale) if torch.is_grad_enabled() else out

    def generate(self, x: torch.Tensor, which: int = 0) -> torch.Tensor:
        """One batch ``[B, C, H, W]`` through generator ``which`` (0; 1 for the second of a pair)."""
        _check_views(x, self.channels)
        return self._run(x, which) if self.enabled else x

    def __call__(self, *views: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``x0, x1 = gen(x0, x1)`` (or ``gen([x0, x1])``): the two views of a batch, each
        ``[B, C, H, W]`` normalised, -> the generated pair (view a through G1, b through G2 when
        ``shared=False``). Fresh noise on every call."""
        if len(views) == 1 and isinstance(views[0], (list, tuple)):
            views = tuple(views[0])
        if len(views) != 2:
            raise ValueError(
                f"{type(self).__name__} takes the pair of views of a batch, got {len(views)} view(s): "
                "x0, x1 = gen(x0, x1); for one tensor use gen.generate(x), for N candidates gen.candidates(views)"
            )
        for i, v in enumerate(views):
            _check_views(v, self.channels, f"view {i}")
        if not self.enabled:
            return views[0], views[1]
        return self._run(views[0], 0), self._run(views[1], 1)

    def candidates(self, views: Sequence[torch.Tensor]) -> GeneratedCandidates:
        """N candidate views (N tensors ``[M, C, H, W]``) -> :class:`GeneratedCandidates`, candidate k
        through generator ``k % 2`` when ``shared=False``, fresh noise each (generation then selection)."""
        if isinstance(views, torch.Tensor) or len(views) < 2:
            raise ValueError(
                "candidates() takes a list of N >= 2 candidate views [M, C, H, W] (e.g. batch[0] with CandidateViews(transform, n_views=4))"
            )
        for i, v in enumerate(views):
            _check_views(v, self.channels, f"candidate {i}")
        return GeneratedCandidates([self._run(v, k) if self.enabled else v for k, v in enumerate(views)])

    # -- training
    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _average_grads_over_ranks(self) -> None:
        dist = torch.distributed
        if not (self.sync_grads and dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size()
        if world == 1:
            return
        params = list(self.networks.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)  # every rank calls this: missing grads count as zeros
        flat /= world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def step(self, loss: Optional[torch.Tensor] = None) -> None:
        """The generator's update: call after the host's ``loss.backward()`` (and ``optimizer.step()``).
        Averages its gradients over DDP ranks, steps its Adam and zeroes its gradients; a step with
        non-finite gradients is skipped (counted in ``skipped``; reads one flag back, a sync on GPU).
        With AMP the gradients arrive multiplied by the loss scale: Adam is invariant to that scale
        (up to its ``eps``). ``loss`` (optional): the host loss, recorded as the generator's loss
        ``-λ · loss`` for :meth:`stats`."""
        if loss is not None:
            self.last_loss = -self.reverse_scale * loss.detach()
        if not self.enabled:
            return
        have = any(p.grad is not None for p in self.networks.parameters())
        distributed = self.sync_grads and torch.distributed.is_available() and torch.distributed.is_initialized()
        if not have and not distributed:
            warnings.warn(
                "no gradient reached the hard-view generator: feed the views from gen(x0, x1) to the "
                "loss and call gen.step() after loss.backward()",
                stacklevel=2,
            )
            return
        self._average_grads_over_ranks()
        grads = [p.grad for p in self.networks.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            self.skipped += 1  # inf/nan (e.g. an AMP overflow step): skip, as GradScaler does; same on every rank
            self.zero_grad()
            return
        self.optimizer.step()
        self.zero_grad()
        self.steps += 1

    # -- logging
    def stats(self, loss_generated: Optional[torch.Tensor] = None, loss_input: Optional[torch.Tensor] = None) -> GeneratorStats:
        """Current ε, last call's mean δ (before / after the clamp), last generator loss and — given the
        host loss on generated and on input views — the hardness gap. Reads device values (sync)."""
        deltas = [d for n in self.networks if isinstance(d := n.last_delta, torch.Tensor)]
        real = [r for n in self.networks if isinstance(r := n.last_realised, torch.Tensor)]
        gap = hardness_gap(loss_generated, loss_input) if loss_generated is not None and loss_input is not None else None
        return GeneratorStats(
            eps=self.eps,
            delta=float(torch.cat(deltas).mean()) if deltas else None,
            realised=float(torch.cat(real).mean()) if real else None,
            loss=float(self.last_loss) if self.last_loss is not None else None,
            hardness_gap=gap,
            steps=self.steps,
            skipped=self.skipped,
        )

    # -- checkpointing
    def generator_state_dict(self) -> list[dict]:
        """The noise streams' positions only (one per generator); also part of :meth:`state_dict`."""
        return [n.get_extra_state() for n in self.networks]

    def load_generator_state_dict(self, state: Sequence[dict]) -> None:
        for n, s in zip(self.networks, state):
            n.set_extra_state(s)

    def state_dict(self) -> dict:
        """Weights (with the noise-stream positions), Adam state, schedule position, step count."""
        return {
            "networks": self.networks.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "steps": self.steps,
            "skipped": self.skipped,
            "shared": self.shared,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if bool(state.get("shared", self.shared)) != self.shared:
            raise ValueError(
                f"checkpoint was saved with shared={state['shared']}, this generator has "
                f"shared={self.shared}: build it with shared={state['shared']}"
            )
        self.networks.load_state_dict(state["networks"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.steps, self.skipped = state["epoch"], int(state["steps"]), int(state.get("skipped", 0))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps:g}, shared={self.shared}, steps={self.steps}, "
            f"networks={len(self.networks)}x ViewmakerNet)"
        )
