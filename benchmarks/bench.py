"""HVS cost benchmark: the host's own training step vs the HVS step, side by side, per host adapter.

    python benchmarks/bench.py --profile cpu      # ResNet-18 32 px batch 64 (DINO: ResNet-18, 2x32 + 8x16 crops)
    python benchmarks/bench.py --profile gpu      # ResNet-50 224 px SimSiam, ViT-S/16 2x224 + 8x96 DINO, bf16 selection
    python benchmarks/bench.py --profile smoke    # seconds; used by tests/test_benchmarks_smoke.py

For every (host, method) the two steps run in the same process, interleaved (A, B, A, B, ...),
after warm-up, on the same candidate batches:

- host step (A): the host's own training step on 2 views (lightly: as in lightly's examples —
  forward of the 2 views, loss, backward, optimizer step; DINO: momentum update, teacher on the 2
  globals, student on all crops, DINOLoss, last-layer cancel, step; MMSelfSup: ``model.train_step``);
- HVS step (B): selection through our adapter (lightly ``HVSLoss.select``; MMSelfSup
  ``HardViewSelectionHook.before_train_iter``) on N candidates, then the same host step.

Printed and written (``benchmarks/results/<device>.json``): median of the per-rep ratios B/A for
each selection resolution, the peak-memory ratio (GPU: ``torch.cuda.max_memory_allocated``; CPU:
peak RSS of the step, read from /proc/self/status after resetting VmHWM, with glibc's mmap threshold
pinned so that freed tensors leave the RSS — a separate pass after the timings), and the core share:
the time of our own arithmetic (pair enumeration, pair losses, argmax, gather, plus the state guard
and the resize) measured separately on the actual tensors of the step, over the median HVS step time.
Targets are checked at the end (PASS / MISS lines); they are not unit tests.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules
if importlib.util.find_spec("hvs_plugins") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # not installed: the core from the checkout (an installed copy wins)

import hvs_plugins  # noqa: E402
from hvs_plugins import CombinationSpace, HVSSchedule  # noqa: E402

# split along its concepts: profiles and targets, timing/memory helpers, models, benchmark cases (host step vs HVS step)
from bench_cases import Case, lightly_dino, lightly_two_view, mmselfsup_case  # noqa: E402
from bench_targets import PROFILES, check_targets  # noqa: E402
from bench_timing import CLOCK, PeakMemory, micro, timed, timed2  # noqa: E402


# ----------------------------------------------------------------------------- runners
def run_case(
    case: Case, variants: list[dict], reps: int, warmup: int, device: torch.device, meta: dict, log: Callable[[str], None]
) -> tuple[Case, list[dict], list[dict], list]:
    """Interleaved A (host), B (HVS variant) timings. Memory and core share come later
    (:func:`finish_case`), after every timing: pinning glibc's mmap threshold for the memory pass
    changes allocation speed for the rest of the process."""
    batches = [case.make_candidates() for _ in range(2)]
    host_t: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    hvs_t: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    host_w: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    hvs_w: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    use_cpu = CLOCK["name"] == "cpu"
    for _ in range(warmup):
        for i, v in enumerate(variants):
            case.configure(v)
            case.host_step(batches[0])
            case.hvs_step(batches[0], v)
    for r in range(reps):
        b = batches[r % 2]
        for i, v in enumerate(variants):
            case.configure(v)
            for store, wall, fn in ((host_t, host_w, lambda: case.host_step(b)), (hvs_t, hvs_w, lambda: case.hvs_step(b, v))):
                w, c = timed2(fn, device)
                store[i].append(c if use_cpu else w)
                wall[i].append(w)
    records = []
    for i, v in enumerate(variants):
        ratios = [bt / at for at, bt in zip(host_t[i], hvs_t[i])]
        rec = dict(meta)
        rec.update(
            kind="step",
            host=case.host,
            method=case.method,
            variant=v.get("name", "default"),
            resolution=v["resolution"],
            joint_views=v.get("joint_views", False),
            autocast=str(v.get("autocast", meta.get("autocast"))),
            batch=case.batch,
            image_size=case.image_size,
            backbone=case.backbone,
            n_views=case.n_views,
            cap=case.cap,
            reps=reps,
            notes=case.notes,
            ratio=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            host_ms=statistics.median(host_t[i]) * 1e3,
            hvs_ms=statistics.median(hvs_t[i]) * 1e3,
            clock=CLOCK["name"],
            wall_ratio=statistics.median([bw / aw for aw, bw in zip(host_w[i], hvs_w[i])]),
            host_wall_ms=statistics.median(host_w[i]) * 1e3,
            hvs_wall_ms=statistics.median(hvs_w[i]) * 1e3,
            memory_ratio=None,
            memory_delta_ratio=None,
        )
        records.append(rec)
        log(
            f"  {rec['host']:9s} {rec['method']:34s} {rec['variant']:12s} res {rec['resolution']:.2f}: "
            f"ratio x{rec['ratio']:.3f} [{rec['ratio_min']:.2f}-{rec['ratio_max']:.2f}]  host {rec['host_ms']:.0f} ms  "
            f"HVS {rec['hvs_ms']:.0f} ms ({CLOCK['name']} clock; wall ratio x{rec['wall_ratio']:.3f})"
        )
    return case, variants, records, batches


def finish_case(case: Case, variants: list[dict], records: list[dict], batches: list, mem: Optional["PeakMemory"], log) -> None:
    """Peak memory (one host and one HVS step per variant) and the core share on the actual tensors."""
    for i, v in enumerate(variants):
        rec = records[i]
        if mem is not None and mem.available and v.get("memory", True):
            case.configure(v)
            ha, hd = mem.measure(lambda: case.host_step(batches[0]))
            ba, bd = mem.measure(lambda: case.hvs_step(batches[0], v))
            rec.update(
                memory_ratio=ba / ha,
                memory_delta_ratio=(bd / hd) if hd > 0 else None,
                host_peak_mb=ha / 2**20,
                hvs_peak_mb=ba / 2**20,
                host_step_mb=hd / 2**20,
                hvs_step_mb=bd / 2**20,
                memory_method=mem.note,
            )
        case.configure(v)
        parts = case.core_times(batches[0], v)
        core_ms = sum(parts.values()) * 1e3
        rec.update(core_ms=core_ms, core_parts_ms={k: round(x * 1e3, 4) for k, x in parts.items()}, core_share=core_ms / rec["hvs_ms"])
        mr = (
            "n/a"
            if rec.get("memory_ratio") is None
            else f"x{rec['memory_ratio']:.3f} (step delta {rec['host_step_mb']:.0f} -> {rec['hvs_step_mb']:.0f} MB)"
        )
        log(
            f"  {rec['host']:9s} {rec['method']:34s} {rec['variant']:12s} res {rec['resolution']:.2f}: "
            f"memory {mr}  core {rec['core_share']:.2%} ({rec['core_ms']:.2f} ms: "
            + ", ".join(f"{k} {x:.2f}" for k, x in rec["core_parts_ms"].items())
            + ")"
        )


def run_knobs(case: Case, prof: dict, device: torch.device, meta: dict, log) -> list[dict]:
    """Amortised cost of HVSSchedule: every k steps, with probability p, from epoch e (steps where
    HVS is off train on the first two candidates, i.e. the host step)."""
    steps, reps = prof["knob_steps"], prof["knob_reps"]
    knobs = [
        ("every", dict(every=2)),
        ("every", dict(every=4)),
        ("probability", dict(probability=0.5)),
        ("start_epoch", dict(start_epoch=1)),
    ]
    v = {"resolution": 1.0}
    case.configure(v)
    batch = case.make_candidates()
    out = []
    for name, kw in knobs:
        a_t, b_t, ratios, fractions = [], [], [], []
        sched = HVSSchedule(seed=0, **kw)
        for r in range(reps):

            def host_run():
                for _ in range(steps):
                    case.host_step(batch)

            active = [sched.active(r * steps + s, epoch=0) for s in range(steps)]

            def hvs_run():
                for on in active:
                    (case.hvs_step(batch, v) if on else case.host_step(batch))

            at = timed(host_run, device)
            bt = timed(hvs_run, device)
            a_t.append(at)
            b_t.append(bt)
            ratios.append(bt / at)
            fractions.append(sum(active) / steps)
        rec = dict(meta)
        rec.update(
            kind="knob",
            host=case.host,
            method=case.method,
            resolution=1.0,
            knob=name,
            knob_args=kw,
            ratio=statistics.median(ratios),
            hvs_fraction=statistics.mean(fractions),
            steps=steps,
            reps=reps,
            batch=case.batch,
            image_size=case.image_size,
            n_views=case.n_views,
            cap=case.cap,
            memory_ratio=None,
            core_share=None,
        )
        out.append(rec)
        log(f"  knob {name}={list(kw.values())[0]}: amortised ratio x{rec['ratio']:.3f} (HVS on {rec['hvs_fraction']:.0%} of steps)")
    return out


def exact_search_timing(device: torch.device, meta: dict, log, batch: int = 256) -> list[dict]:
    """CombinationSpace(4, 16, 8).exact_search on ce [4, 20, 256] (and the capped search, cap 128)."""
    g = torch.Generator().manual_seed(0)
    ce = torch.rand(4, 20, batch, generator=g).to(device)
    space = CombinationSpace(4, 16, 8)
    gen = torch.Generator().manual_seed(0)
    exact = micro(lambda: space.exact_search(ce, gen), device, min_runs=50, budget_s=1.0)
    capped = micro(lambda: space.search(ce, 128, gen), device, min_runs=50, budget_s=1.0)
    recs = []
    for name, t, cap in (("exact_search", exact, None), ("capped_search", capped, 128)):
        rec = dict(meta)
        rec.update(
            kind=name,
            host="core",
            method="dino",
            resolution=None,
            ratio=None,
            memory_ratio=None,
            core_share=None,
            batch=batch,
            image_size=None,
            n_views=20,
            cap=cap,
            ms=t * 1e3,
            ms_per_256=t * 1e3 * 256 / batch,
            combinations=space.size,
        )
        recs.append(rec)
        log(f"  {name} over {space.size} combinations (4G+16L, 8 locals), ce [4, 20, {batch}]: {t * 1e3:.3f} ms")
    return recs


# ----------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> list[dict]:
    p = argparse.ArgumentParser(description="HVS cost benchmark (host step vs HVS step, interleaved)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>.json)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--hosts", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--resolutions", type=float, nargs="+", default=None)
    p.add_argument("--no-knobs", action="store_true")
    p.add_argument("--no-variants", action="store_true")
    p.add_argument("--only-variants", action="store_true", help="run the fix variants only (no default resolutions)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--dino-reps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="batch of the two-view methods (GPU: the largest that fits)")
    p.add_argument("--dino-batch", type=int, default=None)
    p.add_argument(
        "--dino-backbone",
        choices=["resnet18", "resnet50", "vit_tiny", "vit_s16", "small"],
        default=None,
        help="DINO backbone instead of the profile's (records are labelled 'dino (<backbone>)')",
    )
    p.add_argument("--knob-reps", type=int, default=None)
    p.add_argument("--knob-steps", type=int, default=None)
    p.add_argument("--no-exact-search", action="store_true")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="step timer: wall (default on GPU) or process CPU time (default on CPU: robust on a shared machine)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into an existing JSON (records of the (host, method) pairs run now replace the old ones)",
    )
    a = p.parse_args(argv)
    prof = copy.deepcopy(PROFILES[a.profile])
    for key in ("threads", "reps", "warmup", "hosts", "methods", "resolutions"):
        if getattr(a, key) is not None:
            prof[key] = getattr(a, key)
    if a.batch is not None:
        prof["batch"] = a.batch
    if a.dino_batch is not None:
        prof["dino"]["batch"] = a.dino_batch
    if a.dino_reps is not None:
        prof["dino_reps"] = a.dino_reps
    if a.knob_reps is not None:
        prof["knob_reps"] = a.knob_reps
    if a.knob_steps is not None:
        prof["knob_steps"] = a.knob_steps
    if a.resolutions is not None:
        prof["mm_resolutions"] = [r for r in prof["mm_resolutions"] if r in a.resolutions] or a.resolutions
    device = torch.device(prof["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--profile gpu needs a CUDA device (none is available here); run --profile cpu")
    if prof["threads"]:
        torch.set_num_threads(prof["threads"])
    CLOCK["name"] = a.clock or ("cpu" if device.type == "cpu" else "wall")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out_path = (
        Path(a.out)
        if a.out
        else ROOT / "benchmarks" / "results" / ("cpu.json" if device.type == "cpu" else dev_name.lower().replace(" ", "-") + ".json")
    )
    lines: list[str] = []

    def log(s: str) -> None:
        lines.append(s)
        print(s, flush=True)

    import lightly

    meta = dict(
        device=dev_name,
        profile=a.profile,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        lightly=lightly.__version__,
        hvs_plugins=hvs_plugins.__version__,
        cpu=platform.processor() or platform.machine(),
        autocast=prof["autocast"],
        load_start=[round(x, 2) for x in os.getloadavg()],
    )
    meta["clock"] = CLOCK["name"]
    log(
        f"HVS benchmark, profile {a.profile}: device {dev_name}, {meta['threads']} threads, load {meta['load_start']}, "
        f"{CLOCK['name']} clock"
    )
    mem = None if a.no_memory or not prof["memory"] else PeakMemory(device)
    records: list[dict] = []
    t_start = time.perf_counter()
    res = prof["resolutions"]
    default_variants = [] if a.only_variants else [{"resolution": r} for r in res]
    fix_variants = []
    if prof["variants"] and not a.no_variants:
        cpu_bf16 = device.type == "cpu"
        fix_variants = [{"name": "joint_views", "resolution": 1.0, "joint_views": True, "memory": False}]
        if cpu_bf16:
            fix_variants += [
                {"name": "bf16", "resolution": 1.0, "autocast": "bfloat16", "memory": False},
                {"name": "bf16", "resolution": 0.5, "autocast": "bfloat16", "memory": False},
            ]
        else:
            fix_variants += [{"name": "fp32", "resolution": 1.0, "autocast": None, "memory": False}]

    def stage(title, fn):
        log(f"\n== {title}")
        try:
            return fn()
        except Exception as err:  # a host that is missing or broken must not sink the others
            log(f"  SKIPPED: {type(err).__name__}: {err}")
            return []

    pending = []  # (case, variants, records, batches): memory and core share after all timings

    def timing(case, variants, reps):
        c, vs, recs, batches = run_case(case, variants, reps, prof["warmup"], device, meta, log)
        pending.append((c, vs, recs, batches))
        return recs

    for host in prof["hosts"]:
        for method in prof["methods"]:
            if host == "lightly" and method in ("simsiam", "simclr"):

                def go(method=method):
                    case = lightly_two_view(method, prof, device, 4)
                    recs = timing(case, default_variants + (fix_variants if method == "simsiam" else []), prof["reps"])
                    if method == "simsiam" and not a.no_knobs:
                        recs += run_knobs(case, prof, device, meta, log)
                    return recs

                records += stage(f"lightly {method} (N=4)", go)
            elif host == "lightly" and method == "dino":

                def go_dino():
                    case = lightly_dino(prof, device, cap=None, exact=True, backbone=a.dino_backbone)
                    vs = default_variants + [dict(v) for v in fix_variants if v["resolution"] == 1.0 and v["name"] != "joint_views"]
                    # teacher reuse is exact (and allowed by the adapter) only without BatchNorm: ViTs
                    if fix_variants and (a.dino_backbone or prof["dino"]["backbone"]).startswith("vit"):
                        vs += [{"name": "reuse_teacher", "resolution": 1.0, "reuse_teacher": True, "memory": False}]
                        vs += [
                            dict(v, name=v["name"] + "+reuse_teacher", reuse_teacher=True)
                            for v in fix_variants
                            if v["resolution"] == 1.0 and v["name"] != "joint_views"
                        ]
                    recs = timing(case, vs, prof["dino_reps"])
                    if a.only_variants:
                        return recs
                    capped = lightly_dino(prof, device, cap=128, exact=False, backbone=a.dino_backbone)
                    recs += timing(capped, [{"name": "cap128", "resolution": 1.0, "memory": False}], prof["dino_reps"])
                    return recs

                records += stage("lightly dino (4G+16L candidates, 2G+8L trained)", go_dino)
            elif host == "solo-learn":
                if method != prof["methods"][0]:
                    continue

                def solo():
                    import importlib

                    importlib.import_module("solo")  # ImportError -> SKIPPED with the reason
                    raise NotImplementedError(
                        "solo-learn is importable, but its cases are not in this benchmark yet "
                        "(the adapter's method wrapper is the place to time)"
                    )

                records += stage("solo-learn", solo)
            elif host == "mmselfsup" and method in ("simsiam", "simclr"):
                mm_vars = [{"resolution": r} for r in prof["mm_resolutions"]]
                forwards = [True] if method == "simsiam" else [True, False]
                for pf in forwards:
                    records += stage(
                        f"mmselfsup {method} (N=4{', pair forward' if method == 'simclr' and pf else ''})",
                        lambda pf=pf, method=method: timing(mmselfsup_case(method, prof, device, 4, pf), mm_vars, prof["reps"]),
                    )
    log("\n== peak memory and core share (after all timings)")
    for c, vs, recs, batches in pending:
        stage(f"{c.host} {c.method}", lambda: finish_case(c, vs, recs, batches, mem, log))
    records = [r for r in records if r["kind"] != "step" or "core_share" in r]
    if not a.no_exact_search:
        log("\n== core: DINO combination search")
        records += exact_search_timing(device, meta, log)
    for r in records:
        r["load_end"] = [round(x, 2) for x in os.getloadavg()]
    log(f"\n== targets (wall {time.perf_counter() - t_start:.0f} s, load now {[round(x, 2) for x in os.getloadavg()]})")
    if a.append and out_path.is_file():
        key = lambda r: (  # noqa: E731
            r["host"],
            r["method"],
            r["kind"],
            r.get("variant"),
            r.get("resolution"),
            r.get("cap"),
            json.dumps(r.get("knob_args"), sort_keys=True),
        )
        fresh = {key(r) for r in records}
        old = [r for r in json.loads(out_path.read_text()) if key(r) not in fresh]
        records = old + records
        old_log = out_path.with_suffix(".log").read_text() if out_path.with_suffix(".log").is_file() else ""
        lines[:0] = [old_log.rstrip("\n"), "", "-" * 100]
    checks = check_targets(records, log)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(records, indent=1, default=str))
    (out_path.with_suffix(".checks.json")).write_text(json.dumps(checks, indent=1))
    (out_path.with_suffix(".log")).write_text("\n".join(lines) + "\n")
    log(f"\nwrote {out_path}")
    return records


if __name__ == "__main__":
    main()
