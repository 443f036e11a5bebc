"""Candidate crops in solo-learn's batch layout.

solo-learn builds one ``NCropAugmentation(pipeline, num_crops)`` per entry of ``cfg.augmentations``
and concatenates their crops pipeline by pipeline; crops whose ``crop_size`` equals the first
pipeline's are large crops (counted first), the others small crops. ``main_pretrain.py`` asserts 2
large crops, so HVS multiplies the pipelines' ``num_crops`` *before* ``parse_cfg`` and the method
wrapper hands 2 (plus the small crops) to the method.

Pure python: ``augmentations`` is any sequence of mappings with ``crop_size`` and ``num_crops``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class CandidateLayout:
    """Where the candidates are in the batch's crop list ``X``.

    ``n_views`` large candidates at ``X[0:n_views]``; ``groups``: candidate indices per large
    pipeline when there are two (asymmetric augmentation; only cross pairs are valid), else None.
    ``n_small``: small crops the method expects; ``n_small_candidates`` small candidates at
    ``X[n_views:]`` (2 per small crop with multi-crop HVS, else equal to ``n_small``).
    """

    n_views: int
    groups: Optional[tuple[tuple[int, ...], ...]]
    n_small: int
    n_small_candidates: int

    @property
    def n_crops_in(self) -> int:
        return self.n_views + self.n_small_candidates

    @property
    def n_crops_out(self) -> int:
        return 2 + self.n_small


def _get(aug: Any, key: str) -> Any:
    return aug[key] if hasattr(aug, "__getitem__") and not hasattr(aug, key) else getattr(aug, key)


def _large_mask(augmentations: Sequence[Any]) -> list[bool]:
    if len(augmentations) == 0:
        raise ValueError("cfg.augmentations is empty: solo-learn needs at least one augmentation pipeline")
    big = _get(augmentations[0], "crop_size")
    return [_get(a, "crop_size") == big for a in augmentations]


def expanded_num_crops(augmentations: Sequence[Any], n_views: int, small_candidates: bool) -> list[int]:
    """New ``num_crops`` per pipeline: the large crops (2 in the user's config) become ``n_views``
    candidates (one large pipeline: ``n_views``; two: ``n_views/2`` each); small crops are doubled
    when ``small_candidates`` (DINO multi-crop: 2 candidates per crop), else unchanged."""
    large = _large_mask(augmentations)
    nums = [int(_get(a, "num_crops")) for a in augmentations]
    n_large = sum(n for n, is_large in zip(nums, large) if is_large)
    if n_large != 2:
        raise ValueError(
            f"HVS needs a config with 2 large crops (solo-learn's default), got {n_large} from "
            f"num_crops {nums}; set the large pipelines' num_crops to 2 (one pipeline) or 1 and 1 "
            "(two asymmetric pipelines) and choose the candidates with hvs.n_views"
        )
    large_idx = [i for i, is_large in enumerate(large) if is_large]
    if len(large_idx) == 2 and n_views % 2:
        raise ValueError(
            f"hvs.n_views={n_views} must be even with two asymmetric large pipelines "
            "(n_views/2 candidates per pipeline); use e.g. n_views: 4"
        )
    out = list(nums)
    for i in large_idx:
        out[i] = nums[i] * n_views // 2
    if small_candidates:
        out = [n if large[i] else 2 * n for i, n in enumerate(out)]
    return out


def candidate_layout(augmentations: Sequence[Any], n_views: int, small_candidates: bool) -> CandidateLayout:
    """Layout of an already expanded config (``num_crops`` as set by :func:`expanded_num_crops`)."""
    large = _large_mask(augmentations)
    nums = [int(_get(a, "num_crops")) for a in augmentations]
    n_large = sum(n for n, is_large in zip(nums, large) if is_large)
    if n_large != n_views:
        raise ValueError(
            f"the data pipeline produces {n_large} large crops but hvs.n_views={n_views}: HVS is not "
            "switched on in the data pipeline. Run through the launcher (python -m "
            "hvs_plugins.adapters.solo_learn.launch main_pretrain.py --config-path ... --config-name "
            "...), add the Hydra callback, or pass the config through hvs_parse_cfg before parse_cfg"
        )
    groups: Optional[tuple[tuple[int, ...], ...]] = None
    large_pipes = [n for n, is_large in zip(nums, large) if is_large]
    if len(large_pipes) == 2:
        a = large_pipes[0]
        groups = (tuple(range(a)), tuple(range(a, n_views)))
    elif len(large_pipes) > 2:
        raise ValueError(
            f"{len(large_pipes)} large pipelines: HVS supports one (symmetric) or two (asymmetric) large augmentation pipelines"
        )
    n_small_cand = sum(n for n, is_large in zip(nums, large) if not is_large)
    if small_candidates and n_small_cand % 2:
        raise ValueError(f"{n_small_cand} small crops: multi-crop HVS expects 2 candidates per small crop")
    n_small = n_small_cand // 2 if small_candidates else n_small_cand
    return CandidateLayout(n_views, groups, n_small, n_small_cand)
