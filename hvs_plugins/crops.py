"""Crop-box recording for torchvision ``RandomResizedCrop`` pipelines, and IoU statistics.

Boxes are ``(top, left, height, width)`` relative to the source image (floats in [0, 1]), so boxes
from images of different sizes are comparable. :class:`CandidateTransform` makes N candidates
per image and returns their boxes ``[N, 4]`` with them, so the boxes travel with the batch
through a DataLoader (default collate stacks them to ``[M, N, 4]``).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch


def _image_hw(img: Any) -> tuple[int, int]:
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    if hasattr(img, "size") and not callable(img.size):  # PIL: (width, height)
        w, h = img.size
        return int(h), int(w)
    if hasattr(img, "shape"):  # numpy HWC
        return int(img.shape[0]), int(img.shape[1])
    raise TypeError(f"cannot read the size of a {type(img).__name__} image")


@lru_cache(maxsize=None)
def _recording_class(cls: type) -> type:
    """A subclass of a RandomResizedCrop class that stores its last box in ``last_box``
    (one class per base class; picklable, so DataLoader workers may use spawn/forkserver)."""

    class Recording(cls):  # type: ignore[misc, valid-type]
        last_box: Optional[tuple[float, float, float, float]] = None

        def __reduce_ex__(self, protocol: Any) -> tuple:
            # The class is made at run time: pickle the base class and rebuild the recorder.
            return (_rebuild_recorder, (cls, self.__dict__.copy()))

        def _store(self, img: Any, top: int, left: int, height: int, width: int) -> None:
            h, w = _image_hw(img)
            self.last_box = (top / h, left / w, height / h, width / w)

        if hasattr(cls, "make_params"):  # torchvision.transforms.v2 (>= 0.21)

            def make_params(self, flat_inputs: list) -> dict:
                params = super().make_params(flat_inputs)
                self._store(_first_image(flat_inputs), params["top"], params["left"], params["height"], params["width"])
                return params

        if hasattr(cls, "_get_params"):  # torchvision.transforms.v2 (< 0.21)

            def _get_params(self, flat_inputs: list) -> dict:
                params = super()._get_params(flat_inputs)
                self._store(_first_image(flat_inputs), params["top"], params["left"], params["height"], params["width"])
                return params

        if hasattr(cls, "get_params") and not hasattr(cls, "make_params") and not hasattr(cls, "_get_params"):

            def get_params(self, img: Any, scale: Any, ratio: Any) -> tuple[int, int, int, int]:  # v1
                top, left, height, width = super().get_params(img, scale, ratio)
                self._store(img, top, left, height, width)
                return top, left, height, width

    Recording.__name__ = Recording.__qualname__ = f"Recording{cls.__name__}"
    return Recording


def _rebuild_recorder(base: type, state: dict) -> Any:
    obj: Any = object.__new__(base)  # the transform's state comes from the pickle, not from __init__
    obj.__dict__.update(state)
    obj.__class__ = _recording_class(base)
    return obj


def _first_image(flat_inputs: list) -> Any:
    for x in flat_inputs:
        try:
            _image_hw(x)
            return x
        except TypeError:
            continue
    raise TypeError("RandomResizedCrop got no image input to record a box against")


def _is_random_resized_crop(obj: Any) -> bool:
    return any(c.__name__ == "RandomResizedCrop" for c in type(obj).__mro__) and hasattr(obj, "scale")


def install_box_recorders(transform: Any) -> list[Any]:
    """Swap every RandomResizedCrop inside ``transform`` (in place; pass a copy) for a recording
    subclass. Walks attributes, lists and ``transforms`` containers. Returns the recorders in
    call order of discovery."""
    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 8 or isinstance(obj, (str, bytes, int, float, torch.Tensor)):
            return
        seen.add(id(obj))
        if _is_random_resized_crop(obj):
            if not type(obj).__name__.startswith("Recording"):
                obj.__class__ = _recording_class(type(obj))  # type: ignore[arg-type]
            found.append(obj)
            return
        if isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, depth + 1)
        elif isinstance(obj, dict):
            for x in obj.values():
                visit(x, depth + 1)
        elif hasattr(obj, "__dict__"):
            for x in vars(obj).values():
                visit(x, depth + 1)

    visit(transform, 0)
    return found


class CandidateTransform:
    """Apply view transforms to one image to make the N candidates, recording crop boxes.

    ``transforms``: one transform per pipeline (e.g. ``[t]`` for SimSiam, ``[t1, t2]`` for BYOL's
    asymmetric pair); ``n_per_transform`` candidates from each, interleaved (0, 1, 0, 1, ... for
    two pipelines, so candidate c comes from pipeline ``c % len(transforms)``). Returns
    ``(views: list of N, boxes: [N, 4])``; a box is NaN when its pipeline has no RandomResizedCrop.
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]], n_per_transform: int) -> None:
        if n_per_transform < 1:
            raise ValueError(f"n_per_transform must be >= 1, got {n_per_transform}")
        self.transforms = [copy.deepcopy(t) for t in transforms]
        self.recorders = [install_box_recorders(t) for t in self.transforms]
        self.n_per_transform = n_per_transform

    @property
    def n_views(self) -> int:
        return len(self.transforms) * self.n_per_transform

    def __call__(self, image: Any) -> tuple[list[Any], torch.Tensor]:
        views, boxes = [], []
        for c in range(self.n_views):
            t = c % len(self.transforms)
            recs = self.recorders[t]
            for r in recs:
                r.last_box = None
            views.append(self.transforms[t](image))
            # The first crop applied to the source image defines the candidate's box.
            box = recs[0].last_box if recs and recs[0].last_box is not None else (float("nan"),) * 4
            boxes.append(box)
        return views, torch.tensor(boxes, dtype=torch.float32)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes ``(top, left, height, width)``: ``a, b: [..., 4]`` → ``[...]``."""
    top = torch.maximum(a[..., 0], b[..., 0])
    left = torch.maximum(a[..., 1], b[..., 1])
    bottom = torch.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2])
    right = torch.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3])
    inter = (bottom - top).clamp(min=0) * (right - left).clamp(min=0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union


def pair_ious(boxes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: ``boxes: [M, N, 4]`` (as collated) → ``[P, M]``."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [M, N, 4], got {list(boxes.shape)}")
    b = boxes.transpose(0, 1).float()  # [N, M, 4]
    return box_iou(b[pairs[:, 0]], b[pairs[:, 1]])
