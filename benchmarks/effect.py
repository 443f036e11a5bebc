"""HVS effect on the main job's data: the lightly demo (SimSiam, embedded shapes), baseline vs HVS.

    python benchmarks/effect.py                       # 3 seeds, the demo's default sizes, ~15 min on 1 CPU thread
    python benchmarks/effect.py --seeds 0 --tiny      # seconds

Reuses the demo's data generator, training loop and kNN evaluation (same seed, initial weights, data
order and number of steps for both runs). Reports the lowest-IoU fraction (paper: >40%, random 1/6),
mean IoU of the trained pairs, IoU histograms (selected vs random) and kNN accuracy mean ± std over
the seeds. Writes ``benchmarks/results/effect.json`` and ``benchmarks/results/iou_histogram.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hvs_plugins.adapters.lightly import demo  # noqa: E402


def _mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="the demo's tiny sizes (smoke)")
    p.add_argument("--demo-args", nargs=argparse.REMAINDER, default=[],
                   help="further demo flags, e.g. --epochs 6 --n-images 2560")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    dargv = (demo.TINY_ARGV if a.tiny else []) + list(a.demo_args)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    runs = []
    sel_all, rnd_all = [], []
    for seed in a.seeds:
        args = demo.build_parser().parse_args(dargv + ["--seed", str(seed)])
        n_test = max(10, args.n_images // 4)
        images, labels = demo.make_shapes(args.n_images + n_test, args.image_size, seed=12345)
        tr, te = images[: args.n_images], images[args.n_images:]
        ytr, yte = labels[: args.n_images], labels[args.n_images:]
        dev = torch.device("cpu")
        base = demo.train(args, tr, hvs=False, device=dev, desc=f"baseline seed {seed}")
        hvs = demo.train(args, tr, hvs=True, device=dev, desc=f"HVS seed {seed}")
        rec = {"seed": seed}
        for name, run in (("baseline", base), ("hvs", hvs)):
            bb = run["model"].backbone
            rec[f"knn_{name}"] = demo.knn_accuracy(demo.embed(bb, tr, dev), ytr, demo.embed(bb, te, dev), yte)
            rec[f"final_loss_{name}"] = run["final_loss"]
            rec[f"step_time_{name}"] = run["step_time"]
        rec["lowest_iou_fraction"] = hvs["lowest_iou_fraction"]
        rec["mean_selected_iou"] = float(np.mean(hvs["selected_iou"]))
        rec["mean_random_iou"] = float(np.mean(hvs["random_iou"]))
        rec["hardness_gap"] = hvs["hardness_gap"]
        sel_all += hvs["selected_iou"]
        rnd_all += hvs["random_iou"]
        runs.append(rec)
        print(json.dumps(rec), flush=True)
    n_views = demo.build_parser().parse_args(dargv).n_views
    summary = {
        "demo_args": dargv, "seeds": a.seeds, "threads": a.threads,
        "load_before": load0, "load_after": os.getloadavg(), "wall_s": time.perf_counter() - t0,
        "cpu": platform.processor() or platform.machine(),
        "random_lowest_iou_fraction": 1 / math.comb(n_views, 2),
        "runs": runs,
    }
    for key in ("knn_baseline", "knn_hvs", "lowest_iou_fraction", "mean_selected_iou", "mean_random_iou"):
        m, s = _mean_std([r[key] for r in runs])
        summary[key] = {"mean": m, "std": s}
    # IoU histograms: selected vs random pair, all seeds pooled (densities over 20 bins)
    edges = np.linspace(0, 1, 21)
    summary["iou_histogram"] = {
        "edges": edges.tolist(),
        "selected": np.histogram(sel_all, bins=edges, density=True)[0].round(4).tolist(),
        "random": np.histogram(rnd_all, bins=edges, density=True)[0].round(4).tolist(),
    }
    try:
        from hvs_plugins.plotting import plot_iou_histograms

        fig = plot_iou_histograms({"HVS selected pair": sel_all, "random pair": rnd_all}, out / "iou_histogram.png",
                                  title="IoU of training pairs (demo, all seeds)")
        summary["figure"] = str(fig.relative_to(ROOT)) if fig.is_relative_to(ROOT) else str(fig)
    except ImportError:
        pass
    (out / "effect.json").write_text(json.dumps(summary, indent=1))
    kb, kh = summary["knn_baseline"], summary["knn_hvs"]
    lo = summary["lowest_iou_fraction"]
    print(f"kNN accuracy over seeds {a.seeds}: baseline {kb['mean']:.1%} ± {kb['std']:.1%}, HVS {kh['mean']:.1%} ± {kh['std']:.1%}")
    print(f"lowest-IoU fraction: {lo['mean']:.1%} ± {lo['std']:.1%} (random 1/{math.comb(n_views, 2)} = "
          f"{summary['random_lowest_iou_fraction']:.1%}; paper >40%) -> {'PASS' if lo['mean'] > 0.40 else 'MISS'} (>40%)")
    print(f"mean IoU of trained pairs: HVS {summary['mean_selected_iou']['mean']:.3f} vs random {summary['mean_random_iou']['mean']:.3f}")
    print(f"wall {summary['wall_s']:.0f}s, load {load0} -> {summary['load_after']}")
    return summary


if __name__ == "__main__":
    main()
