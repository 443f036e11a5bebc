"""HVS with "static colour during selection" (paper Fig. 4 right) for lightly's view transforms.

A lightly view pipeline is split into its geometric part (RandomResizedCrop, flips, rotations) and
its photometric part (colour jitter, grayscale, blur, solarisation) + tensor tail (ToTensor,
Normalize). Per image, N geometric crops are cut; the selection sees them all with **one** shared
photometric draw (same colour for every candidate, so the pair losses differ by geometry only),
and the training step gets the chosen crops with their **own** independent photometric draws,
i.e. exactly the host's standard two-view distribution. With ``static_flip=True`` the flips join
the shared draw too (they commute with the pixel-wise colour ops), so the candidates differ by
their crop box only. With ``deferred=True`` only the two selected crops are coloured for training,
after the selection (the paper's order; N - 2 fewer photometric passes per image in the loader).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hvs_plugins import CandidateTransform

_GEOMETRIC = {
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomRotation",
    "RandomRotate",
    "RandomRotateDegrees",
    "CenterCrop",
    "Resize",
    "RandomCrop",
}
_TAIL = {"ToTensor", "Normalize", "ToImage", "ToDtype", "ConvertImageDtype", "PILToTensor"}


def _name(op: Any) -> str:
    """Class name; a RandomApply of geometric ops counts as its first (geometric) op."""
    if type(op).__name__ == "RandomApply" and all(_name(t) in _GEOMETRIC for t in op.transforms):
        return type(op.transforms[0]).__name__
    return type(op).__name__


def _ops(view_transform: Any) -> list:
    inner = getattr(view_transform, "transform", view_transform)  # lightly view transform -> Compose
    ops = getattr(inner, "transforms", None)
    if not isinstance(ops, (list, tuple)):
        raise TypeError(f"static colour needs a Compose-style view transform (a list of ops), got {type(view_transform).__name__}")
    return list(ops)


_FLIPS = {"RandomHorizontalFlip", "RandomVerticalFlip"}


def split_view_transform(view_transform: Any, flips_with_colour: bool = False) -> tuple[list, list, list]:
    """``(geometric, photometric, tail)`` op lists of a lightly view pipeline, in pipeline order.

    ``flips_with_colour``: flips go to the front of the photometric list (same distribution: a
    flip commutes with the crop's box and with pixel-wise colour ops). Raises if a geometric op
    follows a photometric one (the split would change the pipeline)."""
    geo, photo, tail, flips = [], [], [], []
    for op in _ops(view_transform):
        name = _name(op)
        if flips_with_colour and name in _FLIPS:
            if photo or tail:
                raise ValueError(f"{name} comes after photometric/tensor ops: cannot split the pipeline")
            flips.append(op)
        elif name in _TAIL:
            tail.append(op)
        elif name in _GEOMETRIC:
            if photo or tail:
                raise ValueError(
                    f"{name} comes after photometric/tensor ops in {type(view_transform).__name__}: "
                    "static colour needs the geometric ops (crop, flip, rotation) first"
                )
            geo.append(op)
        else:
            if tail:
                raise ValueError(f"{name} comes after the tensor conversion: cannot split the pipeline")
            photo.append(op)
    if not geo:
        raise ValueError(f"{type(view_transform).__name__} has no geometric op (RandomResizedCrop, ...)")
    return geo, flips + photo, tail


class _Chain:
    def __init__(self, ops: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(ops)  # `transforms` so that the core's box recorders find the crop

    def __call__(self, x: Any) -> Any:
        for op in self.transforms:
            x = op(x)
        return x


def _rng_state() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])


class StaticColourViews:
    """Candidates for HVS with static colour during selection.

    ``transform``: a lightly two-view transform with one view pipeline used twice
    (SimSiamTransform, SimCLRTransform, MoCoV2Transform); ``n_views`` candidates per image.
    Calling it returns ``(select_views, train_views, boxes)``: two lists of N tensors and the crop
    boxes ``[N, 4]``. ``select_views[c]`` and ``train_views[c]`` are the same crop, coloured with the
    image's shared photometric draw / with an independent one. Use with
    ``HVSLoss.select(select_views, model, train_views=train_views, boxes=boxes)``; a baseline run
    trains on ``train_views[0], train_views[1]`` (two standard views). ``static_flip``: the
    flips are shared during selection too (candidates then differ by their crop box only).

    ``deferred=True``: the second item is the N uncoloured crops (uint8 ``[3, H, W]`` tensors; a
    batch: N tensors ``[M, 3, H, W]``) and the training colour is drawn after the selection, for
    the two chosen crops only: ``HVSLoss.select(select_views, model, boxes=boxes,
    train_views=transform.colour_chosen(crops))``. Same training distribution, cheaper loader; and
    where the photometric ops are torchvision v2 ops, the shared draw colours the N candidates as
    one tensor batch (torchvision's tensor kernels: within a few uint8 levels of the PIL ones, mean < 1).
    """

    def __init__(self, transform: Any, n_views: int = 4, static_flip: bool = False, deferred: bool = False) -> None:
        ts = list(getattr(transform, "transforms", None) or [transform])
        if len({id(t) for t in ts}) != 1:
            raise ValueError(
                f"StaticColourViews needs one view pipeline used for both views (SimSiam/SimCLR/MoCo "
                f"transforms); {type(transform).__name__} has {len({id(t) for t in ts})} different ones"
            )
        if n_views < 2:
            raise ValueError(f"n_views must be >= 2, got {n_views}: HVS compares pairs; the paper uses 4")
        geo, photo, tail = split_view_transform(ts[0], flips_with_colour=static_flip)
        if deferred:  # a new pipeline: switched-off ops (p = 0, e.g. blur below 32 px) out of the way
            geo, photo = [op for op in geo if not _off(op)], [op for op in photo if not _off(op)]
        self.crops = CandidateTransform([_Chain(geo)], n_views)
        self.photometric = _Chain(photo)
        self.tail = _Chain(tail)
        self.n_views = n_views
        self.deferred = deferred
        # deferred: the shared draw colours the N candidates as one tensor batch (one pass, not N)
        self.batched = deferred and _batchable(photo + tail)

    def __call__(self, image: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        crops, boxes = self.crops(image)
        if self.batched and all(getattr(c, "mode", None) == "RGB" for c in crops):
            from torchvision import tv_tensors

            uint8 = [_as_uint8(c) for c in crops]
            x = self.tail(self.photometric(tv_tensors.Image(torch.stack(uint8))))  # [N, C, H, W], one draw
            return list(x.as_subclass(torch.Tensor).unbind(0)), uint8, boxes
        shared = _rng_state()
        select_views = []
        for crop in crops:  # the same photometric draw for every candidate: replay the RNG state
            _set_rng_state(shared)
            select_views.append(self.tail(self.photometric(crop)))
        if self.deferred:
            return select_views, [_as_uint8(c) for c in crops], boxes
        train_views = [self.tail(self.photometric(crop)) for crop in crops]  # independent draws
        return select_views, train_views, boxes

    def colour_chosen(self, crops: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``train_views`` for ``HVSLoss.select`` from a deferred batch's crops (N × ``[M, 3, H, W]``
        uint8): a function of the selection's ``chosen: [M, 2]`` that colours the two chosen crops
        of every sample with independent photometric draws (sample by sample, as the loader
        would) and returns ``(x0, x1)``, ``[M, C, H, W]`` each."""
        if not self.deferred:
            raise ValueError(
                "colour_chosen needs StaticColourViews(..., deferred=True): without it the "
                "loader already returns coloured train views; pass those as train_views"
            )
        if len(crops) != self.n_views:
            raise ValueError(f"expected the {self.n_views} crops of a deferred batch, got {len(crops)}")

        def train_pair(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            from PIL import Image
            from torchvision import tv_tensors

            idx = chosen.cpu().tolist()  # [M, 2]
            if len(idx) != crops[0].shape[0]:
                raise ValueError(f"chosen holds {len(idx)} samples, the crops {crops[0].shape[0]}")
            # per view: colour (own draw, PIL kernels as in the loader); per slot: the tensor tail
            # (ToTensor, Normalize: element-wise, so batched = view by view, bitwise)
            pair = [[_as_uint8(self.photometric(_as_image(crops[c][m], Image))) for c in row] for m, row in enumerate(idx)]
            return tuple(self.tail(tv_tensors.Image(torch.stack([p[k] for p in pair]))).as_subclass(torch.Tensor) for k in (0, 1))

        return train_pair


def _off(op: Any) -> bool:
    """An op that never changes its input: probability 0 (lightly's ``prob``, torchvision's ``p``)."""
    return getattr(op, "prob", None) == 0 or getattr(op, "p", None) == 0


def _batchable(ops: Sequence[Any]) -> bool:
    """Whether the ops colour a ``[N, C, H, W]`` tensor batch with one draw: torchvision v2 ops
    (lightly's ToTensor wraps them)."""
    from torchvision.transforms import v2

    for op in ops:
        inner = getattr(op, "transform", None) if type(op).__name__ == "ToTensor" else op
        if not isinstance(inner, v2.Transform):
            return False
    return True


def _as_uint8(crop: Any) -> torch.Tensor:
    """A geometric op's output (PIL image, mode RGB or L) as a uint8 ``[C, H, W]`` tensor (lossless)."""
    if getattr(crop, "mode", None) not in ("RGB", "L"):
        raise TypeError(
            f"StaticColourViews(deferred=True) needs PIL images of mode RGB or L (lightly's transforms "
            f"on PIL input), got {type(crop).__name__} {getattr(crop, 'mode', '')}"
        )
    arr = np.asarray(crop, dtype=np.uint8)
    return torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1).copy()).permute(2, 0, 1)


def _as_image(crop: torch.Tensor, image_module: Any) -> Any:
    """Inverse of :func:`_as_uint8`."""
    arr = crop.permute(1, 2, 0).cpu().numpy()
    return image_module.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
