"""HVS effect study: baseline vs HVS vs compute-matched baseline over a grid of settings, 3 seeds each.

    python benchmarks/effect.py --procs 2                 # the whole grid, ~1.5 h on 2 cores (resumes)
    python benchmarks/effect.py --cells base simclr       # some cells
    python benchmarks/effect.py --tiny --seeds 0 --cells base --out /tmp/e   # seconds (smoke)

Every run is the demo's training loop (``hvs_plugins.adapters.lightly.demo_train.train``) with the
demo's flags; a cell changes one factor around the base cell (SimCLR, lightly's standard
``SimCLRTransform``, 24 epochs, patches of real photos, HVS with static colour during selection). Per
cell and seed: the baseline (two random views), HVS, and a compute-matched baseline that trains
``round(epochs × r)`` epochs, r = the cell's measured HVS compute ratio (selection + host step vs
host step, timed step by step inside the HVS runs; median over seeds). Runs are cached in
``<out>/effect_runs/`` (one JSON per run: delete one to re-run it), so an interrupted study resumes.
Writes ``<out>/effect.json`` (one entry per cell and ``"default"``, the cell chosen by the issue's
bars), ``<out>/effect_grid.png``, ``<out>/effect_training.png``, ``<out>/iou_histogram.png`` and
prints the markdown tables of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the base cell, spelled out (independent of the demo's defaults, which follow the study's choice)
BASE_FLAGS = [
    "--data",
    "photos",
    "--method",
    "simclr",
    "--aug",
    "standard",
    "--static-colour",
    "--eager-colour",
    "--lr-floor",
    "0",
    "--eval-every",
    "4",
    "--workers",
    "0",
]
# the second grid's base: muted shapes, cosine to 35% of the learning rate, training colour drawn
# after the selection (StaticColourViews(deferred=True)) (the demo's defaults)
MUTED = ["--data", "shapes-muted", "--lr-floor", "0.35", "--no-eager-colour", "--workers", "0"]
SIZE_FLAGS = ["--epochs", "24", "--n-images", "1280", "--n-test", "4000", "--n-bank", "4000"]  # not with --tiny
# cell name -> (demo flags on top of the base cell, what changes)
CELLS: dict[str, tuple[list[str], str]] = {
    "base": ([], "SimCLR, standard aug., 24 ep., photos, HVS static colour"),
    "plain": (["--no-static-colour"], "HVS without static colour"),
    "static_flip": (["--static-flip"], "HVS static colour and flip (candidates differ by crop only)"),
    "simsiam": (["--method", "simsiam"], "SimSiam"),
    "shapes": (["--data", "shapes"], "embedded shapes instead of photos"),
    "shapes_muted": (["--data", "shapes-muted"], "embedded shapes, muted colours"),
    "shapes_muted_plain": (["--data", "shapes-muted", "--no-static-colour"], "shapes, muted colours, HVS without static colour"),
    "muted_b32": (["--data", "shapes-muted", "--batch-size", "32"], "shapes, muted colours, batch 32 (2x the steps)"),
    "muted_lr1": (["--data", "shapes-muted", "--lr", "1.0"], "shapes, muted colours, learning rate x2"),
    # pilots (baselines only): 24 epochs with the learning-rate floor; 16 px
    "muted_floor24": (
        ["--data", "shapes-muted", "--lr-floor", "0.35", "--no-eager-colour"],
        "shapes, muted colours, cosine to 35% of the learning rate",
    ),
    "muted16": (["--data", "shapes-muted", "--image-size", "16", "--no-eager-colour"], "shapes, muted colours, 16 px"),
    "muted16_32": (
        ["--data", "shapes-muted", "--image-size", "16", "--epochs", "32", "--no-eager-colour"],
        "shapes, muted colours, 16 px, 32 epochs",
    ),
    "muted20": (
        ["--data", "shapes-muted", "--lr-floor", "0.35", "--no-eager-colour", "--epochs", "20", "--eval-every", "5"],
        "shapes, muted colours, lr floor 35%, 20 epochs",
    ),
    # the second grid, around MUTED
    "muted": (MUTED, "muted shapes, lr floor 35%, colour after selection"),
    "muted_plain": (MUTED + ["--no-static-colour"], "muted base, HVS without static colour"),
    "muted_res50": (MUTED + ["--resolution-scale", "0.5"], "muted base, selection at 50% resolution"),
    "muted_simsiam": (MUTED + ["--method", "simsiam"], "muted base, SimSiam"),
    "muted_4x": (MUTED + ["--epochs", "96", "--eval-every", "12"], "muted base, 4x budget (96 epochs)"),
    "mild": (["--aug", "mild"], "milder colour and crop"),
    "strong": (["--aug", "strong"], "stronger colour and crop"),
    "legacy": (["--aug", "legacy"], "the old demo's colour (hue 0.5, gray 50%)"),
    "res50": (["--resolution-scale", "0.5"], "selection at 50% resolution"),
    "prob50": (["--hvs-probability", "0.5"], "HVS on 50% of the steps"),
    "byol": (["--method", "byol", "--no-static-colour"], "BYOL (asymmetric views: plain HVS)"),
    "4x": (["--epochs", "96", "--eval-every", "8"], "4x budget (96 epochs)"),
    "start12": (["--hvs-start-epoch", "12"], "HVS from epoch 12 of 24"),
}
HVS_ONLY = {
    "select_by",
    "score_layer",
    "static_colour",
    "static_flip",
    "eager_colour",
    "resolution_scale",
    "hvs_probability",
    "hvs_start_epoch",
    "n_views",
}
IGNORED = {"threads", "device", "out", "tiny", "parallel"}
# flags added after runs were cached: at these values they leave the cache keys as they were
LATER_FLAGS = {
    "generator": "none",
    "select_by": "loss",
    "score_layer": None,
    "static_flip": False,
    "eager_colour": True,
    "lr_floor": 0.0,
    "workers": 0,
}
BINS = np.linspace(0, 1, 21)


def _parse(argv: list[str]) -> argparse.Namespace:
    from hvs_plugins.adapters.lightly import demo

    args = demo.build_parser().parse_args(argv)
    if args.tiny:
        args = demo.build_parser().parse_args(demo.TINY_ARGV + argv)
    return args


def _key(args: argparse.Namespace, arm: str, epochs: int) -> str:
    """Cache key of a run: baselines ignore the HVS-only flags, so cells share their baselines."""
    fields = {
        k: v
        for k, v in sorted(vars(args).items())
        if k not in IGNORED
        and not (arm != "hvs" and k in HVS_ONLY)
        and not (k in LATER_FLAGS and v == LATER_FLAGS[k])
        and not (k == "eager_colour" and not args.static_colour)
    }
    fields.update(arm="hvs" if arm == "hvs" else "baseline", epochs=epochs)
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def run_job(argv: list[str], arm: str, epochs: int, threads: int) -> dict[str, Any]:
    """One training run in a worker process: the summary that goes into the cache."""
    import torch

    from hvs_plugins.adapters.lightly import demo

    torch.set_num_threads(threads)
    args = _parse(argv)
    data, _ = demo.load_data(args)
    t0 = time.perf_counter()
    run = demo.train(args, data, hvs=arm == "hvs", device=torch.device("cpu"), epochs=epochs, progress=False)
    return {
        "argv": argv,
        "arm": arm,
        "epochs": epochs,
        "seed": args.seed,
        "threads": threads,
        "knn": run["knn"],
        "history": run["history"],
        "final_loss": run["final_loss"],
        "lowest_iou_fraction": run["lowest_iou_fraction"],
        "hardness_gap": run["hardness_gap"],
        "mean_selected_iou": run["mean_selected_iou"],
        "mean_random_iou": run["mean_random_iou"],
        "hist_selected": np.histogram(run["selected_iou"], BINS)[0].tolist(),
        "hist_random": np.histogram(run["random_iou"], BINS)[0].tolist(),
        "compute_ratio": run["compute_ratio"],
        "step_time": run["step_time"],
        "selection_time": run["selection_time"],
        "wall_s": time.perf_counter() - t0,
    }


def _ms(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


class Study:
    """Schedules the runs of the chosen cells on a process pool; compute-matched baselines start
    once their cell's HVS runs have measured the ratio."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.cache = Path(a.out) / "effect_runs"
        self.cache.mkdir(parents=True, exist_ok=True)

    def argv(self, cell: str, seed: int) -> list[str]:
        return self.base_argv + BASE_FLAGS + CELLS[cell][0] + ["--seed", str(seed)]

    @property
    def base_argv(self) -> list[str]:
        return ["--tiny"] if self.a.tiny else SIZE_FLAGS

    def path(self, cell: str, seed: int, arm: str, epochs: Optional[int] = None) -> Path:
        args = _parse(self.argv(cell, seed))
        return self.cache / f"{_key(args, arm, args.epochs if epochs is None else epochs)}.json"

    def load(self, p: Path) -> Optional[dict]:
        return json.loads(p.read_text()) if p.exists() else None

    def ratio(self, cell: str) -> Optional[float]:
        runs = [self.load(self.path(cell, s, "hvs")) for s in self.a.seeds]
        if any(r is None for r in runs):
            return None
        return statistics.median(r["compute_ratio"] for r in runs)

    def matched_epochs(self, cell: str) -> Optional[int]:
        r = self.ratio(cell)
        return None if r is None else max(1, round(_parse(self.argv(cell, 0)).epochs * r))

    def jobs(self) -> list[tuple]:
        """(cell, seed, arm, epochs or None) in priority order: cells first to last, seeds, arms."""
        out = []
        for cell in self.a.cells:
            for seed in self.a.seeds:
                for arm in self.a.arms:
                    out.append((cell, seed, arm))
        return out

    def run(self) -> None:
        todo = self.jobs()
        running: dict[cf.Future, tuple[Path, str]] = {}
        claimed: set[str] = set()
        with cf.ProcessPoolExecutor(max_workers=self.a.procs) as pool:
            while todo or running:
                for job in list(todo):
                    if len(running) >= self.a.procs:
                        break
                    cell, seed, arm = job
                    epochs = None
                    if arm == "matched":
                        epochs = self.matched_epochs(cell)
                        if epochs is None:
                            if any(j[0] == cell and j[2] == "hvs" for j in todo) or any(f[1] == cell for f in running.values()):
                                continue  # waits for the cell's HVS runs
                            todo.remove(job)
                            continue
                    p = self.path(cell, seed, arm, epochs)
                    todo.remove(job)
                    if p.exists() or str(p) in claimed:
                        continue
                    claimed.add(str(p))
                    e = _parse(self.argv(cell, seed)).epochs if epochs is None else epochs
                    fut = pool.submit(run_job, self.argv(cell, seed), "hvs" if arm == "hvs" else "baseline", e, self.a.threads)
                    running[fut] = (p, cell)
                    print(f"[effect] start {cell} seed {seed} {arm} ({e} epochs)", flush=True)
                if not running:
                    if todo:  # only matched jobs whose HVS runs failed remain
                        todo.clear()
                    continue
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    p, cell = running.pop(fut)
                    res = fut.result()
                    p.write_text(json.dumps(res))
                    knn = f"{res['knn']:.1%}" if res["knn"] is not None else "-"
                    print(
                        f"[effect] done  {cell} seed {res['seed']} {res['arm']} {res['epochs']} ep: kNN {knn}, {res['wall_s']:.0f}s",
                        flush=True,
                    )

    def summary(self, cell: str) -> Optional[dict]:
        seeds = self.a.seeds
        base = [self.load(self.path(cell, s, "baseline")) for s in seeds]
        hvs = [self.load(self.path(cell, s, "hvs")) for s in seeds]
        if any(r is None for r in base + hvs):
            return None
        me = self.matched_epochs(cell)
        matched = [self.load(self.path(cell, s, "matched", me)) for s in seeds]
        out: dict[str, Any] = {
            "flags": CELLS[cell][0],
            "what": CELLS[cell][1],
            "seeds": seeds,
            "epochs": base[0]["epochs"],
            "knn_baseline": [r["knn"] for r in base],
            "knn_hvs": [r["knn"] for r in hvs],
            "knn_baseline_compute_matched": [r["knn"] for r in matched] if all(matched) else None,
            "compute_matched_epochs": me,
            "compute_ratio": self.ratio(cell),
            "compute_ratios": [r["compute_ratio"] for r in hvs],
            "lowest_iou_fraction": [r["lowest_iou_fraction"] for r in hvs],
            "random_lowest_iou_fraction": 1 / _n_pairs(_parse(self.argv(cell, 0))),
            "mean_iou_selected": statistics.mean(r["mean_selected_iou"] for r in hvs),
            "mean_iou_random": statistics.mean(r["mean_random_iou"] for r in hvs),
            "hardness_gap": [r["hardness_gap"] for r in hvs],
            "hist_selected": np.sum([r["hist_selected"] for r in hvs], 0).tolist(),
            "hist_random": np.sum([r["hist_random"] for r in hvs], 0).tolist(),
            "history_baseline": [r["history"] for r in base],
            "history_hvs": [r["history"] for r in hvs],
            "history_compute_matched": [r["history"] for r in matched] if all(matched) else None,
        }
        kb, kh = _ms(out["knn_baseline"]), _ms(out["knn_hvs"])
        out["bars"] = {
            "a_stable_baseline": kb["std"] <= 0.02,
            "b_mechanism": statistics.mean(out["lowest_iou_fraction"]) >= 0.35
            and out["mean_iou_selected"] <= out["mean_iou_random"] - 0.03,
            "c_hvs_ge_baseline": kh["mean"] >= kb["mean"],
        }
        if out["knn_baseline_compute_matched"]:
            out["bars"]["hvs_ge_compute_matched"] = kh["mean"] >= _ms(out["knn_baseline_compute_matched"])["mean"]
        return out


