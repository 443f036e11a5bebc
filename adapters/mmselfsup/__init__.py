"""Hard View Selection for MMSelfSup 1.x (and MMPretrain 1.x self-supervised algorithms).

Enable it from a config::

    custom_imports = dict(imports=['hvs_plugins.adapters.mmselfsup'], allow_failed_imports=False)
    custom_hooks = [dict(type='HardViewSelectionHook', n_views=4)]

and let the train pipeline's ``MultiView`` make the candidates (``num_views=4``; two asymmetric
pipelines: ``num_views=[2, 2]``).

Importing this module registers ``HardViewSelectionHook`` in MMSelfSup's ``HOOKS`` registry and,
where installed, in MMPretrain's. It also repairs MMSelfSup 1.0.0's registries under
mmengine >= 0.10: they name the import location ``mmselfsup.engine.runner``, which does not
exist, so that building any train loop fails with ``ModuleNotFoundError`` (open-mmlab/mmselfsup#745);
locations that cannot be imported are dropped.
"""

from __future__ import annotations

import importlib
import importlib.util

from .hook import HardViewSelectionHook
from .scoring import SUPPORTED, algorithm_name, score_pairs

__all__ = ["HardViewSelectionHook", "HardViewGeneratorHook", "SUPPORTED", "algorithm_name", "score_pairs", "registered_in"]

registered_in: list[str] = []


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _fix_locations(registry_module) -> None:
    from mmengine.registry import Registry

    for obj in vars(registry_module).values():
        if isinstance(obj, Registry):
            locs = list(getattr(obj, "_locations", None) or [])
            kept = [loc for loc in locs if _importable(loc)]
            if kept != locs:
                obj._locations = kept


def _register(host: str) -> None:
    try:
        registry = importlib.import_module(f"{host}.registry")
    except Exception:  # host not installed (or broken): nothing to register into
        return
    if host == "mmselfsup":
        _fix_locations(registry)
    hooks = registry.HOOKS
    if hooks._module_dict.get("HardViewSelectionHook") is not HardViewSelectionHook:
        hooks.register_module(name="HardViewSelectionHook", module=HardViewSelectionHook, force=True)
    registered_in.append(host)


for _host in ("mmselfsup", "mmpretrain"):
    _register(_host)

if not registered_in:  # neither host importable: still usable with plain mmengine runners
    from mmengine.registry import HOOKS as _MMENGINE_HOOKS

    _MMENGINE_HOOKS.register_module(name="HardViewSelectionHook", module=HardViewSelectionHook, force=True)
    registered_in.append("mmengine")

from .generator_hook import HardViewGeneratorHook  # noqa: E402  (registers itself where the selection hook is)
