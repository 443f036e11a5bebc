"""The one-shot device check: install the carried wheels into a temporary site, run the CUDA tests,
then the GPU benchmark profile, within a time budget; JSON + log to ``$OUT``.

On the device machine (repository root; ``benchmarks/gpu/wheels`` carried, see BENCHMARKS.md)::

    python3 benchmarks/gpu/run.py                 # $OUT/run.json, run.log, tests.xml, <gpu>.json/.log/.checks.json

Here, on the CPU (what tests/test_gpu_run.py runs)::

    python benchmarks/gpu/run.py --dry-run --out /tmp/x   # same steps: CPU test leg, smoke profile

Steps (each under its own timeout; a failing step is recorded and the next one still runs):
``install`` (``pip install --no-index --no-deps --target <tmp site>`` of the wheels; this project
copied there as its wheel lays it out, ``adapters/`` as ``hvs_plugins/adapters``, so no build is
needed), ``imports`` (versions of torch,
lightly, mmselfsup, ... as the site sees them), ``tests`` (the device-parametrised tests), and the
benchmark: lightly SimSiam (ResNet-50, 224 px), lightly DINO (ViT-S/16, 2x224 + 8x96), lightly
SimCLR, then MMSelfSup while time is left, each appended to one JSON (``bench.py --append``), so a
stage cut off by the budget loses only itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "benchmarks" / "gpu" / "wheels"
CUDA_TESTS = ["tests/test_cuda_core.py", "tests/test_cuda_lightly.py", "tests/test_cuda_mmselfsup.py", "tests/test_cuda_solo_learn.py"]
IMPORTS = ["torch", "torchvision", "numpy", "lightly", "mmengine", "mmcv", "mmselfsup", "mmpretrain", "hvs_plugins"]

# (name, bench.py arguments, seconds at most) on the GPU: ResNet-50 at 224 px, ViT-S/16 2x224 + 8x96,
# bf16 selection (the gpu profile), batches sized for one H200
GPU_BENCH = [
    (
        "simsiam",
        ["--hosts", "lightly", "--methods", "simsiam", "--batch", "256", "--reps", "10", "--knob-reps", "2", "--no-exact-search"],
        150,
    ),
    ("dino", ["--hosts", "lightly", "--methods", "dino", "--dino-batch", "128", "--dino-reps", "10"], 150),
    ("simclr", ["--hosts", "lightly", "--methods", "simclr", "--batch", "256", "--reps", "10", "--no-exact-search"], 90),
    (
        "mmselfsup",
        [
            "--hosts",
            "mmselfsup",
            "--methods",
            "simsiam",
            "simclr",
            "--batch",
            "128",
            "--reps",
            "5",
            "--resolutions",
            "1.0",
            "0.5",
            "--no-exact-search",
        ],
        120,
    ),
]
DRY_BENCH = [("smoke", ["--hosts", "lightly", "--methods", "simsiam", "--no-knobs", "--no-exact-search"], 120)]


class Run:
    """Budgeted steps: each gets ``min(cap, time left - reserve)`` seconds; output into one log."""

    def __init__(self, out: Path, budget_s: float, env: dict) -> None:
        self.out, self.budget, self.env, self.t0 = out, budget_s, env, time.perf_counter()
        self.steps: list[dict] = []
        self.log = open(out / "run.log", "w")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def step(self, name: str, cmd: list[str], cap_s: float, reserve_s: float = 10.0, **info) -> dict:
        timeout = min(cap_s * self.budget / 480.0, self.left() - reserve_s)  # caps are for the 8-minute budget
        rec = dict(step=name, cmd=" ".join(cmd), timeout_s=round(timeout, 1), **info)
        if timeout < 5:
            rec.update(status="skipped", reason=f"budget spent ({self.left():.0f} s left)")
            self.note(f"== {name}: SKIPPED, budget spent")
            self.steps.append(rec)
            return rec
        self.note(f"== {name} (timeout {timeout:.0f} s): {rec['cmd']}")
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
            rec.update(rc=proc.returncode, status="ok" if proc.returncode == 0 else "failed")
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rec.update(rc=None, status="timeout")
            output = _text(err.stdout) + _text(err.stderr)
        rec["wall_s"] = round(time.perf_counter() - start, 1)
        self.note(output.rstrip("\n"))
        self.note(f"-- {name}: {rec['status']} in {rec['wall_s']} s")
        rec["tail"] = output[-1500:]
        self.steps.append(rec)
        return rec


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="HVS device check: CUDA tests + GPU benchmark into $OUT")
    p.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default $OUT)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: CPU test leg, smoke benchmark profile")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for everything (default 8 minutes)")
    p.add_argument("--no-install", action="store_true", help="use the current environment as it is")
    a = p.parse_args(argv)
    if not a.out:
        raise SystemExit("no output folder: pass --out DIR (on the device machine $OUT is set)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = gpu_name()
    if not a.dry_run and name == "cpu":
        raise SystemExit("no CUDA device here: run with --dry-run on a CPU machine (see BENCHMARKS.md, GPU profile)")
    site = Path(tempfile.mkdtemp(prefix="hvs-site-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1")  # safe path: the repo's hvs_plugins
    # folder (no adapters/ inside) must not shadow the installed package
    run = Run(out, a.budget, env)
    run.note(f"HVS device check: {name}, dry run {a.dry_run}, budget {a.budget:.0f} s, site {site}")
    try:
        wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
        if not a.no_install:
            if wheels:
                run.step(
                    "install",
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--no-index",
                        "--no-deps",
                        "--no-compile",
                        "--no-cache-dir",
                        "--target",
                        str(site),
                    ]
                    + [str(w) for w in wheels],
                    120,
                    wheels=len(wheels),
                )
            else:
                run.note(
                    "== install: no wheels in benchmarks/gpu/wheels (run prepare.py here first); the current "
                    "environment's packages are used"
                )
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")  # the layout of the project's wheel
            shutil.copytree(ROOT / "hvs_plugins", site / "hvs_plugins", ignore=ignore)
            shutil.copytree(ROOT / "adapters", site / "hvs_plugins" / "adapters", ignore=ignore)
            env["PYTHONPATH"] = os.pathsep.join([str(site)] + [x for x in [os.environ.get("PYTHONPATH")] if x])
        probe = (
            "import importlib, json\nout = {}\nfor n in %r:\n    try:\n        m = importlib.import_module(n)\n"
            "        out[n] = getattr(m, '__version__', '?') + ' ' + str(getattr(m, '__file__', ''))\n    except Exception as e:\n"
            "        out[n] = 'ERROR ' + type(e).__name__ + ': ' + str(e)[:200]\nprint(json.dumps(out))" % IMPORTS
        )
        imports = run.step("imports", [sys.executable, "-c", probe], 120)
        try:
            imports["versions"] = json.loads(imports["tail"].strip().splitlines()[-1])
        except (ValueError, IndexError, KeyError):
            pass
        tests = CUDA_TESTS[:1] if a.dry_run else CUDA_TESTS
        run.step(
            "tests",
            [
                sys.executable,
                "-m",
                "pytest",
                *tests,
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                "--continue-on-collection-errors",
                "--junitxml",
                str(out / "tests.xml"),
            ]
            + (["-k", "cpu"] if a.dry_run else []),
            40 if a.dry_run else 170,
        )
        json_name = "cpu-dry-run.json" if a.dry_run else name.lower().replace(" ", "-") + ".json"
        profile = "smoke" if a.dry_run else "gpu"
        for i, (stage, args, cap) in enumerate(DRY_BENCH if a.dry_run else GPU_BENCH):
            cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--profile", profile, "--out", str(out / json_name), *args] + (
                ["--append"] if i else []
            )
            run.step(f"bench {stage}", cmd, cap, reserve_s=5)
    finally:
        shutil.rmtree(site, ignore_errors=True)
        summary = dict(
            device=name,
            dry_run=a.dry_run,
            budget_s=a.budget,
            wall_s=round(time.perf_counter() - run.t0, 1),
            steps=[{k: v for k, v in s.items() if k != "tail"} for s in run.steps],
            tails={s["step"]: s.get("tail", "") for s in run.steps},
        )
        (out / "run.json").write_text(json.dumps(summary, indent=1))
        run.note(f"wrote {out / 'run.json'} ({summary['wall_s']} s)")
        run.log.close()
    return 0 if all(s["status"] == "ok" for s in run.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
