"""The selection runner: score all candidate pairs with the current model, without side effects."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .guard import preserve_state
from .pairs import check_n_views, make_pairs
from .selection import EMPTY_BATCH, Selection, Views, as_view_list, check_candidate_views, select_hardest
from .unscorable import UnscorableBatches, reason_from_error, unscorable_reason

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]
ForwardFn = Callable[[torch.Tensor], Outputs]
PairLossFn = Callable[..., torch.Tensor]


def check_resolution_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1:
        raise ValueError(
            f"resolution_scale must be in (0, 1] (got {scale!r}): 1.0 selects at full resolution, "
            "0.5 at half (the paper: 50% keeps accuracy)"
        )
    return float(scale)


def resize_views(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Antialiased bilinear downscale of a ``[B, C, H, W]`` batch by ``scale`` (integer dtypes such
    as raw uint8 images are resized in float and rounded back)."""
    if scale == 1.0:
        return x
    if x.dim() != 4:
        raise ValueError(f"resolution scaling needs [B, C, H, W] views, got {list(x.shape)}")
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    if x.is_floating_point():
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    info = torch.iinfo(x.dtype)
    return y.round_().clamp_(info.min, info.max).to(x.dtype)


class HardViewSelector:
    """Scores candidate pairs with the current model and picks the hardest per sample.

    ``n_views``: candidates per sample (N). ``groups``: two lists of candidate indices when the
    candidates come from two asymmetric pipelines (only cross pairs are valid). ``ordered``: score
    ordered pairs (k, l) ≠ (l, k) for asymmetric losses. ``resolution_scale``: selection on
    downscaled copies (training still uses the full views). ``chunk_size``: samples per selection
    forward (a chunk larger than the batch means the whole batch; the last batch of an epoch can
    be smaller). ``joint_views``: forward all N views of a chunk in one call (faster; BatchNorm
    then sees N·chunk views) instead of one call per view (the host's per-view batch, the default).
    ``autocast_dtype``: e.g. ``torch.bfloat16`` for the selection forward only. ``seed``: the
    selector's own generator (fallbacks, capped multi-crop search); the global RNG is never used.
    """

    def __init__(
        self,
        n_views: int = 4,
        groups: Optional[Sequence[Sequence[int]]] = None,
        ordered: bool = False,
        resolution_scale: float = 1.0,
        chunk_size: Optional[int] = None,
        joint_views: bool = False,
        autocast_dtype: Optional[torch.dtype] = None,
        seed: int = 0,
    ) -> None:
        check_n_views(n_views)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
        if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
            raise TypeError(f"autocast_dtype must be a torch.dtype such as torch.bfloat16, got {autocast_dtype!r}")
        self.n_views = n_views
        self.pairs = make_pairs(n_views, groups, ordered)
        self.resolution_scale = check_resolution_scale(resolution_scale)
        self.chunk_size = chunk_size
        self.joint_views = joint_views
        self.autocast_dtype = autocast_dtype
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.unscorable = UnscorableBatches()  # batches trained on a plain pair (1 sample under BatchNorm, ...)

    # -- state for checkpoints: the selector's generator is part of the training state
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    @contextlib.contextmanager
    def scoring(self, modules: Sequence[nn.Module]) -> Iterator[None]:
        """No-grad, state-preserving (and optionally autocast) context for selection forwards."""
        with preserve_state(modules), torch.no_grad():
            yield

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def forward_views(self, forward: ForwardFn, views: Views, n_views: Optional[int] = None) -> list[torch.Tensor]:
        """Run ``forward`` on every candidate view (call inside :meth:`scoring`).

        ``views``: N tensors ``[M, C, H, W]`` (or ``[N, M, C, H, W]``); ``forward`` maps a
        ``[B, C, H, W]`` batch to one tensor or a tuple of tensors with leading dim B. Returns one
        tensor ``[N, M, ...]`` (float32) per output.
        """
        vs = as_view_list(views, n_views, same_shape=self.joint_views)  # per-view forwards take any sizes
        m = vs[0].shape[0]
        per_view: list[list[list[torch.Tensor]]] = [[] for _ in vs]  # view -> chunk -> outputs
        for start, stop in chunk_bounds(m, self.chunk_size):
            parts = [resize_views(v[start:stop], self.resolution_scale) for v in vs]
            with self._autocast(parts[0].device):
                if self.joint_views:
                    outs = _as_tuple(forward(torch.cat(parts)))
                    split = [o.chunk(len(vs)) for o in outs]
                    for v in range(len(vs)):
                        per_view[v].append([s[v] for s in split])
                else:
                    for v, part in enumerate(parts):
                        per_view[v].append(list(_as_tuple(forward(part))))
        n_out = len(per_view[0][0])
        return [torch.stack([torch.cat([c[o] for c in per_view[v]]) for v in range(len(vs))]).float() for o in range(n_out)]

    def select(
        self,
        forward: ForwardFn,
        views: Views,
        pair_loss: PairLossFn,
        modules: Sequence[nn.Module],
    ) -> Selection:
        """Score every pair and select the hardest per sample.

        ``pair_loss(*outputs, pairs=pairs)`` gets the stacked ``[N, M, ...]`` outputs of
        :meth:`forward_views` and returns ``[P, M]``. ``modules``: every network the forward uses
        (their buffers, parameters and the RNG are left bitwise unchanged).
        """
        views = check_candidate_views(views, self.n_views, modules)
        reason = unscorable_reason(views, modules)
        if reason is None:
            try:
                with self.scoring(modules):
                    outputs = self.forward_views(forward, views, self.n_views)
                    losses = pair_loss(*outputs, pairs=self.pairs)
                return self.choose(losses)
            except ValueError as exc:
                reason = reason_from_error(exc)
                if reason is None:
                    raise
        return self.unscorable_selection(views[0].shape[0], reason)

    def unscorable_selection(self, m: int, reason: str) -> Selection:
        """A batch that cannot be scored (:mod:`~hvs_plugins.unscorable`): pair 0 (of i.i.d.
        candidates: a plain random pair) for all ``m`` samples, NaN pair losses; counted in
        ``self.unscorable`` (warns once)."""
        self.unscorable.record(reason, stacklevel=4)
        p = self.pairs.shape[0]
        return Selection(torch.zeros(m, dtype=torch.long), self.pairs, torch.full((p, m), float("nan")), torch.zeros(m, dtype=torch.bool))

    def choose(self, pair_losses: torch.Tensor) -> Selection:
        """Argmax per sample of ``pair_losses: [P, M]`` with this selector's generator."""
        return select_hardest(pair_losses.detach().float(), self.pairs, self.generator)


def chunk_bounds(m: int, chunk_size: Optional[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each selection chunk over M samples. A chunk larger than the batch is
    the whole batch; a 1-sample remainder joins the previous chunk (train-mode BatchNorm cannot
    normalise a single sample)."""
    if m < 1:
        raise ValueError(EMPTY_BATCH)
    chunk = m if chunk_size is None else min(chunk_size, m)
    bounds = [(s, min(s + chunk, m)) for s in range(0, m, chunk)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], m)]
    return bounds


def _as_tuple(out: Outputs) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(out)
    raise TypeError(f"the selection forward must return a tensor or a tuple of tensors, got {type(out).__name__}")
