"""The core imports no host framework; an adapter imports its host and the core, nothing else of ours."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOSTS = ("lightly", "mmengine", "mmselfsup", "mmpretrain", "mmcv", "solo", "lightning", "pytorch_lightning", "matplotlib")


def test_core_imports_torch_only():
    code = "import sys, hvs_plugins; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert not {m.split(".")[0] for m in loaded} & set(HOSTS + ("torchvision",))


def test_no_top_level_adapters_module_is_installed():
    code = "import importlib.util, os; os.chdir('/'); print(importlib.util.find_spec('adapters'))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/").stdout
    assert out.strip() == "None"


def _our_imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(("hvs_plugins", "adapters"))}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith(("hvs_plugins", "adapters")):
                found.add(node.module)
    return found


def test_adapters_import_only_the_core_and_themselves():
    for host_dir in (ROOT / "adapters").iterdir():
        if not host_dir.is_dir() or host_dir.name.startswith(("_", ".")):
            continue
        own = f"hvs_plugins.adapters.{host_dir.name}"
        for path in host_dir.rglob("*.py"):
            for mod in _our_imports(path):
                core = mod == "hvs_plugins" or (mod.startswith("hvs_plugins.") and not mod.startswith("hvs_plugins.adapters"))
                assert core or mod == own or mod.startswith(own + "."), f"{path.relative_to(ROOT)} imports {mod}"


def test_core_modules_do_not_import_adapters():
    for path in (ROOT / "hvs_plugins").rglob("*.py"):
        assert not any("adapters" in m for m in _our_imports(path)), path
