"""Download, here, the wheels the GPU machine lacks (``packages.txt``) into ``benchmarks/gpu/wheels/``
(ignored by git; it travels to the device with ``carry``).

    python benchmarks/gpu/prepare.py              # ~1 min, needs the package registry
    python benchmarks/gpu/prepare.py --dry-run    # print the pip commands only

Each package is fetched as a wheel for the device's Python (3.12, manylinux x86-64, no
dependencies: the list names every missing one). A package published as source only (e.g.
antlr4-python3-runtime 4.9.3) is built into a wheel here; only pure-Python builds
(``py3-none-any``) are kept, since a compiled build for this machine would not run there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def requirements(path: Path = HERE / "packages.txt") -> list[str]:
    """``name==version`` lines of ``packages.txt`` (comments and blanks dropped)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if "==" not in line:
                raise ValueError(f"{path.name}: pin every package as name==version, got {line!r}")
            out.append(line)
    return out


def canonical(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical name, version) of a wheel file."""
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def download_cmd(req: str, dest: Path, python_version: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "-d",
        str(dest),
        req,
    ]
    for p in PLATFORMS:
        cmd[4:4] = ["--platform", p]
    return cmd


def build_cmd(req: str, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), req]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=str(HERE / "wheels"))
    p.add_argument("--python-version", default="3.12", help="the device's Python (3.12)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, download nothing")
    a = p.parse_args(argv)
    dest = Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    have = {wheel_name(w) for w in dest.glob("*.whl")}
    for req in requirements():
        name, version = req.split("==")
        if (canonical(name), version) in have:
            print(f"have  {req}")
            continue
        cmd = download_cmd(req, dest, a.python_version)
        if a.dry_run:
            print(" ".join(cmd))
            continue
        if subprocess.run(cmd, capture_output=True, text=True).returncode == 0:
            print(f"wheel {req}")
            continue
        built = subprocess.run(build_cmd(req, dest), capture_output=True, text=True)  # source only: build here
        wheels = [w for w in dest.glob("*.whl") if wheel_name(w) == (canonical(name), version)]
        if built.returncode != 0 or not wheels:
            print(f"FAILED {req}:\n{built.stdout[-1500:]}{built.stderr[-1500:]}", file=sys.stderr)
            return 1
        if not wheels[0].name.endswith("-py3-none-any.whl") and "-py2.py3-none-any" not in wheels[0].name:
            wheels[0].unlink()
            print(f"FAILED {req}: the source build is not pure Python ({wheels[0].name}); it would not run on the device", file=sys.stderr)
            return 1
        print(f"built {req} -> {wheels[0].name}")
    if a.dry_run:
        return 0
    problems = check(dest)
    for line in problems:
        print(line, file=sys.stderr)
    size = sum(w.stat().st_size for w in dest.glob("*.whl")) / 2**20
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size:.1f} MiB in {dest}")
    return 1 if problems else 0


def check(dest: Path) -> list[str]:
    """Problems that would stop the install on the device: a missing pin, two versions of one
    package, a wheel that is not a zip."""
    found: dict[str, list[str]] = {}
    for w in dest.glob("*.whl"):
        n, v = wheel_name(w)
        found.setdefault(n, []).append(v)
        if not zipfile.is_zipfile(w):
            return [f"{w.name} is not a wheel (zip)"]
    out = [f"two versions of {n}: {vs}" for n, vs in found.items() if len(vs) > 1]
    for req in requirements():
        name, version = req.split("==")
        if version not in found.get(canonical(name), []):
            out.append(f"missing wheel for {req}")
    return out


if __name__ == "__main__":
    sys.exit(main())
