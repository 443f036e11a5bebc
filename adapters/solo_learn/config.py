"""The ``hvs:`` block of a solo-learn config, validated with errors that name the fix.

Pure python (no solo-learn, no omegaconf needed): accepts a dict, an OmegaConf ``DictConfig`` or
any mapping.

The block switches on two ways to make the training views harder, alone or together::

    hvs:                       # selection only (Hard View Selection): 4 candidates, hardest pair
      n_views: 4

    hvs:                       # selection, then the learned generator on the selected pair
      n_views: 4
      generator: {eps_start: 0.02, eps_end: 0.06, ramp_epochs: 10}

    hvs:                       # the learned generator alone, on the method's own 2 large crops
      enabled: false           # (``enabled`` is the selection switch)
      generator: {eps: 0.05}

Rule: ``enabled`` switches the *selection* (default true); ``generator`` (a mapping, ``{}`` for the
defaults) switches the learned hard-view generator, whose own ``generator.enabled: false`` makes
it pass the views through unchanged (nothing else of the run changes). ``enabled: false`` without
a ``generator`` switches everything off: the method is solo-learn's own. ``n_views: 2`` is still a
selection (the order of a pair for MoCo v2+, the small-crop candidates of DINO / SwAV multi-crop),
not the way to turn selection off. The generator makes the two large crops harder; the small
crops of DINO / SwAV multi-crop pass unchanged. Normalisation: solo-learn's own (``data.dataset``'s
mean/std, or ``augmentations[*].mean`` / ``std`` for other data sets, else ImageNet's).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

import torch

from hvs_plugins.generator import EpsSchedule, HardViewGenerator, _check_eps

# Methods whose exact per-sample loss the adapter computes from the method's own modules.
EXACT_METHODS = (
    "simsiam",
    "simclr",
    "byol",
    "mocov2plus",
    "mocov3",
    "dino",
    "nnclr",
    "nnsiam",
    "nnbyol",
    "ressl",
    "supcon",
    "deepclusterv2",
    "swav",
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
# Methods the learned hard-view generator refuses (it perturbs the pair of large crops the loss compares).
GENERATOR_REFUSED_METHODS = {
    "mae": "MAE reconstructs masked patches of one view; there is no pair of views for the generator to make harder",
}

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
    ``float16`` for the selection forward only. ``log_stats``: log ``hvs/*`` selection statistics (and ``hvs_gen/*``).
    ``every`` / ``probability`` / ``start_epoch``: cost knobs (the core's ``HVSSchedule``): HVS on
    steps ``step % every == 0``, then with this probability, from this epoch on; on other steps the
    method trains on the first candidates (a plain random pair). ``enabled``: false switches the
    selection off while keeping the block (with a ``generator`` block the generator still runs, on
    the method's own 2 large crops; without one, the method is solo-learn's own).
    ``score_layer``: APPROXIMATE two-view scoring by the cosine distance of the activations after
    this module of the method (e.g. ``backbone.layer1``), the network run only up to there (core
    ``layer_scoring``); null (default): the method's own loss.
    ``reuse_target``: BYOL / MoCo v3 only: hand the momentum network's selection outputs of the
    chosen views to the training step instead of forwarding them again (exact, so refused unless
    resolution_scale is 1.0, no score_layer / autocast, and the momentum networks have no
    BatchNorm / dropout in train mode; see ``target_reuse``).
    ``generator``: the learned hard-view generator (design §7; core
    :class:`hvs_plugins.HardViewGenerator`), a mapping of :data:`GENERATOR_KEYS` (see
    :func:`parse_generator_block`), or None (default: no generator).
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
    generator: Optional[dict] = None

    @property
    def selection(self) -> bool:
        """Whether the hardest pair is selected from ``n_views`` candidates (``enabled``)."""
        return self.enabled

    @property
    def active(self) -> bool:
        """Whether the block changes anything: selection, or a generator (even a disabled one: the
        method is then wrapped, and its checkpoints carry the generator's state)."""
        return self.enabled or self.generator is not None

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return None if self.autocast is None else _DTYPES[self.autocast]

    def as_dict(self) -> dict:
        return asdict(self)


KEYS = tuple(f.name for f in fields(HVSConfig))

# ---------------------------------------------------------------- hvs.generator
# The normalisation is solo-learn's (``data.dataset`` / ``augmentations[*].mean, std``), the images RGB.
_GENERATOR_FROM_SOLO = ("channels", "mean", "std")
# The adapter's own option: every gap_interval-th step, log hvs_gen/hardness_gap (0: never).
_GENERATOR_ADAPTER_KEYS = ("gap_interval",)


class _SoloGeneratorKeys(HardViewGenerator):
    """The core generator's option names as the ``hvs.generator`` block spells them (for
    :meth:`HardViewGenerator.check_keys`: unknown keys with the closest valid name and the list)."""

    @classmethod
    def valid_keys(cls) -> list[str]:
        return [k for k in HardViewGenerator.valid_keys() if k not in _GENERATOR_FROM_SOLO] + list(_GENERATOR_ADAPTER_KEYS)


GENERATOR_KEYS = tuple(_SoloGeneratorKeys.valid_keys())


def parse_generator_block(block: Any) -> Optional[dict]:
    """Validate ``hvs.generator`` into a plain dict (None: no generator).

    Keys: ``eps`` (constant budget, mean ``|δ|`` per image in [0, 1] pixel units, in (0, 1]; 0.05 by
    default) or ``eps_start`` / ``eps_end`` / ``ramp_epochs`` (ε rises linearly over that many epochs;
    ``eps_start`` / ``eps_end`` default to ``eps``), ``shared`` (true: one generator for both views;
    false: a pair, Wu et al.), ``width`` / ``n_blocks`` / ``stem_kernel`` (the network), ``lr`` /
    ``betas`` / ``weight_decay`` (its own Adam), ``reverse_scale`` (λ), ``seed`` (weights and noise),
    ``sync_grads`` (average its gradients over DDP ranks), ``enabled`` (false: views pass unchanged),
    ``gap_interval`` (every that many steps log ``hvs_gen/hardness_gap``; 0, the default: never).
    ``mean`` / ``std`` / ``channels`` are not keys: they are read from solo-learn's augmentations."""
    if block is None:
        return None
    if isinstance(block, bool) or not isinstance(block, Mapping):
        raise ValueError(
            f"hvs.generator must be a mapping such as `generator: {{eps: 0.05}}` (`generator: {{}}` for the "
            f"defaults), or null for no generator; got {block!r}"
        )
    g = {str(k): v for k, v in block.items()}
    from_solo = [k for k in g if k in _GENERATOR_FROM_SOLO]
    if from_solo:
        raise ValueError(
            f"hvs.generator: {from_solo} are read from solo-learn's augmentations (data.dataset's mean/std, or "
            "augmentations[*].mean / std for a custom dataset; RGB images): remove them from hvs.generator"
        )
    try:
        _SoloGeneratorKeys.check_keys(g)
    except ValueError as exc:
        raise ValueError(f"hvs.generator: {str(exc).replace('_SoloGeneratorKeys', 'hvs.generator')}") from None
    for name in ("eps", "eps_start", "eps_end"):
        if g.get(name) is not None:
            try:
                _check_eps(g[name], name)
            except ValueError as exc:
                raise ValueError(f"hvs.generator.{exc}") from None
    eps = g.get("eps", 0.05)
    start, end = g.get("eps_start"), g.get("eps_end")
    start, end = (eps if start is None else start), (eps if end is None else end)
    if start is None or end is None:
        raise ValueError("hvs.generator: give the budget: eps: 0.05, or eps_start and eps_end (with ramp_epochs)")
    try:
        EpsSchedule(start, end, g.get("ramp_epochs", 0))
    except ValueError as exc:
        raise ValueError(f"hvs.generator.{exc}") from None
    for name in ("shared", "sync_grads", "enabled"):
        if name in g and not isinstance(g[name], bool):
            raise ValueError(f"hvs.generator.{name} must be true or false, got {g[name]!r}")
    for name, minimum in (("width", 1), ("n_blocks", 0), ("stem_kernel", 1), ("seed", 0), ("gap_interval", 0)):
        if name in g:
            _int(f"generator.{name}", g[name], minimum)
    if "stem_kernel" in g and g["stem_kernel"] % 2 == 0:
        raise ValueError(f"hvs.generator.stem_kernel must be odd (9 as the Viewmaker, or 3), got {g['stem_kernel']!r}")
    for name in ("lr", "reverse_scale"):
        v = g.get(name, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"hvs.generator.{name} must be a number > 0, got {v!r}")
    if "weight_decay" in g:
        v = g["weight_decay"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"hvs.generator.weight_decay must be a number >= 0, got {v!r}")
    if "betas" in g:
        b = g["betas"]
        if (
            not isinstance(b, (list, tuple))
            or len(b) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b)
        ):
            raise ValueError(f"hvs.generator.betas must be two numbers in [0, 1) such as [0.9, 0.999], got {b!r}")
        g["betas"] = [float(x) for x in b]
    return g


