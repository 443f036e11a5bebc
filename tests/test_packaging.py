"""The install route the README gives without a registry: `python -m build` makes an sdist and a
wheel from it; the wheel, installed into a fresh venv with no source tree on sys.path, imports
`hvs_plugins` and its adapters as `hvs_plugins.adapters.*`, and installs no top-level `adapters`
(a popular PyPI package of that name would clash).

The fresh venv gets the wheel with --no-deps; its dependencies (torch, lightly, ...) come from the
project venv's site-packages through a .pth file, so nothing is downloaded. A .pth line only adds a
path: the project venv's editable-install hooks are not run there, and the checks below assert that
every imported module is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", "hvs_out", "outputs", ".pytest_cache", ".hypothesis"
)
CHECK = """
import importlib.util, json, sys
import hvs_plugins, hvs_plugins.adapters, hvs_plugins.adapters.lightly, hvs_plugins.adapters.solo_learn
print(json.dumps({
    "files": [hvs_plugins.__file__, hvs_plugins.adapters.__file__, hvs_plugins.adapters.lightly.__file__,
              hvs_plugins.adapters.solo_learn.__file__],
    "top_level_adapters": importlib.util.find_spec("adapters") is not None,
    "cwd_on_path": any(p in ("", ".") for p in sys.path),
}))
"""


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_modules() -> set[str]:
    """Every module file of the package as the wheel must hold it: adapters/ -> hvs_plugins/adapters/."""
    out = {f"hvs_plugins/{p.relative_to(REPO / 'hvs_plugins').as_posix()}" for p in (REPO / "hvs_plugins").rglob("*.py")}
    out |= {f"hvs_plugins/adapters/{p.relative_to(REPO / 'adapters').as_posix()}" for p in (REPO / "adapters").rglob("*.py")}
    return out


def test_wheel_installs_into_a_fresh_venv_without_the_source_tree(tmp_path):
    pytest.importorskip("build", reason="the packaging test needs `build`: pip install -e '.[test]'")
    src, dist, fresh, cwd = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    shutil.copytree(REPO, src, ignore=SKIP)  # build a copy: no build/ or egg-info left in the repository
    # the README's command; --no-isolation: the build backend comes from this venv (no download)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)])
    wheels = sorted(dist.glob("hvs_plugins-*.whl"))
    assert len(wheels) == 1 and sorted(dist.glob("hvs_plugins-*.tar.gz")), sorted(p.name for p in dist.iterdir())

    names = set(zipfile.ZipFile(wheels[0]).namelist())
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"hvs_plugins"}, top  # no top-level adapters
    missing = _source_modules() - names
    assert not missing, f"modules not in the wheel (list new subpackages in pyproject.toml): {sorted(missing)}"

    venv.EnvBuilder(with_pip=False).create(fresh)
    py = fresh / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheels[0])])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # this venv's packages
    (site / "_project_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    assert (fresh / "bin" / "hvs-demo").is_file()  # the console script

    cwd.mkdir()
    info = json.loads(_run([str(py), "-I", "-c", CHECK], cwd=cwd).stdout.strip().splitlines()[-1])
    for f in info["files"]:
        assert Path(f).resolve().is_relative_to(site.resolve()), (f, site)  # the wheel's, not the repository's
    assert not info["top_level_adapters"] and not info["cwd_on_path"], info
