"""Argmax selection of the hardest pair per sample and gathering of the hard batch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .devices import to_device

Views = Union[Sequence[torch.Tensor], torch.Tensor]


def argmax_with_fallback(losses: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample argmax over candidates of ``losses: [P, M]``.

    Ties go to the lowest candidate index. Non-finite losses (NaN, ±inf) never win. A sample
    whose candidates are all non-finite gets a random candidate drawn from ``generator`` (the
    selector's own) and is flagged. Returns ``index: [M]`` (long) and ``fallback: [M]`` (bool).
    """
    if losses.dim() != 2 or losses.shape[0] < 1:
        raise ValueError(f"losses must be [P candidates, M samples] with P >= 1, got {list(losses.shape)}")
    finite = torch.isfinite(losses)
    masked = torch.where(finite, losses, torch.full_like(losses, float("-inf")))
    index = masked.argmax(dim=0)  # first maximum on ties (documented torch behaviour)
    fallback = ~finite.any(dim=0)
    # One draw per sample from the (CPU) generator every call, used where a sample falls back:
    # no host read of the device's fallback mask (no sync), and the same draws on every device.
    draw = torch.randint(losses.shape[0], (losses.shape[1],), generator=generator)
    index = torch.where(fallback, to_device(draw, index.device), index)
    return index, fallback


class HVSFallbackWarning(UserWarning):
    """Some samples had no finite candidate loss (NaN/inf model outputs) in a selection step."""


def warn_fallbacks(fallback: torch.Tensor, what: str = "pair loss", stacklevel: int = 3) -> int:
    """Warn (``HVSFallbackWarning``) when ``fallback: [M]`` flags samples whose candidates were all
    non-finite; returns their count. Adapters call it after every selection (on a device tensor
    this waits for the device; see :class:`~hvs_plugins.deferred.DeferredFallbackWarnings`)."""
    return warn_fallback_count(int(fallback.sum()), fallback.numel(), what, stacklevel + 1)


def warn_fallback_count(n: int, n_samples: int, what: str = "pair loss", stacklevel: int = 3) -> int:
    """:func:`warn_fallbacks` from a count already on the host (``n`` of ``n_samples``)."""
    if n:
        warnings.warn(
            f"HVS: {n} of {n_samples} samples had no finite {what} (NaN/inf in the model's "
            "outputs during selection); they train on a random candidate pair drawn from the "
            "selector's own generator. Training continues; if this repeats, look for overflow "
            "(autocast_dtype, resolution_scale) or bad inputs.",
            HVSFallbackWarning,
            stacklevel=stacklevel,
        )
    return n


EMPTY_BATCH = (
    "HVS got an empty batch (0 samples in a candidate view): there is nothing to select; skip empty "
    "batches before the training step (e.g. a sampler or filter that can yield none), or use "
    "drop_last=True in the DataLoader"
)


def _not_a_tensor(views: Sequence[object]) -> Optional[str]:
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor):
            return (
                f"candidate view {i} is a {type(v).__name__}, not a torch.Tensor: HVS needs the N "
                "candidate views as tensors [M, C, H, W] (a list of N tensors or one [N, M, ...] "
                "tensor); end each view transform with ToTensor / ToImage + ToDtype, or collate "
                "the views into tensors"
            )
    return None


def check_candidate_views(
    views: Views,
    n_views: Optional[int] = None,
    modules: Sequence[torch.nn.Module] = (),
    same_shape: bool = True,
) -> list[torch.Tensor]:
    """The adapters' entry check of a batch's candidate views: N tensors ``[M, ...]`` (a list or
    one ``[N, M, ...]`` tensor), ``n_views`` of them if given, at least one sample (a batch that is
    valid but cannot be scored, e.g. 1 sample under train-mode BatchNorm, is
    :func:`~hvs_plugins.unscorable.unscorable_reason`'s; ``modules`` is kept for callers).
    ``same_shape=False`` for multi-crop lists (globals and locals differ). Every failure names
    the cause and the fix; returns the views as a list."""
    if isinstance(views, torch.Tensor):
        vs = as_view_list(views, n_views)
    else:
        if not isinstance(views, (list, tuple)):
            raise TypeError(
                f"candidate views must be a list of N tensors [M, C, H, W] (or one [N, M, ...] tensor), got {type(views).__name__}"
            )
        bad = _not_a_tensor(views)
        if bad:
            raise TypeError(bad)
        vs = as_view_list(views, n_views) if same_shape else list(views)
    if not vs:
        raise ValueError("no candidate views: the batch holds 0 views; make the data pipeline emit the N candidates")
    m = vs[0].shape[0] if vs[0].dim() else 0
    if m == 0 or any(v.dim() == 0 or v.shape[0] == 0 for v in vs):
        raise ValueError(EMPTY_BATCH)
    return vs


