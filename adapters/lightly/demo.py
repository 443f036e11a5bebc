"""HVS demo: SimSiam with lightly, baseline vs Hard View Selection, side by side, in minutes on CPU.

    python -m hvs_plugins.adapters.lightly.demo            # embedded data, ~3 min on 2 CPU cores
    python -m hvs_plugins.adapters.lightly.demo --data ~/pictures --device cuda --epochs 50

The embedded data set is generated deterministically (no download): 10 classes of shapes and
textures, 24 px, with random colour, position, scale, gradient background, clutter and noise
(raw-pixel kNN is far below what colour- and position-invariant features reach). Both runs use
the same seed, initial weights, data order and number of steps; the baseline trains on two random
views, HVS on the hardest pair of ``--n-views`` candidates. Printed: kNN accuracy of both, the HVS
step-time ratio, the hardness gap and the lowest-IoU fraction; figures go to ``--out``.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

# Arguments of a run that takes a few seconds (tests, smoke checks).
TINY_ARGV = ["--epochs", "1", "--n-images", "96", "--batch-size", "32", "--image-size", "16", "--width", "8"]

CLASSES = ["disc", "square", "triangle", "cross", "ring", "h-stripes", "v-stripes", "checker", "diagonal", "dots"]


# ----------------------------------------------------------------------------- embedded data
def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _shape_mask(cls: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Mask [s, s] (float 0..1) of one object of class ``cls`` drawn at a random place and scale."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    r = rng.uniform(0.30, 0.46) * s
    cy, cx = rng.uniform(r * 0.85, s - r * 0.85, size=2)
    dy, dx = yy - cy, xx - cx
    inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    period = rng.uniform(5.0, 7.0) * s / 32  # coarse enough to survive crops and resizing
    ph = rng.uniform(0, period)  # random phase of the textures
    if cls == 0:
        m = dy ** 2 + dx ** 2 <= r ** 2
    elif cls == 1:
        m = inside
    elif cls == 2:
        m = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    elif cls == 3:
        w = r * 0.3
        m = inside & ((np.abs(dy) <= w) | (np.abs(dx) <= w))
    elif cls == 4:
        d = np.sqrt(dy ** 2 + dx ** 2)
        m = (d <= r) & (d >= r * 0.55)
    elif cls == 5:
        m = inside & (((yy + ph) % period) < period / 2)
    elif cls == 6:
        m = inside & (((xx + ph) % period) < period / 2)
    elif cls == 7:
        m = inside & ((np.floor((yy + ph) / period) + np.floor((xx + ph) / period)) % 2 == 0)
    elif cls == 8:
        m = inside & (np.abs(dy - dx) <= r * 0.3)
    else:
        m = inside & (((yy + ph) % period) < period / 2) & (((xx + ph) % period) < period / 2)
    return m.astype(np.float32)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``[n, size, size, 3]`` uint8 and labels ``[n]`` (balanced 10 classes).

    The class is the object's shape or texture; everything else is nuisance: random foreground
    colour (only its luminance differs from the background's, so the shape survives grayscale),
    position and scale, a two-colour gradient background in a random direction, small clutter
    rectangles and pixel noise. Raw pixels are dominated by the colours (kNN far below a feature
    that is invariant to colour and position)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i, cls in enumerate(labels):
        b1, b2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5), 0, 1)[..., None]
        img = b1 * (1 - t) + b2 * t
        for _ in range(rng.integers(1, 4)):  # clutter
            y0, x0 = rng.integers(0, size, 2)
            h, w = rng.integers(1, max(2, size // 6), 2)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, 3)
        bg_lum = _luminance(img.reshape(-1, 3).mean(0))
        for _ in range(20):  # a foreground colour with some luminance contrast
            fg = rng.uniform(0, 1, 3)
            if abs(_luminance(fg) - bg_lum) > 0.3:
                break
        m = _shape_mask(int(cls), size, rng)[..., None]
        img = img * (1 - m) + fg * m
        img = img + rng.normal(0, 0.05, img.shape)
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels


def load_folder(path: str, size: int, limit: Optional[int]) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """Images of a folder (ImageFolder-like: one subfolder per class, or flat), resized to
    ``size`` (center crop). Labels are None for a flat folder."""
    from PIL import Image

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--data {path}: not a folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    if subdirs:
        for c, d in enumerate(subdirs):
            files += [(f, c) for f in sorted(d.rglob("*")) if f.suffix.lower() in exts]
    files += [(f, -1) for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() in exts]
    if not files:
        raise SystemExit(f"--data {path}: no images found ({', '.join(sorted(exts))})")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(files))
    if limit:
        order = order[:limit]
    images = []
    for j in order:
        im = Image.open(files[j][0]).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
        images.append(np.asarray(im, dtype=np.uint8))
    labels = np.array([files[j][1] for j in order])
    names = [d.name for d in subdirs]
    if (labels < 0).any() or len(set(labels.tolist())) < 2:
        return np.stack(images), None, names
    return np.stack(images), labels, names


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Any) -> None:
        from PIL import Image

        self.pil = [Image.fromarray(a) for a in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.pil[i]), i


# ----------------------------------------------------------------------------- model
def small_backbone(width: int = 32) -> nn.Module:
    """A small ConvNet (4 conv-BN-ReLU blocks, global pooling): ``8·width`` features."""
    w = width
    layers: list[nn.Module] = []
    chans = [3, w, 2 * w, 4 * w, 8 * w]
    for i in range(4):
        layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """lightly's SimSiam example model (forward returns ``(z, p)``), on a small backbone."""

    def __init__(self, width: int = 32) -> None:
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__()
        self.backbone = small_backbone(width)
        dim = 8 * width
        self.projection_head = SimSiamProjectionHead(dim, dim, 2 * dim)
        self.prediction_head = SimSiamPredictionHead(2 * dim, dim // 2, 2 * dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x).flatten(start_dim=1)
        z = self.projection_head(f)
        p = self.prediction_head(z)
        return z.detach(), p


# ----------------------------------------------------------------------------- evaluation
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _as_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@torch.no_grad()
def embed(backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    was = backbone.training
    backbone.eval()
    out = [backbone(_as_input(images[i:i + batch]).to(device)).flatten(1).cpu() for i in range(0, len(images), batch)]
    backbone.train(was)
    return torch.cat(out).numpy()


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine", weights="distance")
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


# ----------------------------------------------------------------------------- training
def train(
    args: argparse.Namespace,
    images: np.ndarray,
    hvs: bool,
    device: torch.device,
    desc: str,
) -> dict[str, Any]:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.transforms import SimSiamTransform
    from tqdm import tqdm

    from hvs_plugins import pair_ious

    from .loss import HVSLoss
    from .transforms import CandidateViews

    torch.manual_seed(args.seed)
    model = SimSiam(args.width).to(device)
    n_views = args.n_views if hvs else 2
    transform = CandidateViews(
        SimSiamTransform(
            input_size=args.image_size, gaussian_blur=0.0, min_scale=args.min_scale,
            # strong colour augmentation: otherwise the colour of an image is the easiest
            # augmentation-invariant feature to learn (and useless for the classes)
            cj_hue=0.5, cj_sat=0.8, random_gray_scale=0.5,
        ), n_views=n_views, return_boxes=True
    )
    loader = torch.utils.data.DataLoader(
        _Images(images, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, generator=torch.Generator().manual_seed(args.seed),
    )
    criterion = HVSLoss(
        NegativeCosineSimilarity(), n_views=n_views, seed=args.seed, enabled=hvs,
        start_epoch=args.hvs_start_epoch, probability=args.hvs_probability,
    )
    steps = args.epochs * len(loader)
    lr = args.lr * args.batch_size / 256
    pred = list(model.prediction_head.parameters())
    rest = [q for n, q in model.named_parameters() if not n.startswith("prediction_head.")]
    # SimSiam recipe: cosine schedule for encoder + projector, fixed learning rate for the predictor.
    optimizer = torch.optim.SGD([{"params": rest}, {"params": pred}], lr=lr, momentum=0.9, weight_decay=5e-4)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, lambda s: 1.0])
    step_times, wall0 = [], time.perf_counter()
    sel_iou, rnd_iou, lowest, gaps, losses = [], [], [], [], []
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, leave=True)
    for epoch in range(args.epochs):
        for (views, boxes), _ in loader:
            t0 = time.perf_counter()
            before = criterion.last_selection
            x0, x1 = criterion.select(views, model, boxes=boxes, epoch=epoch)  # baseline: enabled=False → views 0, 1
            x0, x1 = x0.to(device), x1.to(device)
            z0, p0 = model(x0)
            z1, p1 = model(x1)
            loss = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            if hvs and criterion.last_selection is not before:  # a step with selection (not a random-pair step)
                st = criterion.last_stats
                gaps.append(st.hardness_gap)
                if st.lowest_iou_fraction is not None:
                    lowest.append(st.lowest_iou_fraction)
                ious = pair_ious(boxes, criterion.pairs)  # [P, M]
                sel_iou += ious.gather(0, criterion.last_selection.index.cpu().unsqueeze(0)).squeeze(0).tolist()
                rnd_iou += ious[0].tolist()  # pair (0, 1) of i.i.d. candidates: a random pair
            else:
                rnd_iou += pair_ious(boxes, torch.tensor([[0, 1]]))[0].tolist()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
    bar.close()
    return {
        "model": model, "criterion": criterion, "transform": transform, "steps": steps,
        "step_time": statistics.median(step_times), "wall": time.perf_counter() - wall0,
        "final_loss": statistics.mean(losses[-max(1, len(losses) // 10):]),
        "selected_iou": sel_iou, "random_iou": rnd_iou,
        "lowest_iou_fraction": statistics.mean(lowest) if lowest else float("nan"),
        "hardness_gap": statistics.mean(gaps) if gaps else float("nan"),
    }


def candidate_figure(run: dict, images: np.ndarray, path: Path, device: torch.device, n: int = 6) -> Path:
    """Candidates of ``n`` images with the pair the trained HVS model selects marked."""
    from hvs_plugins.plotting import plot_candidates

    transform, criterion, model = run["transform"], run["criterion"], run["model"]
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(1234)
        from PIL import Image

        items = [transform(Image.fromarray(a)) for a in images[:n]]
    views = [torch.stack([it[0][v] for it in items]) for v in range(transform.n_views)]
    boxes = torch.stack([it[1] for it in items])
    criterion.select(views, model, boxes=boxes)
    chosen = criterion.last_selection.chosen.cpu()
    x = torch.stack(views, 1) * IMAGENET_STD.unsqueeze(1) + IMAGENET_MEAN.unsqueeze(1)  # [M, N, 3, H, W]
    return plot_candidates(x.clamp(0, 1), chosen, path, title="HVS: candidate views, selected (hardest) pair in red")


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvs-demo",
        description="Hard View Selection demo: SimSiam (lightly) baseline vs HVS, same seed and budget.",
    )
    p.add_argument("--data", default=None, help="folder of images (one subfolder per class for kNN, or flat); default: embedded shapes")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=24)
    p.add_argument("--n-views", type=int, default=4, help="HVS candidates per image (the paper: 4)")
    p.add_argument("--n-images", type=int, default=1280, help="training images (the embedded set adds 1/4 as many test images)")
    p.add_argument("--width", type=int, default=16, help="backbone width (features = 8 x width)")
    p.add_argument("--lr", type=float, default=0.5, help="learning rate per 256 samples")
    p.add_argument("--min-scale", type=float, default=0.3, help="RandomResizedCrop min scale of SimSiamTransform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hvs-start-epoch", type=int, default=0, help="HVS from this epoch on (random pairs before)")
    p.add_argument("--hvs-probability", type=float, default=1.0, help="HVS on this fraction of steps (random pairs on the others)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="hvs_out", help="folder for the figures")
    p.add_argument("--tiny", action="store_true", help="a run of a few seconds (smoke test)")
    return p


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
    if args.n_views < 2:
        raise SystemExit("--n-views must be >= 2 (the paper uses 4)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.data:
        all_images, all_labels, names = load_folder(args.data, args.image_size, args.n_images)
        if all_labels is not None:
            cut = max(1, int(0.8 * len(all_images)))
            train_images, test_images = all_images[:cut], all_images[cut:]
            train_y, test_y = all_labels[:cut], all_labels[cut:]
        else:
            train_images, test_images, train_y, test_y = all_images, None, None, None
        source = f"{args.data} ({len(all_images)} images" + (f", {len(names)} classes)" if all_labels is not None else ", no labels: kNN skipped)")
    else:
        n_test = max(10, args.n_images // 4)
        all_images, all_labels = make_shapes(args.n_images + n_test, args.image_size, seed=12345)
        train_images, test_images = all_images[: args.n_images], all_images[args.n_images:]
        train_y, test_y = all_labels[: args.n_images], all_labels[args.n_images:]
        source = f"embedded shapes (10 classes, {args.n_images} train / {n_test} test, {args.image_size}px)"
    if len(train_images) < args.batch_size:
        raise SystemExit(f"{len(train_images)} training images < --batch-size {args.batch_size}")

    mix = "" if args.hvs_probability >= 1 and not args.hvs_start_epoch else (
        f" (HVS on {args.hvs_probability:.0%} of steps from epoch {args.hvs_start_epoch}, random pairs otherwise)")
    print(f"HVS demo: SimSiam on {source}, {args.epochs} epochs, batch {args.batch_size}, N={args.n_views}{mix}, device {device}")
    base = train(args, train_images, hvs=False, device=device, desc="baseline")
    hvs = train(args, train_images, hvs=True, device=device, desc=f"HVS N={args.n_views}")

    result: dict[str, Any] = {
        "baseline_step_time": base["step_time"], "hvs_step_time": hvs["step_time"],
        "step_time_ratio": hvs["step_time"] / base["step_time"], "wall_ratio": hvs["wall"] / base["wall"],
        "hardness_gap": hvs["hardness_gap"], "lowest_iou_fraction": hvs["lowest_iou_fraction"],
        "random_lowest_iou_fraction": 1.0 / math.comb(args.n_views, 2),
        "mean_selected_iou": float(np.mean(hvs["selected_iou"])), "mean_random_iou": float(np.mean(hvs["random_iou"])),
    }
    if test_images is not None and len(test_images):
        result["knn_raw_pixels"] = knn_accuracy(
            train_images.reshape(len(train_images), -1).astype(np.float32), train_y,
            test_images.reshape(len(test_images), -1).astype(np.float32), test_y,
        )
        for name, run in (("baseline", base), ("hvs", hvs)):
            result[f"knn_{name}"] = knn_accuracy(
                embed(run["model"].backbone, train_images, device), train_y,
                embed(run["model"].backbone, test_images, device), test_y,
            )
    fig1 = candidate_figure(hvs, test_images if test_images is not None and len(test_images) >= 6 else train_images, out / "hvs_candidates.png", device)
    from hvs_plugins.plotting import plot_iou_histograms

    fig2 = plot_iou_histograms(
        {"HVS selected pair": hvs["selected_iou"], "random pair": hvs["random_iou"]}, out / "hvs_iou_histogram.png",
        title="IoU of training pairs: HVS selected vs random",
    )
    result["figures"] = [str(fig1), str(fig2)]

    print()
    print(f"{'':28s}{'baseline':>12s}{'HVS':>12s}")
    if "knn_baseline" in result:
        print(f"{'kNN accuracy (k=20)':28s}{result['knn_baseline']:12.1%}{result['knn_hvs']:12.1%}"
              f"   (raw pixels: {result['knn_raw_pixels']:.1%}, chance 1/{len(set(test_y.tolist()))})")
    print(f"{'final train loss':28s}{base['final_loss']:12.3f}{hvs['final_loss']:12.3f}")
    print(f"{'median step time':28s}{base['step_time'] * 1e3:10.1f}ms{hvs['step_time'] * 1e3:10.1f}ms"
          f"   HVS step-time ratio x{result['step_time_ratio']:.2f} (wall-clock incl. data x{result['wall_ratio']:.2f})")
    print(f"hardness gap (selected - mean pair loss): {result['hardness_gap']:.4f}")
    print(f"lowest-IoU fraction: {result['lowest_iou_fraction']:.1%} of samples trained on their lowest-IoU pair "
          f"(random pair: 1/{math.comb(args.n_views, 2)} = {result['random_lowest_iou_fraction']:.1%}; paper: >40%)")
    print(f"mean IoU of training pairs: HVS {result['mean_selected_iou']:.3f} vs random {result['mean_random_iou']:.3f}")
    print(f"figures: {fig1}  {fig2}")
    return result


if __name__ == "__main__":
    main()
