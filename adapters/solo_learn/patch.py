"""Switching HVS on from the YAML alone: patch ``main_pretrain.py``'s ``parse_cfg`` and ``METHODS``.

solo-learn's ``main_pretrain.py`` builds its crops from ``cfg.augmentations[*].num_crops`` and
asserts 2 large crops, and instantiates ``METHODS[cfg.method](cfg)``. :func:`patch_main_globals`
replaces its ``parse_cfg`` with :func:`hvs_parse_cfg`, which, when the config has an ``hvs:``
block, multiplies the large pipelines' ``num_crops`` (so the loader emits the candidates), calls
solo-learn's own ``parse_cfg``, sets ``cfg.data.num_large_crops`` back to 2, and points the
module's ``METHODS`` at the HVS versions of the methods. Without an ``hvs`` block nothing changes.

The learned hard-view generator without selection (``hvs: {enabled: false, generator: {...}}``)
keeps solo-learn's crops as they are (2 large crops, its small crops) and only points ``METHODS``
at the wrapped classes, whose ``training_step`` runs the generator on the two large crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, MutableMapping

from .config import MULTICROP_METHODS, check_generator_method, check_method, parse_hvs_config
from .layout import candidate_layout, expanded_num_crops
from .method import make_hvs_method

_PATCHED = "__hvs_patched__"


class HVSMethods(Mapping):
    """Read-only view of solo-learn's ``METHODS`` whose classes are the HVS versions."""

    def __init__(self, methods: Mapping) -> None:
        self._methods = methods

    def __getitem__(self, name: str) -> type:
        return make_hvs_method(self._methods[name])

    def __iter__(self):
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)

    def __repr__(self) -> str:
        return f"HVSMethods({list(self._methods)})"


def hvs_block(cfg: Any) -> Any:
    """The config's ``hvs`` block or None."""
    try:
        return cfg.get("hvs", None)
    except AttributeError:
        return getattr(cfg, "hvs", None)


def expand_cfg_for_hvs(cfg: Any) -> Any:
    """Before solo-learn's ``parse_cfg``: validate ``hvs`` and the method, and multiply the crops
    (idempotent: a marker ``hvs._expanded`` is set). Without selection (``hvs.enabled: false``, a
    generator only) the crops stay as they are."""
    hvs = parse_hvs_config(hvs_block(cfg))
    if hvs.selection:
        check_method(str(cfg.method), hvs)
    if hvs.generator is not None:
        check_generator_method(str(cfg.method))
    data = cfg.get("data", None) if hasattr(cfg, "get") else None
    if data is not None and hasattr(data, "get") and data.get("format", None) == "dali":
        raise ValueError(
            "HVS does not support solo-learn's DALI data format (its loader is built from "
            "cfg.data.num_large_crops); use data.format: image_folder or h5"
        )
    if not hvs.selection:
        return cfg
    if not bool(cfg.hvs.get("_expanded", False)):
        nums = expanded_num_crops(cfg.augmentations, hvs.n_views, small_candidates=(cfg.method in MULTICROP_METHODS))
        for aug, n in zip(cfg.augmentations, nums):
            aug.num_crops = n
        cfg.hvs._expanded = True
    return cfg


def finish_cfg_for_hvs(cfg: Any) -> Any:
    """After solo-learn's ``parse_cfg``: the method sees 2 large crops (and its small crops)."""
    hvs = parse_hvs_config(hvs_block(cfg))
    if not hvs.selection:  # generator only: solo-learn's own crop counts
        return cfg
    layout = candidate_layout(cfg.augmentations, hvs.n_views, small_candidates=(cfg.method in MULTICROP_METHODS))
    cfg.data.num_large_crops = 2
    cfg.data.num_small_crops = layout.n_small
    return cfg


def hvs_parse_cfg(parse_cfg: Callable[[Any], Any], on_hvs: Callable[[], None] = lambda: None) -> Callable[[Any], Any]:
    """Wrap solo-learn's ``parse_cfg``; ``on_hvs()`` is called when HVS is switched on."""
    if getattr(parse_cfg, _PATCHED, False):
        return parse_cfg

    def parse_cfg_with_hvs(cfg: Any) -> Any:
        block = hvs_block(cfg)
        if block is None or not parse_hvs_config(block).active:
            return parse_cfg(cfg)
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                OmegaConf.set_struct(cfg, False)  # main_pretrain does this too; new keys below
        except ImportError:  # pragma: no cover
            pass
        cfg = expand_cfg_for_hvs(cfg)
        cfg = parse_cfg(cfg)
        cfg = finish_cfg_for_hvs(cfg)
        on_hvs()
        hvs = parse_hvs_config(hvs_block(cfg))
        if hvs.selection:
            print(
                f"[hvs] Hard View Selection on for {cfg.method}: {hvs.n_views} candidate large crops, "
                f"{cfg.data.num_small_crops} small crops, settings {hvs.as_dict()}"
            )
        if hvs.generator is not None:
            print(
                f"[hvs] learned hard-view generator {'on' if hvs.generator.get('enabled', True) else 'DISABLED'} for "
                f"{cfg.method} ({'after the selection' if hvs.selection else 'without selection'}; the 2 large crops), "
                f"settings {hvs.generator}"
            )
        return cfg

    setattr(parse_cfg_with_hvs, _PATCHED, True)
    parse_cfg_with_hvs.__wrapped__ = parse_cfg
    return parse_cfg_with_hvs


def patch_main_globals(g: MutableMapping[str, Any]) -> None:
    """Patch the globals of solo-learn's ``main_pretrain`` module (or its ``main``'s
    ``__globals__``): ``parse_cfg`` and, once a config with ``hvs`` is parsed, ``METHODS``."""
    for name in ("parse_cfg", "METHODS"):
        if name not in g:
            raise RuntimeError(
                f"{name!r} not found in main_pretrain's globals: this solo-learn version is not "
                "supported by the HVS launcher (expected `from solo.args.pretrain import parse_cfg` "
                "and `from solo.methods import METHODS` in main_pretrain.py)"
            )
    original_methods = g["METHODS"]
    if isinstance(original_methods, HVSMethods):
        return

    def on_hvs() -> None:
        g["METHODS"] = HVSMethods(original_methods)

    g["parse_cfg"] = hvs_parse_cfg(g["parse_cfg"], on_hvs)
