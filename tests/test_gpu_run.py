"""benchmarks/gpu: the device check's plan and its CPU dry run (install into a temporary site when
the wheels were prepared, the CPU test leg, the smoke benchmark profile, JSON + log)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightly")
ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"hvs_gpu_{name}", GPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_pins_every_wheel_and_leaves_out_what_the_device_has():
    prepare = _load("prepare")
    reqs = prepare.requirements()
    names = {prepare.canonical(r.split("==")[0]) for r in reqs}
    assert {"lightly", "hydra_core", "mmengine", "mmcv_lite", "mmselfsup", "mmpretrain", "mmcls"} <= names
    assert not names & {"torch", "torchvision", "pytorch_lightning", "timm", "scikit_learn", "numpy", "pytest"}
    cmd = prepare.download_cmd(reqs[0], Path("wheels"), "3.12")
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "3.12" in cmd and "manylinux2014_x86_64" in cmd
    assert "benchmarks/gpu/wheels/" in (ROOT / ".gitignore").read_text().split()


def test_run_refuses_without_cuda_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="--dry-run"):
        _load("run").main(["--out", str(tmp_path)])


def test_run_dry_run_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(GPU / "run.py"), "--dry-run", "--out", str(tmp_path), "--budget", "1500"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=str(ROOT),
    )  # ~40 s idle; a loaded box is slower
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert {"imports", "tests", "bench smoke"} <= set(steps) and all(s["status"] == "ok" for s in steps.values())
    assert ("install" in steps) == any((GPU / "wheels").glob("*.whl"))  # installs the prepared wheels
    versions = next(s for s in summary["steps"] if s["step"] == "imports")["versions"]
    assert not any(v.startswith("ERROR") for v in versions.values()), versions
    assert "hvs-site-" in versions["hvs_plugins"]  # the installed copy, not the checkout
    assert "passed" in summary["tails"]["tests"] and (tmp_path / "tests.xml").is_file()
    records = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert {(r["method"], r["resolution"]) for r in records if r["kind"] == "step"} >= {("simsiam", 1.0), ("simsiam", 0.5)}
    log = (tmp_path / "run.log").read_text()
    assert "== tests" in log and "wrote" in log
