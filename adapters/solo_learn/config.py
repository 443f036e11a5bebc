"""The ``hvs:`` block of a solo-learn config, validated with errors that name the fix.

Pure python (no solo-learn, no omegaconf needed): accepts a dict, an OmegaConf ``DictConfig`` or
any mapping.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

import torch

# Methods whose exact per-sample loss the adapter computes from the method's own modules.
EXACT_METHODS = (
    "simsiam", "simclr", "byol", "mocov2plus", "mocov3", "dino", "nnclr", "nnsiam",
    "nnbyol", "ressl", "supcon", "deepclusterv2", "swav",
)
# Methods whose loss is not sample-decomposable: only a labelled proxy (``hvs.proxy: true``).
PROXY_METHODS = ("barlow_twins", "vicreg", "vibcreg", "wmse")
# Methods HVS refuses, with the reason (no per-sample loss and no meaningful proxy).
REFUSED_METHODS = {
    "all4one": (
        "its loss adds a feature-decorrelation term computed over the whole batch (square roots of "
        "batch-wide correlation means) to nearest-neighbour terms passed through a transformer with "
        "dropout, so it has no per-sample value and the invariance proxy would not rank pairs by it"
    ),
    "mae": "MAE reconstructs masked patches of one view; there is no pair of views to select",
}
# Methods whose small crops HVS handles as multi-crop combinations (2 candidates per small crop).
MULTICROP_METHODS = ("dino", "swav")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class HVSConfig:
    """Validated ``hvs:`` block.

    ``n_views``: candidate large crops per image (N; the paper: 4). ``cap``: DINO multi-crop
    combinations compared per batch (the paper: 128). ``exact``: DINO multi-crop true argmax over all
    combinations (one top-k per global pair) instead of the capped random subset.
    ``resolution_scale``: select on downscaled copies (0.5 keeps accuracy in the paper).
    ``chunk_size``: samples per selection forward (None: whole batch; changes BatchNorm batch
    statistics of the selection forward, so scores are then approximate). ``seed``: the selector's
    own generator. ``proxy``: allow the labelled invariance proxy for VICReg / Barlow Twins.
    ``global_pairing``: DINO multi-crop global pairs, ``cross`` (one candidate of each of the two
    global pipelines, the authors' default) or ``any`` (any 2 global candidates); None picks
    ``cross`` with two large pipelines and ``any`` with one. ``joint_views``: one selection forward
    for all N views (faster, BatchNorm sees N·M views; approximate). ``autocast``: ``bfloat16`` /
    ``float16`` for the selection forward only. ``log_stats``: log ``hvs/*`` selection statistics.
    ``every`` / ``probability`` / ``start_epoch``: cost knobs (the core's ``HVSSchedule``): HVS on
    steps ``step % every == 0``, then with this probability, from this epoch on; on other steps the
    method trains on the first candidates (a plain random pair). ``enabled``: false switches HVS
    off while keeping the block. ``score_layer``: APPROXIMATE two-view scoring by the cosine distance
    of the activations after this module of the method (e.g. ``backbone.layer1``), the network run
    only up to there (core ``layer_scoring``); null (default): the method's own loss.
    ``reuse_target``: BYOL / MoCo v3 only: hand the momentum network's selection outputs of the
    chosen views to the training step instead of forwarding them again (exact, so refused unless
    resolution_scale is 1.0, no score_layer / autocast, and the momentum networks have no
    BatchNorm / dropout in train mode; see ``target_reuse``).
    """

    n_views: int = 4
    cap: int = 128
    exact: bool = False
    resolution_scale: float = 1.0
    chunk_size: Optional[int] = None
    seed: int = 0
    proxy: bool = False
    global_pairing: Optional[str] = None
    joint_views: bool = False
    autocast: Optional[str] = None
    log_stats: bool = True
    every: int = 1
    probability: float = 1.0
    start_epoch: int = 0
    enabled: bool = True
    score_layer: Optional[str] = None
    reuse_target: bool = False

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return None if self.autocast is None else _DTYPES[self.autocast]

    def as_dict(self) -> dict:
        return asdict(self)


KEYS = tuple(f.name for f in fields(HVSConfig))


def _to_dict(block: Any) -> dict:
    if block is None:
        return {}
    if isinstance(block, HVSConfig):
        return block.as_dict()
    try:  # OmegaConf DictConfig → plain dict (resolving interpolations)
        from omegaconf import DictConfig, OmegaConf

        if isinstance(block, DictConfig):
            return dict(OmegaConf.to_container(block, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf comes with solo-learn
        pass
    if isinstance(block, Mapping):
        return dict(block)
    if isinstance(block, bool):
        raise TypeError("hvs must be a mapping such as `hvs: {n_views: 4}`, not a bool")
    if isinstance(block, int):
        raise TypeError(f"hvs must be a mapping: write `hvs: {{n_views: {block}}}`")
    raise TypeError(f"hvs must be a mapping such as `hvs: {{n_views: 4}}`, got {type(block).__name__}")


def _int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"hvs.{name} must be an int >= {minimum}, got {value!r}{hint}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"hvs.{name} must be true or false, got {value!r}")
    return value


def parse_hvs_config(block: Any) -> HVSConfig:
    """Validate the ``hvs:`` block (dict / DictConfig / HVSConfig) into an :class:`HVSConfig`."""
    raw = {k: v for k, v in _to_dict(block).items() if not str(k).startswith("_")}
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown hvs key(s) {unknown}; valid keys: {list(KEYS)}")
    d = HVSConfig().as_dict()
    d.update(raw)
    d["n_views"] = _int("n_views", d["n_views"], 2, ": HVS compares pairs of candidate views (the paper uses 4)")
    d["cap"] = _int("cap", d["cap"], 1)
    d["seed"] = _int("seed", d["seed"], 0)
    d["every"] = _int("every", d["every"], 1)
    d["start_epoch"] = _int("start_epoch", d["start_epoch"], 0)
    prob = d["probability"]
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
        raise ValueError(f"hvs.probability must be in [0, 1] (1: HVS on every scheduled step), got {prob!r}")
    d["probability"] = float(prob)
    if d["chunk_size"] is not None:
        d["chunk_size"] = _int("chunk_size", d["chunk_size"], 1)
    for name in ("exact", "proxy", "joint_views", "log_stats", "enabled", "reuse_target"):
        d[name] = _bool(name, d[name])
    scale = d["resolution_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(
            f"hvs.resolution_scale must be in (0, 1], got {scale!r}: 1.0 selects at full resolution, "
            "0.5 at half"
        )
    d["resolution_scale"] = float(scale)
    if d["global_pairing"] not in (None, "cross", "any"):
        raise ValueError(f"hvs.global_pairing must be null, 'cross' or 'any', got {d['global_pairing']!r}")
    if d["score_layer"] is not None and (not isinstance(d["score_layer"], str) or not d["score_layer"]):
        raise ValueError(f"hvs.score_layer must be null or a module name such as 'backbone.layer1', got {d['score_layer']!r}")
    if d["score_layer"] is not None and d["proxy"]:
        raise ValueError("hvs.score_layer and hvs.proxy are two different approximations: choose one")
    if d["autocast"] is not None and d["autocast"] not in _DTYPES:
        raise ValueError(f"hvs.autocast must be null or one of {sorted(_DTYPES)}, got {d['autocast']!r}")
    return HVSConfig(**d)


def check_method(method: str, hvs: HVSConfig) -> str:
    """``'exact'`` or ``'proxy'`` for a supported method; a clear error otherwise."""
    if method in EXACT_METHODS:
        return "exact"
    if method in PROXY_METHODS:
        if not hvs.proxy:
            raise ValueError(
                f"method {method!r} has no per-sample loss (its loss couples the whole batch), so HVS "
                "cannot select with its exact objective; set `hvs.proxy: true` to select with the "
                "labelled invariance proxy (mean squared distance of the two embeddings), or remove "
                "the hvs block"
            )
        return "proxy"
    if method in REFUSED_METHODS:
        raise ValueError(
            f"HVS does not support solo-learn method {method!r}: {REFUSED_METHODS[method]}. Remove the "
            "hvs block to train it without HVS."
        )
    raise ValueError(
        f"HVS does not support solo-learn method {method!r}; supported: {list(EXACT_METHODS)} "
        f"(exact) and {list(PROXY_METHODS)} (with hvs.proxy: true). Remove the hvs block to train it "
        "without HVS."
    )
