"""HVS adapter for solo-learn (https://github.com/vturrisi/solo-learn).

Switch HVS on with one config block, ``hvs: {n_views: 4}`` (learned hard views: add
``generator: {eps: 0.05}``; the generator without selection: ``hvs: {enabled: false, generator: {...}}``,
see :mod:`.config`), and run solo-learn's own ``main_pretrain.py`` through the launcher::

    python -m hvs_plugins.adapters.solo_learn.launch /path/to/solo-learn/main_pretrain.py \\
        --config-path ... --config-name ...

or keep running ``python main_pretrain.py`` and declare the Hydra callback in the YAML::

    hydra:
      callbacks:
        hvs:
          _target_: hvs_plugins.adapters.solo_learn.HVSHydraCallback

Importing this package does not import solo-learn (it is imported only by the launcher).
"""

from .config import (
    EXACT_METHODS,
    GENERATOR_KEYS,
    KEYS,
    PROXY_METHODS,
    HVSConfig,
    check_generator_method,
    check_method,
    parse_generator_block,
    parse_hvs_config,
)
from .layout import CandidateLayout, candidate_layout, expanded_num_crops
from .method import HVSMethodMixin, make_hvs_method
from .patch import HVSMethods, expand_cfg_for_hvs, finish_cfg_for_hvs, hvs_parse_cfg, patch_main_globals


def __getattr__(name: str):
    if name == "HVSHydraCallback":  # imports hydra lazily
        from .hydra_callback import HVSHydraCallback

        return HVSHydraCallback
    raise AttributeError(name)


__all__ = [
    "EXACT_METHODS",
    "KEYS",
    "PROXY_METHODS",
    "HVSConfig",
    "check_method",
    "parse_hvs_config",
    "GENERATOR_KEYS",
    "check_generator_method",
    "parse_generator_block",
    "CandidateLayout",
    "candidate_layout",
    "expanded_num_crops",
    "HVSMethodMixin",
    "make_hvs_method",
    "HVSMethods",
    "expand_cfg_for_hvs",
    "finish_cfg_for_hvs",
    "hvs_parse_cfg",
    "patch_main_globals",
    "HVSHydraCallback",
]
