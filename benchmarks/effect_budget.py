"""Is HVS worth its compute? Accuracy-vs-compute curves of the effect study (issue 19).

    python benchmarks/effect_budget.py --procs 2            # the whole plan (many CPU hours; resumes)
    python benchmarks/effect_budget.py --data muted --arms baseline hvs min_iou --epochs 24 48 96
    python benchmarks/effect_budget.py --report-only        # effect.json["budget"], figure, table
    python benchmarks/effect_budget.py --report-only --markdown BENCHMARKS.md   # ... and the tables there
    python benchmarks/effect_budget.py --tiny --out /tmp/b  # seconds (smoke)

Per data set (``muted``: the study's default cell; ``photos``: its base cell on photo patches) and
arm, SimCLR trained for several epoch budgets, one run per seed. Arms: ``baseline`` (two random
views), ``hvs``, ``min_iou`` (the zero-cost geometric control: the least-overlapping candidate
crops, no forward), and the cheap HVS variants at the longest budget (``hvs_res25``: selection at
25% resolution; ``hvs_half``: HVS on half of the steps; ``hvs_layer2``: scoring on the activations
after the second conv block at 50% resolution, approximate). A run's compute is in host-step units:
epochs × its measured compute ratio (selection + host step over host step, timed in the run).
The compute-matched baseline of an arm is read from the baseline curve (linear in log compute),
and for the longest budget one real baseline run at HVS's compute (``matched``). The generator arms
(issue 20; ``gen``: the light learned hard-view generator on the two random views, ``gen_hvs``: on
HVS's selected pair) count the generator's cost measured side by side by ``generator_cost.py``.

Runs are cached in the effect study's folder (``<out>/effect_runs/b*.json``: ``effect.py``'s key
plus the torch build, as numbers differ between builds for the same command and seed; the
24-epoch points are re-run here rather than mixed with ``effect.py``'s older build), so an
interrupted study resumes. The plan, in the
issue's order, is fixed before any seed runs (no tuning to seeds).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from effect import BASE_FLAGS, CELLS, Study, _parse, run_job  # noqa: E402

DATA_CELLS = {"muted": "muted", "photos": "base"}  # data set -> effect-study cell
# arm -> (training arm, extra demo flags)
ARMS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("baseline", []),
    "hvs": ("hvs", []),
    "min_iou": ("hvs", ["--select-by", "min_iou"]),
    "hvs_res25": ("hvs", ["--resolution-scale", "0.25"]),
    "hvs_half": ("hvs", ["--hvs-probability", "0.5"]),
    "hvs_layer2": ("hvs", ["--score-layer", "backbone.5", "--resolution-scale", "0.5"]),
    # issue 20: the learned hard-view generator (light, eps 0.02 -> 0.06), alone and after HVS's selection
    "gen": ("baseline", ["--generator", "light"]),
    "gen_hvs": ("hvs", ["--generator", "light"]),
}
GEN_ARMS = ["gen", "gen_hvs"]
CHEAP = ["hvs_res25", "hvs_half", "hvs_layer2"]
EPOCHS = [24, 48, 96]
SEEDS3, SEEDS5 = [0, 1, 2], [0, 1, 2, 3, 4]


def plan(longest: int = 96) -> list[tuple[str, str, int, int]]:
    """(data, arm, epochs, seed) in the issue's order: the default setting's baseline / hvs /
    min_iou curves (3 seeds), its decision points (24 and the longest budget) on seeds 3-4, the
    photos' curves, then the cheap variants at the longest budget. ``matched`` runs are added by
    the scheduler once the HVS runs of the longest budget have measured their ratio."""
    out: list[tuple[str, str, int, int]] = []
    for e in EPOCHS:
        for s in SEEDS3:
            for arm in ("baseline", "hvs", "min_iou"):
                out.append(("muted", arm, e, s))
    for e in (24, longest):
        for s in SEEDS5[3:]:
            for arm in ("baseline", "hvs", "min_iou"):
                out.append(("muted", arm, e, s))
    for s in SEEDS5:
        out.append(("muted", "matched", longest, s))
    for e in EPOCHS:
        for s in SEEDS3:
            for arm in ("baseline", "hvs", "min_iou"):
                out.append(("photos", arm, e, s))
    for s in SEEDS3:
        out.append(("photos", "matched", longest, s))
    for arm in CHEAP:
        for s in SEEDS3:
            out.append(("muted", arm, longest, s))
    for data in DATA_CELLS:  # issue 20: the generator, alone and after HVS, at 24 epochs and the longest budget
        for e in (24, longest):
            for s in SEEDS3:
                for arm in GEN_ARMS:
                    out.append((data, arm, e, s))
    return out


def generator_ratio() -> float:
    """The light generator's cost per step over the host step, measured side by side in one process
    (``benchmarks/generator_cost.py``; the in-run step time includes the generator, so it cannot
    be the reference)."""
    rec = json.loads((ROOT / "benchmarks" / "results" / "generator_cost.json").read_text())
    return next(v["ratio"] for k, v in rec["arms"].items() if "light" in k)


class Budget:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.study = Study(argparse.Namespace(out=a.out, tiny=a.tiny))
        self.running_path: dict[cf.Future, Path] = {}  # where each running job's result goes

    def argv(self, data: str, arm: str, seed: int) -> list[str]:
        return self.study.base_argv + BASE_FLAGS + CELLS[DATA_CELLS[data]][0] + ARMS[arm][1] + ["--seed", str(seed)]

    def epochs(self, e: int) -> int:
        return max(1, e // 24) if self.a.tiny else e  # --tiny: 1, 2, 4 epochs

    def path(self, data: str, arm: str, e: int, seed: int) -> Path:
        from effect import _key

        import torch

        train_arm = ARMS.get(arm, ("baseline", []))[0]
        key = _key(_parse(self.argv(data, arm if arm in ARMS else "baseline", seed)), train_arm, e)
        # the torch build is part of the key: numbers differ between builds (same command and seed)
        return self.study.cache / f"b{hashlib.sha1((key + torch.__version__).encode()).hexdigest()[:12]}.json"

    def load(self, data: str, arm: str, e: int, seed: int) -> Optional[dict]:
        p = self.path(data, arm, e, seed)
        return json.loads(p.read_text()) if p.exists() else None

    def matched_epochs(self, data: str, e: int, seeds: list[int]) -> Optional[int]:
        runs = [self.load(data, "hvs", e, s) for s in seeds]
        if any(r is None for r in runs):
            return None
        return max(1, round(e * statistics.median(r["compute_ratio"] for r in runs)))

    def run(self) -> None:
        todo = [
            j
            for j in plan(self.a.longest)
            if j[0] in self.a.data and j[1] in self.a.arms and (j[2] in self.a.epochs or j[1] == "matched") and j[3] in self.a.seeds
        ]
        running: dict[cf.Future, str] = {}
        claimed: set[Path] = set()
        with cf.ProcessPoolExecutor(max_workers=self.a.procs) as pool:
            while todo or running:
                for job in list(todo):
                    if len(running) >= self.a.procs:
                        break
                    data, arm, e, seed = job
                    ep = self.epochs(e)
                    if arm == "matched":  # a baseline at HVS's measured compute of this budget
                        seeds = SEEDS5 if data == "muted" else SEEDS3
                        m = self.matched_epochs(data, ep, [s for s in seeds if s in self.a.seeds])
                        if m is None:
                            if any(j[0] == data and j[1] == "hvs" and j[2] == e for j in todo) or running:
                                continue  # waits for the HVS runs
                            todo.remove(job)
                            continue
                        ep, arm_key = m, "baseline"
                    else:
                        arm_key = arm
                    todo.remove(job)
                    p = self.path(data, arm_key, ep, seed)
                    if p.exists() or p in claimed:
                        continue
                    claimed.add(p)
                    fut = pool.submit(run_job, self.argv(data, arm_key, seed), ARMS[arm_key][0], ep, self.a.threads)
                    running[fut] = f"{data} {arm} seed {seed} ({ep} ep)"
                    self.running_path[fut] = p
                    print(f"[budget] start {running[fut]}", flush=True)
                if not running:
                    todo.clear()
                    continue
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    what = running.pop(fut)
                    res = fut.result()
                    self.running_path.pop(fut).write_text(json.dumps(res))
                    print(
                        f"[budget] done  {what}: kNN {res['knn']:.1%}, ratio x{res['compute_ratio']:.2f}, {res['wall_s']:.0f}s", flush=True
                    )

    def summary(self) -> dict[str, Any]:
        """``{data: {arm: {epochs: {"knn": [...], "compute": float, ...}}}}`` from the cached runs
        (an entry needs all of its seeds: 5 where the plan has 5, else 3)."""
        out: dict[str, Any] = {}
        for data in DATA_CELLS:
            arms: dict[str, Any] = {}
            for arm in ARMS:
                cells = {}
                for e in sorted(set(self.a.epochs) | {self.a.longest}):
                    ep = self.epochs(e)
                    seeds = SEEDS5 if (data == "muted" and e in (24, self.a.longest) and arm in ("baseline", "hvs", "min_iou")) else SEEDS3
                    runs = [self.load(data, arm, ep, s) for s in seeds]
                    if any(r is None for r in runs):
                        runs = [self.load(data, arm, ep, s) for s in SEEDS3]
                        if any(r is None for r in runs):
                            continue
                        seeds = SEEDS3
                    ratio = statistics.median(r["compute_ratio"] for r in runs) if ARMS[arm][0] == "hvs" else 1.0
                    if arm in GEN_ARMS:  # HVS's in-run ratio is relative to the step with the generator
                        ratio *= generator_ratio()
                    cells[str(e)] = {
                        "knn": [r["knn"] for r in runs],
                        "compute": ep * ratio,
                        "compute_ratio": ratio,
                        "compute_ratios": [r["compute_ratio"] for r in runs],  # per seed, as measured in the run
                        "seeds": seeds,
                        "lowest_iou_fraction": [r["lowest_iou_fraction"] for r in runs] if ARMS[arm][0] == "hvs" else None,
                        "epochs_run": ep,
                    }
                if cells:
                    arms[arm] = cells
            # the real compute-matched baseline at the longest budget
            if "hvs" in arms and str(self.a.longest) in arms["hvs"]:
                h = arms["hvs"][str(self.a.longest)]
                m = self.matched_epochs(data, h["epochs_run"], h["seeds"])
                runs = [self.load(data, "baseline", m, s) for s in h["seeds"]] if m else [None]
                if all(r is not None for r in runs):
                    arms["matched"] = {
                        str(self.a.longest): {
                            "knn": [r["knn"] for r in runs],
                            "compute": float(m),
                            "compute_ratio": 1.0,
                            "seeds": h["seeds"],
                            "epochs_run": m,
                        }
                    }
            if arms:
                out[data] = arms
        return out


def matched_from_curve(base: dict[str, dict], compute: float, slack: float = 0.0) -> Optional[float]:
    """The baseline's mean kNN at ``compute`` host steps, linear in log compute between its budgets
    (None outside the curve, beyond a relative ``slack`` at its ends)."""
    pts = sorted((v["compute"], statistics.mean(v["knn"])) for v in base.values())
    xs = [math.log(c) for c, _ in pts]
    x = math.log(compute)
    if len(pts) < 2 or x < xs[0] - math.log1p(slack) - 1e-9 or x > xs[-1] + math.log1p(slack) + 1e-9:
        return None
    return float(np.interp(x, xs, [k for _, k in pts]))


def demo_summary(arms: dict[str, Any], seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """What the demo prints of the curves of its setting (``arms``: ``budget[data]``), over
    ``seeds`` (fixed, so that more seeds in the study do not change it): ``{arm: {epochs:
    "mean ± std"}}`` for baseline, hvs and min_iou, HVS's compute per budget (epochs of host steps)
    and the baseline at that compute (its curve through the real compute-matched runs)."""

    def sub(cell: dict) -> dict:
        keep = [i for i, s in enumerate(cell["seeds"]) if s in seeds]
        out = {**cell, "knn": [cell["knn"][i] for i in keep], "seeds": [cell["seeds"][i] for i in keep]}
        if cell.get("compute_ratios"):  # the compute of these seeds' runs (median ratio), not of all seeds
            out["compute"] = cell["epochs_run"] * statistics.median(cell["compute_ratios"][i] for i in keep)
        return out

    arms = {a: {e: sub(c) for e, c in cells.items()} for a, cells in arms.items() if a in ("baseline", "hvs", "min_iou", "matched")}
    out: dict[str, Any] = {"seeds": list(seeds)}
    for arm in ("baseline", "hvs", "min_iou"):
        out[arm] = {e: _ms(c["knn"]) for e, c in sorted(arms.get(arm, {}).items(), key=lambda kv: int(kv[0]))}
    out["hvs_compute"] = {e: round(c["compute"], 1) for e, c in arms.get("hvs", {}).items()}
    base = baseline_curve(arms)  # its budgets and the real compute-matched runs
    ref = {e: matched_from_curve(base, c["compute"], 0.01) for e, c in arms.get("hvs", {}).items()} if len(base) >= 2 else {}
    out["baseline_at_hvs_compute"] = {e: f"{v:.1%}" for e, v in ref.items() if v is not None}
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1%} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.1%}"


def baseline_curve(arms: dict[str, Any]) -> dict[str, dict]:
    """The baseline's points: its budgets plus the real compute-matched runs of the longest budget
    (baseline runs at HVS's compute), so that arms up to HVS's compute there have a reference."""
    curve = dict(arms.get("baseline", {}))
    for e, c in arms.get("matched", {}).items():
        curve[f"matched{e}"] = c
    return curve


def table(budget: dict[str, Any]) -> str:
    rows = [
        "| data | arm | epochs | compute (epochs of host steps) | seeds | kNN (mean ± std) | baseline at equal compute (curve) | Δ vs curve |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for data, arms in budget.items():
        base = baseline_curve(arms)
        for arm, cells in arms.items():
            for e, c in sorted(cells.items(), key=lambda kv: int(kv[0])):
                mean = statistics.mean(c["knn"])
                # 1% slack: the matched run's epochs are HVS's compute rounded to whole epochs
                ref = matched_from_curve(base, c["compute"], 0.01) if arm not in ("baseline", "matched") and len(base) >= 2 else None
                rows.append(
                    f"| {data} | {arm} | {e} | {c['compute']:.1f} | {len(c['knn'])} | {_ms(c['knn'])} | "
                    f"{'-' if ref is None else f'{ref:.1%}'} | {'-' if ref is None else f'{(mean - ref) * 100:+.1f} pts'} |"
                )
    return "\n".join(rows)


def per_seed(budget: dict[str, Any]) -> str:
    """kNN per seed, every arm and budget: where a mean hides a seed."""
    rows = ["| data | epochs | arm | " + " | ".join(f"seed {s}" for s in SEEDS5) + " |", "|---|---|---|" + "---|" * len(SEEDS5)]
    for data, arms in budget.items():
        for e in sorted({e for cells in arms.values() for e in cells}, key=int):
            for arm, cells in arms.items():
                if e in cells:
                    by_seed = dict(zip(cells[e]["seeds"], cells[e]["knn"]))
                    rows.append(
                        f"| {data} | {e} | {arm} | " + " | ".join(f"{by_seed[s]:.1%}" if s in by_seed else "-" for s in SEEDS5) + " |"
                    )
    return "\n".join(rows)


MD_START, MD_END = "<!-- budget-tables -->", "<!-- /budget-tables -->"


def report(budget: dict[str, Any]) -> str:
    """What ``--report-only`` prints: the summary table and the per-seed table."""
    return table(budget) + "\n\n" + per_seed(budget)


def write_markdown(path: Path, text: str) -> None:
    """Replace the ```text block between the budget-tables markers of ``path`` with ``text``."""
    doc = path.read_text()
    if MD_START not in doc or MD_END not in doc:
        raise SystemExit(f"{path}: no {MD_START} ... {MD_END} markers to write the tables between")
    head, rest = doc.split(MD_START, 1)
    _, tail = rest.split(MD_END, 1)
    path.write_text(f"{head}{MD_START}\n```text\n{text}\n```\n{MD_END}{tail}")


def figure(budget: dict[str, Any], path: Path) -> Optional[Path]:
    from hvs_plugins.plotting import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(budget)), figsize=(6.5 * max(1, len(budget)), 4.2), squeeze=False)
    styles = {
        "baseline": ("k", "o"),
        "hvs": ("C3", "s"),
        "min_iou": ("C0", "^"),
        "matched": ("gray", "D"),
        "gen": ("C6", "P"),
        "gen_hvs": ("C8", "X"),
        "hvs_res25": ("C1", "v"),
        "hvs_half": ("C2", "<"),
        "hvs_layer2": ("C4", ">"),
    }
    for ax, (data, arms) in zip(axes[0], budget.items()):
        for arm, cells in arms.items():
            pts = sorted(cells.items(), key=lambda kv: kv[1]["compute"])
            x = [c["compute"] for _, c in pts]
            y = [statistics.mean(c["knn"]) for _, c in pts]
            err = [statistics.stdev(c["knn"]) if len(c["knn"]) > 1 else 0 for _, c in pts]
            col, mk = styles.get(arm, ("C5", "x"))
            ax.errorbar(x, y, err, color=col, marker=mk, capsize=3, ls="-" if len(x) > 1 else "none", label=arm)
            for (e, c), xi, yi in zip(pts, x, y):
                ax.annotate(
                    f"{c['epochs_run'] if arm == 'matched' else e} ep",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=col,
                )
        if "matched" in arms and "baseline" in arms:  # the baseline curve continues to its real matched runs
            curve = sorted((c["compute"], statistics.mean(c["knn"])) for c in baseline_curve(arms).values())
            ax.plot([x for x, _ in curve], [y for _, y in curve], color="gray", ls=":", lw=1, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("compute: epochs of host steps (= epochs x measured compute ratio), log scale")
        ax.set_ylabel("kNN accuracy (mean ± std over seeds)")
        ax.set_title(f"{data}: SimCLR, accuracy vs compute")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(DATA_CELLS), choices=list(DATA_CELLS))
    p.add_argument("--arms", nargs="+", default=list(ARMS) + ["matched"], choices=list(ARMS) + ["matched"])
    p.add_argument("--epochs", type=int, nargs="+", default=EPOCHS)
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS5)
    p.add_argument("--longest", type=int, default=96, help="the longest budget (matched runs, cheap variants)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="the demo's tiny sizes, epochs / 24 (smoke)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--markdown", type=Path, help="also write the tables into this file (between its budget-tables markers)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    budget = Budget(a)
    t0 = time.perf_counter()
    if not a.report_only:
        budget.run()
    result = budget.summary()
    out = Path(a.out)
    ej = out / "effect.json"
    full = json.loads(ej.read_text()) if ej.exists() else {}
    import torch

    full["budget"] = result
    full["budget_meta"] = {
        "torch": torch.__version__,
        "threads": a.threads,
        "longest": a.longest,
        "wall_s_this_call": time.perf_counter() - t0,
    }
    ej.write_text(json.dumps(full, indent=1))
    if result:
        try:
            figure(result, out / "effect_budget.png")
        except ImportError:
            pass
    print(report(result))
    if a.markdown:
        write_markdown(a.markdown, report(result))
    return result


if __name__ == "__main__":
    main()
