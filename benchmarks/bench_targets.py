"""Profiles and targets of ``bench.py``: what each profile runs, and the speed / memory targets
checked at the end of a run (PASS / MISS lines; not unit tests)."""

from __future__ import annotations

from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        device="cpu",
        threads=1,
        arch="resnet18",
        stem="cifar-pool",
        image_size=32,
        batch=64,
        dino=dict(backbone="resnet18", global_size=32, local_size=16, n_local=8, batch=64, out_dim=2048),
        resolutions=[1.0, 0.75, 0.5, 0.25],
        reps=5,
        warmup=1,
        dino_reps=3,
        autocast=None,
        hosts=["lightly", "mmselfsup", "solo-learn"],
        methods=["simsiam", "simclr", "dino"],
        mm_resolutions=[1.0, 0.5],
        knob_steps=8,
        knob_reps=2,
        variants=True,
        memory=True,
    ),
    "gpu": dict(
        device="cuda",
        threads=None,
        arch="resnet50",
        stem="imagenet",
        image_size=224,
        batch=128,
        dino=dict(backbone="vit_s16", global_size=224, local_size=96, n_local=8, batch=64, out_dim=65536),
        resolutions=[1.0, 0.75, 0.5, 0.25],
        reps=20,
        warmup=3,
        dino_reps=20,
        autocast="bfloat16",
        hosts=["lightly", "mmselfsup", "solo-learn"],
        methods=["simsiam", "simclr", "dino"],
        mm_resolutions=[1.0, 0.75, 0.5, 0.25],
        knob_steps=8,
        knob_reps=5,
        variants=True,
        memory=True,
    ),
    "smoke": dict(
        device="cpu",
        threads=1,
        arch="small",
        stem="cifar-pool",
        image_size=16,
        batch=4,
        dino=dict(backbone="small", global_size=16, local_size=8, n_local=2, batch=4, out_dim=128),
        resolutions=[1.0, 0.5],
        reps=1,
        warmup=0,
        dino_reps=1,
        autocast=None,
        hosts=["lightly"],
        methods=["simsiam", "simclr", "dino"],
        mm_resolutions=[1.0],
        knob_steps=2,
        knob_reps=1,
        variants=False,
        memory=True,
        smoke=True,
    ),
}

TARGETS = {
    ("simsiam", 1.0): 1.40,
    ("simsiam", 0.5): 1.12,
    ("dino", 1.0): 1.75,
    ("dino", 0.5): 1.35,
}
CORE_SHARE_TARGET = 0.02
EXACT_SEARCH_TARGET_MS = 1.0
MEMORY_TARGET = 1.05
PAPER_TABLE14 = {"simsiam": {1.0: 1.55, 0.75: 1.45, 0.5: 1.24, 0.25: 1.16}, "dino": {1.0: 2.15, 0.75: 1.68, 0.5: 1.56, 0.25: 1.5}}


def _layout(r: dict) -> str:
    if r["method"].split(" ")[0] == "dino":
        return f"4G+{r['n_views'] - 4}L"
    return f"N={r['n_views']}"


def check_targets(records: list[dict], log) -> list[dict]:
    checks = []

    def check(name, value, limit, fmt):
        ok = value is not None and value <= limit
        checks.append(dict(target=name, value=value, limit=limit, status="PASS" if ok else "MISS"))
        log(f"{'PASS' if ok else 'MISS'}  {name}: {fmt(value)} (target <= {fmt(limit)})")

    steps = [r for r in records if r["kind"] == "step"]
    for (method, res), limit in TARGETS.items():
        for r in steps:
            base_method = r["method"].split(" ")[0]
            if base_method == method and r["resolution"] == res and r["variant"] == "default":
                check(f"{r['host']} {r['method']} {_layout(r)} ratio at {res:.0%}", r["ratio"], limit, lambda x: f"x{x:.3f}")
        for r in steps:
            base_method = r["method"].split(" ")[0]
            if base_method == method and r["resolution"] == res and r["variant"] != "default":
                check(
                    f"[variant] {r['host']} {r['method']} {_layout(r)} {r['variant']} ratio at {res:.0%}",
                    r["ratio"],
                    limit,
                    lambda x: f"x{x:.3f}",
                )
    worst = max(steps, key=lambda r: r["core_share"]) if steps else None
    if worst:
        check(
            f"core share (worst: {worst['host']} {worst['method']} {worst['variant']} res {worst['resolution']})",
            worst["core_share"],
            CORE_SHARE_TARGET,
            lambda x: f"{x:.2%}",
        )
    for r in records:
        if r["kind"] == "exact_search":
            check(
                "exact DINO search per 256 samples (CPU)" if r["device"] == "cpu" else "exact DINO search per 256 samples",
                r["ms_per_256"],
                EXACT_SEARCH_TARGET_MS,
                lambda x: f"{x:.3f} ms",
            )
    mems = [r for r in steps if r.get("memory_ratio") is not None and r["variant"] == "default"]
    if mems:
        worst = max(mems, key=lambda r: r["memory_ratio"])
        check(
            f"peak memory (worst: {worst['host']} {worst['method']} res {worst['resolution']})",
            worst["memory_ratio"],
            MEMORY_TARGET,
            lambda x: f"x{x:.3f}",
        )
    else:
        log("n/a   peak memory: not measurable here")
    return checks