def _n_pairs(args: argparse.Namespace) -> int:
    """Candidate pairs per sample: BYOL's two pipelines pair across (N/2)², the others C(N, 2)."""
    n = args.n_views
    return (n // 2) ** 2 if args.method == "byol" else math.comb(n, 2)


def choose_default(cells: dict[str, dict]) -> Optional[str]:
    """The issue's bars in order: cells meeting (a) stable baseline and (b) visible mechanism;
    among those, cells meeting (c) first, then the largest HVS - baseline difference. If no cell
    meets (a) and (b), the closest one: (a) first, then (b), then the highest lowest-IoU fraction
    (the entry's ``bars`` say what it misses). Only cells the demo can run at its budget (24
    epochs) are eligible."""
    eligible = [c for c, s in cells.items() if s["epochs"] <= 24]
    if not eligible:
        return None
    mean = statistics.mean
    ok = [c for c in eligible if cells[c]["bars"]["a_stable_baseline"] and cells[c]["bars"]["b_mechanism"]]
    if ok:
        gap = lambda c: mean(cells[c]["knn_hvs"]) - mean(cells[c]["knn_baseline"])  # noqa: E731
        return max(ok, key=lambda c: (cells[c]["bars"]["c_hvs_ge_baseline"], gap(c)))
    return max(
        eligible,
        key=lambda c: (cells[c]["bars"]["a_stable_baseline"], cells[c]["bars"]["b_mechanism"], mean(cells[c]["lowest_iou_fraction"])),
    )


def _fmt(xs: Optional[list[float]]) -> str:
    if not xs:
        return "-"
    m = _ms(xs)
    return f"{m['mean']:.1%} ± {m['std']:.1%}"


def tables(cells: dict[str, dict], default: Optional[str]) -> str:
    rows = [
        "| cell | what changes | kNN baseline | kNN HVS | kNN compute-matched (epochs) | ratio | lowest-IoU fraction (random) | mean IoU sel. / random | bars a b c |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, s in cells.items():
        b = s["bars"]
        rows.append(
            f"| {c}{' **(default)**' if c == default else ''} | {s['what']} | {_fmt(s['knn_baseline'])} | {_fmt(s['knn_hvs'])} | "
            f"{_fmt(s['knn_baseline_compute_matched'])} ({s['compute_matched_epochs']}) | x{s['compute_ratio']:.2f} | "
            f"{_fmt(s['lowest_iou_fraction'])} ({s['random_lowest_iou_fraction']:.1%}) | "
            f"{s['mean_iou_selected']:.3f} / {s['mean_iou_random']:.3f} | "
            f"{'✓' if b['a_stable_baseline'] else '✗'} {'✓' if b['b_mechanism'] else '✗'} {'✓' if b['c_hvs_ge_baseline'] else '✗'} |"
        )
    out = "\n".join(rows)
    if default:
        s = cells[default]
        per = [
            "",
            f"Default cell `{default}`, per seed:",
            "",
            "| seed | kNN baseline | kNN HVS | kNN compute-matched | lowest-IoU fraction |",
            "|---|---|---|---|---|",
        ]
        cm = s["knn_baseline_compute_matched"] or [float("nan")] * len(s["seeds"])
        for i, seed in enumerate(s["seeds"]):
            per.append(f"| {seed} | {s['knn_baseline'][i]:.1%} | {s['knn_hvs'][i]:.1%} | {cm[i]:.1%} | {s['lowest_iou_fraction'][i]:.1%} |")
        out += "\n" + "\n".join(per)
    return out


def figures(cells: dict[str, dict], default: Optional[str], out: Path) -> list[str]:
    from hvs_plugins.plotting import _plt, plot_iou_histograms, plot_training_curves

    paths = []
    plt = _plt()
    names = list(cells)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
    x = np.arange(len(names))
    for k, (key, label) in enumerate(
        [("knn_baseline", "baseline"), ("knn_hvs", "HVS"), ("knn_baseline_compute_matched", "compute-matched baseline")]
    ):
        vals = [cells[c][key] or [float("nan")] for c in names]
        ax1.bar(
            x + (k - 1) * 0.27,
            [np.mean(v) for v in vals],
            0.27,
            yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
            label=label,
            capsize=2,
        )
    ax1.set_xticks(x, names, rotation=45, ha="right")
    ax1.set_ylabel("kNN accuracy (mean ± std, 3 seeds)")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    lo = [cells[c]["lowest_iou_fraction"] for c in names]
    ax2.bar(x, [np.mean(v) for v in lo], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in lo], capsize=2, color="C1")
    ax2.scatter(x, [cells[c]["random_lowest_iou_fraction"] for c in names], marker="_", s=300, color="k", label="random pair", zorder=3)
    ax2.axhline(0.35, ls=":", color="gray", label="bar (b): 35%")
    ax2.set_xticks(x, names, rotation=45, ha="right")
    ax2.set_ylabel("lowest-IoU fraction of selected pairs")
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "effect_grid.png", dpi=100)
    plt.close(fig)
    paths.append(out / "effect_grid.png")
    if default:
        s = cells[default]
        # the same setting without static colour, where the grid has it
        plain = next((c for c in cells if sorted(cells[c]["flags"]) == sorted(s["flags"] + ["--no-static-colour"])), None)
        series = {"baseline": s["history_baseline"], "HVS": s["history_hvs"]}
        if plain:
            series["HVS without static colour"] = cells[plain]["history_hvs"]
        paths.append(
            plot_training_curves(
                series,
                out / "effect_training.png",
                s["random_lowest_iou_fraction"],
                title=f"effect study, cell '{default}' (mean ± std over seeds {s['seeds']})",
            )
        )
        centers = (BINS[:-1] + BINS[1:]) / 2
        hists = {"HVS selected pair": np.repeat(centers, s["hist_selected"]), "random pair": np.repeat(centers, s["hist_random"])}
        if plain:
            hists["HVS selected, no static colour"] = np.repeat(centers, cells[plain]["hist_selected"])
        paths.append(plot_iou_histograms(hists, out / "iou_histogram.png", title=f"IoU of training pairs (cell '{default}', all seeds)"))
    return [str(p.relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in paths]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (numbers depend on it)")
    p.add_argument("--procs", type=int, default=1, help="runs in parallel")
    p.add_argument("--tiny", action="store_true", help="the demo's tiny sizes (smoke)")
    p.add_argument("--arms", nargs="+", default=["baseline", "hvs", "matched"], choices=["baseline", "hvs", "matched"])
    p.add_argument("--report-only", action="store_true", help="tables and figures from the cached runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    out = Path(a.out)
    study = Study(a)
    t0 = time.perf_counter()
    if not a.report_only:
        study.run()
    cells = {c: s for c in a.cells if (s := study.summary(c)) is not None}
    default = choose_default(cells)
    # one entry per cell, "default" (the chosen cell's figures) and "_meta"
    result: dict[str, Any] = dict(cells)
    result["_meta"] = {
        "seeds": a.seeds,
        "threads": a.threads,
        "default_cell": default,
        "cells": list(cells),
        "wall_s_this_call": time.perf_counter() - t0,
        "cpu_count": os.cpu_count(),
    }
    if default:
        result["default"] = {"cell": default} | {
            k: cells[default][k]
            for k in (
                "flags",
                "epochs",
                "seeds",
                "knn_baseline",
                "knn_hvs",
                "knn_baseline_compute_matched",
                "compute_matched_epochs",
                "compute_ratio",
                "lowest_iou_fraction",
                "mean_iou_selected",
                "mean_iou_random",
                "bars",
            )
        }
    if cells:
        try:
            result["_meta"]["figures"] = figures(cells, default, out)
        except ImportError:
            pass
    (out / "effect.json").write_text(json.dumps(result, indent=1))
    print(tables(cells, default))
    print(f"default cell: {default}; figures: {result['_meta'].get('figures')}")
    return result


if __name__ == "__main__":
    main()
