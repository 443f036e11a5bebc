"""Run solo-learn's ``main_pretrain.py`` with HVS switched on by the config's ``hvs:`` block.

    python -m hvs_plugins.adapters.solo_learn.launch /path/to/solo-learn/main_pretrain.py \\
        --config-path /path/to/configs --config-name cifar_simsiam_hvs [key=value ...]

Everything after the script path is Hydra's command line, exactly as for ``python main_pretrain.py``.
The script is loaded from the user's solo-learn checkout (it is not part of the installed
package), its ``parse_cfg`` / ``METHODS`` globals are patched (:func:`patch_main_globals`), and its
``main()`` is called. A config without ``hvs`` trains exactly as without the launcher.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

from .patch import patch_main_globals

USAGE = (
    "usage: python -m hvs_plugins.adapters.solo_learn.launch /path/to/solo-learn/main_pretrain.py "
    "--config-path DIR --config-name NAME [hydra overrides ...]"
)


def load_main_pretrain(path: str) -> ModuleType:
    """Import solo-learn's ``main_pretrain.py`` from ``path`` as a module (not as __main__)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: pass the path of main_pretrain.py in your solo-learn checkout "
            "(git clone https://github.com/vturrisi/solo-learn)"
        )
    try:
        import solo  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "solo-learn is not importable: install it from its repository (see README.md's solo-learn section; "
            "the registry's solo-learn 1.0.2 is an old build and does not work)"
        ) from err
    name = "hvs_solo_main_pretrain"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        raise RuntimeError(f"{path} has no main(): is it solo-learn's main_pretrain.py?")
    return module


ENV_SCRIPT = "HVS_SOLO_MAIN_PRETRAIN"


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    if argv and argv[0].endswith(".py"):
        script, hydra_args = argv[0], argv[1:]
    elif os.environ.get(ENV_SCRIPT):
        # a DDP worker: Lightning re-runs `python -m <this module>` with sys.argv[1:] (the Hydra
        # arguments only); the script path travels in the environment
        script, hydra_args = os.environ[ENV_SCRIPT], argv
    else:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    os.environ[ENV_SCRIPT] = os.path.abspath(script)
    module = load_main_pretrain(script)
    patch_main_globals(vars(module))
    sys.argv = [os.path.abspath(script)] + hydra_args
    module.main()


if __name__ == "__main__":
    main()
