"""``hvs.generator``: the learned hard-view generator (design §7) inside a solo-learn method.

The core :class:`hvs_plugins.HardViewGenerator` (a Viewmaker-style network, its own Adam, gradient
reversal, ε schedule) built from the validated ``hvs.generator`` block and the normalisation of
solo-learn's own augmentation pipelines. :class:`~.method.HVSMethodMixin` runs it on the two large
crops of every training batch (after the selection, if any); see its docstring for the hooks.

This module imports solo-learn only to read the normalisation of its pipelines (with a copy of
solo-learn 1.0.6's table as the fallback).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from hvs_plugins.generator import IMAGENET_MEAN, IMAGENET_STD, HardViewGenerator

from .config import generator_options

CHECKPOINT_KEY = "hvs_generator"

# solo-learn 1.0.6 ``solo.data.pretrain_dataloader.build_transform_pipeline``'s table (a local variable
# there): data sets with a fixed normalisation; any other data set uses the pipeline's ``mean``/``std``
# keys, else ImageNet's. Only the fallback: the pipeline solo-learn builds is read first.
SOLO_MEANS_N_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "imagenet100": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

Norm = tuple[tuple[float, ...], tuple[float, ...]]


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if hasattr(obj, "get"):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _table_normalisation(dataset: Optional[str], aug: Any) -> Norm:
    if dataset in SOLO_MEANS_N_STD:
        mean, std = SOLO_MEANS_N_STD[dataset]
    else:
        mean, std = _get(aug, "mean", None) or IMAGENET_MEAN, _get(aug, "std", None) or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def pipeline_normalisation(dataset: Optional[str], aug: Any) -> Norm:
    """``(mean, std)`` of the ``Normalize`` solo-learn puts at the end of the pipeline it builds from
    ``aug`` (one entry of ``cfg.augmentations``) for ``dataset`` (``cfg.data.dataset``): read from
    solo-learn's own ``build_transform_pipeline``; where that cannot be built (no solo-learn, an
    incomplete entry), the same rule from :data:`SOLO_MEANS_N_STD`."""
    try:
        from solo.data.pretrain_dataloader import build_transform_pipeline

        pipeline = build_transform_pipeline(dataset, aug)
        found = [t for t in getattr(pipeline, "transforms", []) if type(t).__name__ == "Normalize"]
        if found:
            return tuple(float(v) for v in found[-1].mean), tuple(float(v) for v in found[-1].std)
    except Exception:  # noqa: BLE001 - any failure to build: the copied rule below
        pass
    return _table_normalisation(dataset, aug)


def large_crop_normalisation(cfg: Any) -> Norm:
    """The normalisation of the large crops (the pipelines whose ``crop_size`` is the first
    pipeline's), which the generator perturbs; one for all of them, else an error naming the fix."""
    augs = list(_get(cfg, "augmentations", None) or [])
    if not augs:
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    data = _get(cfg, "data", None)
    dataset = _get(data, "dataset", None) if data is not None else None
    big = _get(augs[0], "crop_size")
    norms = [pipeline_normalisation(dataset, a) for a in augs if _get(a, "crop_size") == big]
    if any(n != norms[0] for n in norms[1:]):
        raise ValueError(
            f"hvs.generator: the large augmentation pipelines normalise differently ({norms}); the generator works "
            "in [0, 1] pixel units with one mean/std: give the large pipelines the same mean and std"
        )
    return norms[0]


def build_generator(generator: Mapping[str, Any], mean: Sequence[float], std: Sequence[float]) -> HardViewGenerator:
    """The core generator of a validated ``hvs.generator`` block, for views normalised with ``mean``/``std``."""
    try:
        return HardViewGenerator(channels=len(mean), mean=tuple(mean), std=tuple(std), **generator_options(generator))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"hvs.generator: {exc}") from None


def to_cpu(obj: Any) -> Any:
    """A copy of a state (nested dicts / lists of tensors) with every tensor on the CPU (checkpoints load
    anywhere); module state_dicts keep their ``_metadata``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)  # a copy: the checkpoint never aliases live weights
    if isinstance(obj, dict):
        out = type(obj)((k, to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