def as_view_list(views: Views, n_views: Optional[int] = None, same_shape: bool = True) -> list[torch.Tensor]:
    """Views as a list of N tensors ``[M, ...]`` (from a list or a ``[N, M, ...]`` tensor), checked
    for count and (``same_shape``) equal shapes."""
    if isinstance(views, torch.Tensor):
        if views.dim() < 2:
            raise ValueError(f"a views tensor must be [N, M, ...], got shape {list(views.shape)}")
        out = list(views.unbind(0))
    else:
        out = list(views)
        bad = _not_a_tensor(out)
        if bad:
            raise TypeError(bad)
    if n_views is not None and len(out) != n_views:
        raise ValueError(
            f"expected {n_views} candidate views per sample, got {len(out)}: make the data pipeline "
            f"emit n_views={n_views} views (or set n_views={len(out)})"
        )
    shapes = {tuple(v.shape) for v in out}
    if len(shapes) != 1 and same_shape:
        raise ValueError(
            f"candidate views must all have the same shape, got {sorted(shapes)}; for multi-crop "
            "pass global and local candidates separately"
        )
    return out


def gather_views(views: Views, choice: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample view picking. ``views``: N tensors ``[M, ...]`` (or ``[N, M, ...]``);
    ``choice: [M, K]`` view index per sample and slot. Returns K tensors ``[M, ...]`` where
    slot j of sample i is ``views[choice[i, j]][i]``."""
    vs = as_view_list(views)
    m = vs[0].shape[0]
    if choice.dim() != 2 or choice.shape[0] != m:
        raise ValueError(f"choice must be [M={m}, K], got {list(choice.shape)}")
    # range check on host tensors only: reading a device tensor would wait for the GPU
    if choice.device.type == "cpu" and choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= len(vs)):
        raise ValueError(f"choice indexes views 0..{len(vs) - 1} only")
    choice = to_device(choice, vs[0].device)
    out = []
    for j in range(choice.shape[1]):
        slot = vs[0].clone()
        for v in range(1, len(vs)):  # N in-place masked selects: no [N, M, ...] stack, no host sync
            mask = (choice[:, j] == v).view(-1, *([1] * (slot.dim() - 1)))
            torch.where(mask, vs[v], slot, out=slot)
        out.append(slot)
    return out


def gather_pair(views: Views, pairs: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected pair per sample: ``pairs: [P, 2]``, ``index: [M]`` → ``(view_a, view_b)``.
    Candidates may differ in size between the two slots (e.g. BYOL's two pipelines at 32 and
    24 px with cross pairs): each slot gathers only among the candidates its column of ``pairs``
    names, which must share one size."""
    vs = as_view_list(views, same_shape=False)
    choice = to_device(pairs, index.device)[index]  # [M, 2]
    if len({tuple(v.shape) for v in vs}) == 1:
        a, b = gather_views(vs, choice)
        return a, b
    out = []
    for j in range(2):
        allowed = sorted(set(pairs[:, j].tolist()))
        sizes = {tuple(vs[i].shape[1:]) for i in allowed}
        if len(sizes) > 1:
            all_sizes = ", ".join(f"{i}: {'x'.join(map(str, v.shape[-2:]))}" for i, v in enumerate(vs))
            raise ValueError(
                f"candidate views differ in size (sizes by candidate: {all_sizes}), and slot {j} of the scored pairs takes "
                "candidates of different sizes, which cannot form one batch. With two pipelines of different sizes "
                "(e.g. BYOLTransform with view 1 at 32 px and view 2 at 24 px) score cross pairs only: "
                "HVSLoss(criterion, candidates=candidate_views) with the CandidateViews of the loader (or "
                "groups='interleaved'), so that each slot takes one pipeline's candidates; otherwise give all "
                "candidates one size"
            )
        lut = torch.full((len(vs),), -1, dtype=torch.long)
        lut[torch.tensor(allowed)] = torch.arange(len(allowed))
        out.append(gather_views([vs[i] for i in allowed], to_device(lut, choice.device)[choice[:, j : j + 1]])[0])
    return out[0], out[1]


@dataclass
class Selection:
    """Result of a pair selection.

    ``index: [M]`` row of ``pairs`` chosen per sample; ``pairs: [P, 2]``; ``pair_losses: [P, M]``
    (float32, as scored); ``fallback: [M]`` samples whose pair losses were all non-finite.
    """

    index: torch.Tensor
    pairs: torch.Tensor
    pair_losses: torch.Tensor
    fallback: torch.Tensor

    @property
    def chosen(self) -> torch.Tensor:
        """``[M, 2]`` view indices of the selected pair per sample."""
        return to_device(self.pairs, self.index.device)[self.index]

    @property
    def selected_losses(self) -> torch.Tensor:
        """``[M]`` loss of the selected pair per sample."""
        return self.pair_losses.gather(0, self.index.unsqueeze(0)).squeeze(0)

    def gather(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """The hard pair ``(view_a, view_b)`` from the full-resolution candidates."""
        return gather_pair(views, self.pairs, self.index)


def select_hardest(pair_losses: torch.Tensor, pairs: torch.Tensor, generator: Optional[torch.Generator] = None) -> Selection:
    """Per sample, the pair with the highest loss (see :func:`argmax_with_fallback`).
    ``pair_losses: [P, M]``, ``pairs: [P, 2]``."""
    if pair_losses.dim() != 2 or pair_losses.shape[0] != pairs.shape[0]:
        raise ValueError(f"pair_losses must be [P={pairs.shape[0]}, M], got {list(pair_losses.shape)}")
    index, fallback = argmax_with_fallback(pair_losses, generator)
    return Selection(index, pairs, pair_losses, fallback)
