"""HVS demo: a lightly method, baseline vs Hard View Selection, side by side, in minutes on CPU.

    python -m hvs_plugins.adapters.lightly.demo            # embedded data, ~4 min on 2 CPU cores
    python -m hvs_plugins.adapters.lightly.demo --data ~/pictures --device cuda --epochs 50

Both runs use the same seed, initial weights, data order and number of steps; the baseline trains
on two random views, HVS on the hardest pair of ``--n-views`` candidates (on CPU the baseline runs
in a second process at the same time: same numbers). The defaults are the cell chosen by the
effect study (``benchmarks/effect.py``, BENCHMARKS.md): SimCLR with lightly's standard
``SimCLRTransform`` on the embedded muted-colour shapes, a cosine schedule down to 35% of the
learning rate, and HVS with static colour during selection (one colour draw shared by the
candidates while scoring; the two selected crops are coloured independently afterwards). Printed:
kNN accuracy of both (and the study's seed spread), the HVS compute ratio, the hardness gap, the
lowest-IoU fraction and the mean IoU of the trained pairs; figures go to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .demo_data import CLASSES, Images, load_folder, make_data, make_shapes  # noqa: F401 (public names)
from .demo_train import (  # noqa: F401 (public names)
    AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METHODS,
    SimSiam,
    embed,
    knn_accuracy,
    small_backbone,
    train,
)

_Images = Images  # the name older benchmark scripts use

# Arguments of a run that takes a few seconds (tests, smoke checks).
TINY_ARGV = [
    "--epochs",
    "1",
    "--n-images",
    "96",
    "--n-test",
    "40",
    "--n-bank",
    "96",
    "--batch-size",
    "32",
    "--image-size",
    "16",
    "--width",
    "8",
]

# The accuracy-vs-compute curves of the study's two settings (benchmarks/effect_budget.py,
# effect.json["budget"][data], its demo_summary), printed next to a run of that setting; the torch
# build is the one constraints.txt pins (numbers differ between builds for the same seed).
STUDY_BUDGETS: dict[str, dict[str, Any]] = {
    "muted": {
        "seeds": [0, 1, 2],
        "baseline": {"24": "88.7% ± 4.6%", "48": "97.3% ± 0.5%", "96": "99.0% ± 0.5%"},
        "hvs": {"24": "92.2% ± 3.4%", "48": "97.6% ± 0.5%", "96": "99.2% ± 0.2%"},
        "min_iou": {"24": "92.4% ± 3.0%", "48": "97.1% ± 1.2%", "96": "98.9% ± 0.3%"},
        "hvs_compute": {"24": 40.2, "48": 80.4, "96": 160.5},
        "baseline_at_hvs_compute": {"24": "95.1%", "48": "98.5%", "96": "99.3%"},
        "torch": "2.14.1",
    },
    "photos": {
        "seeds": [0, 1, 2],
        "baseline": {"24": "69.6% ± 1.3%", "48": "76.4% ± 5.1%", "96": "83.5% ± 2.7%"},
        "hvs": {"24": "70.3% ± 7.0%", "48": "80.6% ± 5.1%", "96": "84.3% ± 4.6%"},
        "min_iou": {"24": "74.6% ± 4.3%", "48": "71.6% ± 3.3%", "96": "80.2% ± 6.6%"},
        "hvs_compute": {"24": 40.1, "48": 81.8, "96": 161.7},
        "baseline_at_hvs_compute": {"24": "74.7%", "48": "81.9%", "96": "79.5%"},
        "torch": "2.14.1",
    },
}
# the demo flags of each setting (the study's muted cell is the demo's defaults)
STUDY_FLAGS: dict[str, list[str]] = {"muted": [], "photos": ["--data", "photos", "--eager-colour", "--lr-floor", "0"]}


def candidate_figure(run: dict, images: np.ndarray, path: Path, n: int = 6) -> Path:
    """Candidates of ``n`` images as the selection sees them, the pair the trained model selects marked."""
    from PIL import Image

    from hvs_plugins.plotting import plot_candidates

    transform, criterion, model = run["transform"], run["criterion"], run["model"]
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        items = [transform(Image.fromarray(a)) for a in images[:n]]
    views = [torch.stack([it[0][v] for it in items]) for v in range(transform.n_views)]
    boxes = torch.stack([it[-1] for it in items])
    target = getattr(model, "forward_momentum", None)
    criterion.select(views, model, target, boxes=boxes)
    chosen = criterion.last_selection.chosen.cpu()
    x = torch.stack(views, 1) * IMAGENET_STD.unsqueeze(1) + IMAGENET_MEAN.unsqueeze(1)  # [M, N, 3, H, W]
    return plot_candidates(x.clamp(0, 1), chosen, path, title="HVS: candidate views, selected (hardest) pair in red")


def generated_figure(run: dict, images: np.ndarray, path: Path, n: int = 6) -> Path:
    """Views of ``n`` images before and after the run's trained hard-view generator (its budget at the
    end of the run), like the paper's Fig. 2 for HVS."""
    from PIL import Image

    from hvs_plugins.generator_plot import plot_generated_views

    transform, gen = run["transform"], run["generator"]
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        items = [transform(Image.fromarray(a)) for a in images[:n]]
    x = torch.stack([it[0][0] for it in items])  # the first candidate of each image (normalised)
    if x.dim() != 4 or x.shape[1] != 3:  # deferred colour: uncoloured crops; show the raw images
        x = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in images[:n]])
        x = (x - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    with torch.no_grad():
        g = gen.generate(x)
    un = lambda t: (t * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1)  # noqa: E731
    return plot_generated_views(un(x), un(g), path, title=f"learned hard views (eps {gen.eps:.3f}): input, generated, delta")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvs-demo",
        description="Hard View Selection demo: a lightly method, baseline vs HVS, same seed and budget.",
    )
    p.add_argument(
        "--data",
        default="shapes-muted",
        help="'shapes' / 'shapes-muted' (embedded; muted: gray levels with a faint tint), 'photos' "
        "(patches of scikit-image's sample photos) or a folder of "
        "images (one subfolder per class for kNN, or flat)",
    )
    p.add_argument("--method", default="simclr", choices=METHODS)
    p.add_argument(
        "--aug",
        default="standard",
        choices=list(AUGMENTATIONS),
        help="augmentation around the method's lightly default transform (blur off below 32 px)",
    )
    p.add_argument(
        "--static-colour",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="HVS scores the candidates with one shared colour draw per image and trains on "
        "independently coloured views (paper Fig. 4 right); --no-static-colour: plain HVS",
    )
    p.add_argument(
        "--static-flip",
        action="store_true",
        help="with --static-colour: the flips are shared during selection too (candidates differ by their crop only)",
    )
    p.add_argument(
        "--eager-colour",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with --static-colour: colour all N training crops in the loader rather than the two "
        "chosen ones after the selection (same distribution, other draws, slower; the study's first grid)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=24)
    p.add_argument("--n-views", type=int, default=4, help="HVS candidates per image (the paper: 4)")
    p.add_argument("--n-images", type=int, default=1280, help="training images")
    p.add_argument("--n-test", type=int, default=4000, help="test images of the embedded sets (kNN)")
    p.add_argument(
        "--n-bank", type=int, default=4000, help="kNN memory of the embedded sets: the training images and more of the same kind"
    )
    p.add_argument("--width", type=int, default=16, help="backbone width (features = 8 x width)")
    p.add_argument("--lr", type=float, default=0.5, help="learning rate per 256 samples")
    p.add_argument(
        "--lr-floor", type=float, default=0.35, help="cosine schedule from the learning rate down to this fraction of it (0: to zero)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--generator",
        default="none",
        choices=["none", "light", "full"],
        help="train on views of a learned hard-view generator (after the selection with HVS): "
        "'light' (width 16) or 'full' (Viewmaker size); eps 0.02 -> 0.06 over the run",
    )
    p.add_argument(
        "--select-by",
        default="loss",
        choices=["loss", "min_iou"],
        help="'loss': HVS; 'min_iou': the zero-cost geometric control (the least-overlapping crops, no forward)",
    )
    p.add_argument(
        "--score-layer", default=None, help="HVS scores on the activations after this module of the model (approximate; e.g. backbone.5)"
    )
    p.add_argument("--resolution-scale", type=float, default=1.0, help="HVS scores on copies downscaled by this factor")
    p.add_argument("--hvs-start-epoch", type=int, default=0, help="HVS from this epoch on (random pairs before)")
    p.add_argument("--hvs-probability", type=float, default=1.0, help="HVS on this fraction of steps (random pairs on the others)")
    p.add_argument("--eval-every", type=int, default=4, help="kNN accuracy every k epochs (and after the last)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (numbers depend on the count; 0: the effect study's)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (numbers are reproducible for a given count; 1 = the effect study's; 0: torch's choice)",
    )
    p.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: the baseline trains in a second process while HVS trains (same numbers; 2 cores)",
    )
    p.add_argument("--out", default="hvs_out", help="folder for the figures")
    p.add_argument("--tiny", action="store_true", help="a run of a few seconds (smoke test)")
    return p