def generator_options(generator: Mapping[str, Any]) -> dict:
    """The core :class:`HardViewGenerator`'s keyword arguments of a validated ``hvs.generator``."""
    return {k: (tuple(v) if k == "betas" else v) for k, v in generator.items() if k not in _GENERATOR_ADAPTER_KEYS}


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
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), KEYS, 1)) else repr(k) for k in unknown]
        raise ValueError(f"unknown hvs key(s) {unknown}: {', '.join(hints)}; valid keys: {list(KEYS)}")
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
        raise ValueError(f"hvs.resolution_scale must be in (0, 1], got {scale!r}: 1.0 selects at full resolution, 0.5 at half")
    d["resolution_scale"] = float(scale)
    if d["global_pairing"] not in (None, "cross", "any"):
        raise ValueError(f"hvs.global_pairing must be null, 'cross' or 'any', got {d['global_pairing']!r}")
    if d["score_layer"] is not None and (not isinstance(d["score_layer"], str) or not d["score_layer"]):
        raise ValueError(f"hvs.score_layer must be null or a module name such as 'backbone.layer1', got {d['score_layer']!r}")
    if d["score_layer"] is not None and d["proxy"]:
        raise ValueError("hvs.score_layer and hvs.proxy are two different approximations: choose one")
    if d["autocast"] is not None and d["autocast"] not in _DTYPES:
        raise ValueError(f"hvs.autocast must be null or one of {sorted(_DTYPES)}, got {d['autocast']!r}")
    d["generator"] = parse_generator_block(d["generator"])
    if d["generator"] is not None and d["generator"].get("enabled", True) and d["reuse_target"] and d["enabled"]:
        raise ValueError(
            "hvs.reuse_target has no effect with hvs.generator: the momentum network runs on the generated views, "
            "not on the selected ones; remove reuse_target (or the generator)"
        )
    return HVSConfig(**d)


def check_generator_method(method: str) -> None:
    """The learned generator needs a method that trains on a pair of large crops: a clear error otherwise."""
    if method in GENERATOR_REFUSED_METHODS:
        raise ValueError(
            f"hvs.generator does not support solo-learn method {method!r}: {GENERATOR_REFUSED_METHODS[method]}. "
            "Remove the hvs block (or its generator) to train it without."
        )


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
            f"HVS does not support solo-learn method {method!r}: {REFUSED_METHODS[method]}. Remove the hvs block to train it without HVS."
        )
    raise ValueError(
        f"HVS does not support solo-learn method {method!r}; supported: {list(EXACT_METHODS)} "
        f"(exact) and {list(PROXY_METHODS)} (with hvs.proxy: true). Remove the hvs block to train it "
        "without HVS."
    )
