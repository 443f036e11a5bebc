"""Hydra callback route: keep running ``python main_pretrain.py`` and declare in the YAML::

    hydra:
      callbacks:
        hvs:
          _target_: hvs_plugins.adapters.solo_learn.HVSHydraCallback

Before the job starts, Hydra hands the callback the task function (solo-learn's ``main``); the
callback patches that function's module globals (``parse_cfg``, ``METHODS``) exactly as the
launcher does.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback

from .patch import patch_main_globals


class HVSHydraCallback(Callback):
    def on_job_start(self, config: Any, *, task_function: Any = None, **kwargs: Any) -> None:
        if task_function is None or not hasattr(task_function, "__globals__"):
            raise RuntimeError(
                "HVSHydraCallback needs Hydra >= 1.2 (on_job_start receives the task function); "
                "use the launcher instead: python -m hvs_plugins.adapters.solo_learn.launch ..."
            )
        patch_main_globals(task_function.__globals__)