def load_data(args: argparse.Namespace) -> tuple[dict, str]:
    """``({"train", "y_train", "test", "y_test"}, description)`` for ``args.data``."""
    if args.data in ("shapes", "shapes-muted", "photos"):
        data = make_data(args.data, args.n_images, args.n_test, args.image_size, args.n_bank)
        what = {
            "shapes": "embedded shapes",
            "shapes-muted": "embedded shapes (muted colours)",
            "photos": "patches of 10 scikit-image photos",
        }[args.data]
        return data, (
            f"{what} (10 classes, {len(data['train'])} train / {len(data['test'])} test, "
            f"kNN memory {len(data['bank'])}, {args.image_size}px)"
        )
    images, labels, names = load_folder(args.data, args.image_size, args.n_images)
    if labels is None:
        return {
            "train": images,
            "y_train": None,
            "test": None,
            "y_test": None,
        }, f"{args.data} ({len(images)} images, no labels: kNN skipped)"
    cut = max(1, int(0.8 * len(images)))
    return (
        {"train": images[:cut], "y_train": labels[:cut], "test": images[cut:], "y_test": labels[cut:]},
        f"{args.data} ({len(images)} images, {len(names)} classes)",
    )


def check_args(args: argparse.Namespace) -> None:
    if args.n_views < 2:
        raise SystemExit("--n-views must be >= 2 (the paper uses 4)")
    if args.static_colour and args.method == "byol":
        raise SystemExit("--static-colour needs one view pipeline (SimSiam, SimCLR); BYOL's two differ: add --no-static-colour")
    if args.static_flip and not args.static_colour:
        raise SystemExit("--static-flip is a variant of --static-colour: drop --no-static-colour")
    if not 0 < args.resolution_scale <= 1:
        raise SystemExit(f"--resolution-scale must be in (0, 1], got {args.resolution_scale}")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    import sys

    argv = list(argv) if argv is not None else sys.argv[1:]
    args = build_parser().parse_args(argv)
    if args.tiny:  # tiny sizes, then the user's own flags on top
        args = build_parser().parse_args(TINY_ARGV + argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    check_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, source = load_data(args)
    if len(data["train"]) < args.batch_size:
        raise SystemExit(f"{len(data['train'])} training images < --batch-size {args.batch_size}")

    mix = (
        ""
        if args.hvs_probability >= 1 and not args.hvs_start_epoch
        else (f" (HVS on {args.hvs_probability:.0%} of steps from epoch {args.hvs_start_epoch}, random pairs otherwise)")
    )
    variant = (
        ("static colour and flip" if args.static_flip else "static colour") + " during selection" if args.static_colour else "plain"
    ) + (f", selection at {args.resolution_scale:.0%} resolution" if args.resolution_scale != 1 else "")
    print(
        f"HVS demo: {args.method} ({args.aug} augmentation) on {source}, {args.epochs} epochs, batch "
        f"{args.batch_size}, N={args.n_views}, HVS {variant}{mix}, device {device}"
    )
    if args.parallel and device.type == "cpu":  # baseline on a second core, HVS here: same numbers, half the wall
        import concurrent.futures as cf
        import multiprocessing as mp

        print("baseline runs in a second process (--no-parallel: one after the other)")
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            future = pool.submit(_baseline_summary, args, data)
            hvs = train(args, data, hvs=True, device=device, desc=f"HVS N={args.n_views}")
            base = future.result()
    else:
        base = train(args, data, hvs=False, device=device, desc="baseline")
        hvs = train(args, data, hvs=True, device=device, desc=f"HVS N={args.n_views}")

    n_pairs = len(hvs["criterion"].pairs)
    result: dict[str, Any] = {
        "baseline_step_time": base["step_time"],
        "hvs_step_time": hvs["step_time"] + hvs["selection_time"],
        "step_time_ratio": hvs["compute_ratio"],
        "wall_ratio": hvs["wall"] / base["wall"],
        "hardness_gap": hvs["hardness_gap"],
        "lowest_iou_fraction": hvs["lowest_iou_fraction"],
        "random_lowest_iou_fraction": 1.0 / n_pairs,
        "mean_selected_iou": hvs["mean_selected_iou"],
        "mean_random_iou": hvs["mean_random_iou"],
        "history_baseline": base["history"],
        "history_hvs": hvs["history"],
    }
    if data["y_test"] is not None:
        tr, te = data["train"], data["test"]
        bank, y_bank = (data["bank"], data["y_bank"]) if data.get("bank") is not None else (tr, data["y_train"])
        result["knn_raw_pixels"] = knn_accuracy(
            bank.reshape(len(bank), -1).astype(np.float32), y_bank, te.reshape(len(te), -1).astype(np.float32), data["y_test"]
        )
        result["knn_baseline"], result["knn_hvs"] = base["knn"], hvs["knn"]
    from hvs_plugins.plotting import plot_iou_histograms, plot_training_curves

    shown = data["test"] if data["test"] is not None and len(data["test"]) >= 6 else data["train"]
    figs = [
        candidate_figure(hvs, shown, out / "hvs_candidates.png"),
        plot_iou_histograms(
            {"HVS selected pair": hvs["selected_iou"], "random pair": hvs["random_iou"]},
            out / "hvs_iou_histogram.png",
            title="IoU of training pairs: HVS selected vs random",
        ),
        plot_training_curves(
            {"baseline": [base["history"]], "HVS": [hvs["history"]]},
            out / "hvs_training.png",
            random_fraction=1.0 / n_pairs,
            title=f"{args.method}, seed {args.seed}",
        ),
    ]
    if hvs.get("generator") is not None:
        figs.append(generated_figure(hvs, shown, out / "hvs_generated.png"))
    result["figures"] = [str(f) for f in figs]
    _print(args, result, base, hvs, n_pairs, data)
    return result


def _baseline_summary(args: argparse.Namespace, data: dict) -> dict[str, Any]:
    """The baseline run in a worker process: what ``main`` reads of it (no model)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run = train(args, data, hvs=False, device=torch.device("cpu"), progress=False)
    return {k: run[k] for k in ("history", "knn", "final_loss", "step_time", "wall")}


def _print(args: argparse.Namespace, result: dict, base: dict, hvs: dict, n_pairs: int, data: dict) -> None:
    print()
    arm = "HVS" if getattr(args, "select_by", "loss") == "loss" else "min-IoU"  # the geometric control
    print(f"{'':28s}{'baseline':>12s}{arm:>12s}")
    if "knn_baseline" in result:
        print(
            f"{'kNN accuracy (k=20)':28s}{result['knn_baseline']:12.1%}{result['knn_hvs']:12.1%}"
            f"   (raw pixels: {result['knn_raw_pixels']:.1%}, chance 1/{len(set(data['y_test'].tolist()))})"
        )
    print(f"{'final train loss':28s}{base['final_loss']:12.3f}{hvs['final_loss']:12.3f}")
    print(
        f"{'median step time':28s}{base['step_time'] * 1e3:10.1f}ms{result['hvs_step_time'] * 1e3:10.1f}ms"
        f"   HVS step-time ratio x{result['step_time_ratio']:.2f} (selection + step, one process; "
        f"wall-clock incl. data x{result['wall_ratio']:.2f})"
    )
    print(f"hardness gap (selected - mean pair loss): {result['hardness_gap']:.4f}")
    if hvs.get("generator") is not None:  # both runs train on generated views; its cost is not in the ratio above
        st = hvs["generator"].stats()
        print(
            f"learned hard views: '{args.generator}' generator in both runs (after the selection in HVS's), eps now "
            f"{st.eps:.3f}, mean |delta| {st.delta:.3f}; its cost per step is measured by benchmarks/generator_cost.py"
        )
    print(
        f"lowest-IoU fraction: {result['lowest_iou_fraction']:.1%} of samples trained on their lowest-IoU pair "
        f"(random pair: 1/{n_pairs} = {result['random_lowest_iou_fraction']:.1%}; paper: >40%)"
    )
    print(f"mean IoU of training pairs: HVS {result['mean_selected_iou']:.3f} vs random {result['mean_random_iou']:.3f}")
    setting = study_setting(args)
    study = STUDY_BUDGETS.get(setting or "")
    if study and "knn_baseline" in result:
        eps = " / ".join(study["baseline"])
        print(
            f"effect study, this setting ({setting}; benchmarks/effect_budget.py, seeds {study['seeds']}, torch {study['torch']}): "
            f"kNN at {eps} epochs: baseline {' / '.join(study['baseline'].values())}; "
            f"HVS {' / '.join(study['hvs'].values())}; min-IoU control {' / '.join(study['min_iou'].values())}"
        )
        at = study["baseline_at_hvs_compute"]
        if at:
            print(
                "  the baseline given HVS's compute (its curve, through real runs at the longest): "
                + "; ".join(f"{e} HVS epochs = {study['hvs_compute'][e]} host-step epochs -> {v}" for e, v in at.items())
            )
    print(f"figures: {'  '.join(result['figures'])}")


def study_setting(args: argparse.Namespace) -> Optional[str]:
    """The effect study's setting that ``args`` runs (``"muted"``: the defaults; ``"photos"``), apart
    from the epochs (the curves span several budgets), seed, threads, device and output; None if none."""
    parser = build_parser()
    skip = {"seed", "threads", "device", "out", "tiny", "parallel", "epochs"}
    for name, flags in STUDY_FLAGS.items():
        ref = parser.parse_args(flags)
        if all(getattr(args, k) == getattr(ref, k) for k in vars(ref) if k not in skip):
            return name
    return None


def _is_default(args: argparse.Namespace) -> bool:
    """Whether ``args`` is the study's default cell (apart from the seed, threads, device, output)."""
    ref = build_parser().parse_args([])
    skip = {"seed", "threads", "device", "out", "tiny", "parallel"}
    return all(getattr(args, k) == getattr(ref, k) for k in vars(ref) if k not in skip)


if __name__ == "__main__":
    main()
