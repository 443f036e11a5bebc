"""Training loop of the demo and the effect study: lightly's SimSiam, SimCLR or BYOL on a small
ConvNet, baseline (two random views) or HVS, with per-epoch kNN accuracy and crop-IoU statistics.

One function, :func:`train`, used by ``demo.py`` and ``benchmarks/effect.py`` so that both report
the same numbers for the same arguments. Same seed → same initial weights, data order and
augmentation draws for baseline and HVS (CPU, fixed thread count: bitwise reproducible).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .demo_data import Images

METHODS = ("simsiam", "simclr", "byol")

# Augmentation settings around each method's lightly default (blur off: images are below 32 px).
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "standard": {},  # the lightly transform's own defaults (SimSiamTransform, SimCLRTransform, BYOLTransform)
    "mild": {"cj_strength": 0.5, "random_gray_scale": 0.1, "min_scale": 0.4},
    "strong": {"cj_strength": 1.5, "random_gray_scale": 0.4, "min_scale": 0.08},
    # the demo's setting before the effect study: colour adversarial (hue 0.5, grayscale 50%)
    "legacy": {"cj_hue": 0.5, "cj_sat": 0.8, "random_gray_scale": 0.5, "min_scale": 0.3},
}


# The learned-hard-view generator of the effect study's generator arms, fixed before any seed ran:
# the light variant (width 16, 3x3 convs; benchmarks/generator_cost.py) with Wu et al.'s progressive
# hardness, the budget eps ramped from 0.02 to 0.06 over the run.
GENERATORS: dict[str, dict[str, Any]] = {
    "light": {"width": 16, "stem_kernel": 3, "n_blocks": 3, "eps_start": 0.02, "eps_end": 0.06},
    "full": {"width": 32, "stem_kernel": 9, "n_blocks": 3, "eps_start": 0.02, "eps_end": 0.06},
}


# ----------------------------------------------------------------------------- models
def small_backbone(width: int = 16) -> nn.Module:
    """A small ConvNet (4 conv-BN-ReLU blocks, global pooling): ``8·width`` features."""
    w = width
    layers: list[nn.Module] = []
    chans = [3, w, 2 * w, 4 * w, 8 * w]
    for i in range(4):
        layers += [
            nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """lightly's SimSiam example model: ``forward(x) -> (z.detach(), p)``."""

    def __init__(self, width: int = 16) -> None:
        from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

        super().__init__()
        self.backbone = small_backbone(width)
        dim = 8 * width
        self.projection_head = SimSiamProjectionHead(dim, dim, 2 * dim)
        self.prediction_head = SimSiamPredictionHead(2 * dim, dim // 2, 2 * dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return z.detach(), self.prediction_head(z)


class SimCLR(nn.Module):
    """lightly's SimCLR example model: ``forward(x) -> z``."""

    def __init__(self, width: int = 16) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = small_backbone(width)
        dim = 8 * width
        self.projection_head = SimCLRProjectionHead(dim, dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


class BYOL(nn.Module):
    """lightly's BYOL example model: ``forward(x) -> p``, ``forward_momentum(x) -> z'`` (no grad)."""

    def __init__(self, width: int = 16) -> None:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = small_backbone(width)
        dim = 8 * width
        self.projection_head = BYOLProjectionHead(dim, 2 * dim, dim)
        self.prediction_head = BYOLPredictionHead(dim, 2 * dim, dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def build_model(method: str, width: int) -> nn.Module:
    models = {"simsiam": SimSiam, "simclr": SimCLR, "byol": BYOL}
    if method not in models:
        raise ValueError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
    return models[method](width)


def build_transform(method: str, aug: str, image_size: int) -> Any:
    """The lightly two-view transform of ``method`` with the ``aug`` setting (blur off)."""
    from lightly.transforms import BYOLTransform, SimCLRTransform, SimSiamTransform
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {aug!r}: one of {', '.join(AUGMENTATIONS)}")
    kw = dict(AUGMENTATIONS[aug], input_size=image_size, gaussian_blur=0.0)
    if method == "byol":
        return BYOLTransform(BYOLView1Transform(**kw), BYOLView2Transform(**kw))
    return (SimCLRTransform if method == "simclr" else SimSiamTransform)(**kw)


# ----------------------------------------------------------------------------- evaluation
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def as_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` → normalised float ``[n, 3, H, W]``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@torch.no_grad()
def embed(backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    was = backbone.training
    backbone.eval()
    out = [backbone(as_input(images[i : i + batch]).to(device)).flatten(1).cpu() for i in range(0, len(images), batch)]
    backbone.train(was)
    return torch.cat(out).numpy()


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine", weights="distance")
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def evaluate(backbone: nn.Module, data: dict, device: torch.device) -> float:
    """kNN (k=20, cosine) accuracy of the backbone's features: memory bank (default: the training
    images) → test images."""
    bank, y_bank = (data["bank"], data["y_bank"]) if data.get("bank") is not None else (data["train"], data["y_train"])
    return knn_accuracy(embed(backbone, bank, device), y_bank, embed(backbone, data["test"], device), data["y_test"])


# ----------------------------------------------------------------------------- training
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train(
    args: argparse.Namespace,
    data: Any,
    hvs: bool,
    device: torch.device,
    desc: str = "",
    epochs: Optional[int] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one run; ``data``: ``{"train", "y_train", "test", "y_test"}`` (labels may be None).

    ``args`` fields: method, aug, epochs, batch_size, image_size, n_views, width, lr, lr_floor (optional), seed,
    static_colour, static_flip, eager_colour (optional), generator (optional: 'none', 'light', 'full'),
    select_by (optional: 'loss' or 'min_iou'), resolution_scale, hvs_probability, hvs_start_epoch, workers, eval_every.
    ``epochs`` overrides ``args.epochs`` (compute-matched baselines). Returns the model and, per
    epoch, kNN accuracy (every ``eval_every`` epochs and the last), the lowest-IoU fraction and
    the mean IoU of the trained pairs (HVS: selected; baseline: random), plus median timings of
    the selection and of the host's training step (measured in this process, step by step)."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from hvs_plugins import pair_ious

    from .loss import HVSLoss
    from .static_colour import StaticColourViews
    from .transforms import CandidateViews

    if isinstance(data, np.ndarray):  # images only (no kNN)
        data = {"train": data}
    epochs = args.epochs if epochs is None else epochs
    _seed_everything(args.seed)
    model = build_model(args.method, args.width).to(device)
    base_transform = build_transform(args.method, args.aug, args.image_size)
    n_views = args.n_views if hvs else 2
    static = bool(hvs and args.static_colour)
    if static:
        transform: Any = StaticColourViews(
            base_transform, n_views=n_views, static_flip=args.static_flip, deferred=not getattr(args, "eager_colour", False)
        )
    else:
        transform = CandidateViews(base_transform, n_views=n_views, return_boxes=True)
    groups = "interleaved" if args.method == "byol" else None
    loader = torch.utils.data.DataLoader(
        Images(data["train"], transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=args.workers > 0,
        worker_init_fn=_one_thread if args.workers > 0 else None,
    )
    base_loss = NTXentLoss(temperature=0.5) if args.method == "simclr" else NegativeCosineSimilarity()
    criterion = HVSLoss(
        base_loss,
        n_views=n_views,
        groups=groups,
        seed=args.seed,
        enabled=hvs,
        resolution_scale=args.resolution_scale,
        start_epoch=args.hvs_start_epoch,
        probability=args.hvs_probability,
        select_by=getattr(args, "select_by", "loss"),
        score_layer=getattr(args, "score_layer", None),
    )
    steps = epochs * len(loader)
    lr = args.lr * args.batch_size / 256
    params = [{"params": [q for n, q in model.named_parameters() if not n.startswith("prediction_head.")]}]
    pred = list(model.prediction_head.parameters()) if hasattr(model, "prediction_head") else []
    if pred:
        params.append({"params": pred})
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    floor = getattr(args, "lr_floor", 0.0)
    cosine = lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps)))  # noqa: E731
    # SimSiam recipe: fixed learning rate for the predictor; the others decay it like the rest
    lambdas = [cosine] + ([(lambda s: 1.0) if args.method == "simsiam" else cosine] if pred else [])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    target = model.forward_momentum if args.method == "byol" else None
    gen = None
    if getattr(args, "generator", "none") != "none":  # selection (if HVS) first, then the generator on the pair
        from hvs_plugins import HardViewGenerator

        gen = HardViewGenerator(seed=args.seed, ramp_epochs=epochs, **GENERATORS[args.generator])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, leave=True)
    sel_times, step_times, history, gaps = [], [], [], []
    sel_iou_all, rnd_iou_all = [], []
    n_active = step = 0
    wall0 = time.perf_counter()
    for epoch in range(epochs):
        if gen is not None:
            gen.set_epoch(epoch)
        e_lowest, e_sel, e_rnd, e_loss = [], [], [], []
        for batch, _ in loader:
            if static:
                views, train_views, boxes = batch
                if transform.deferred:  # uncoloured crops: colour the chosen two after the selection
                    train_views = _Timed(transform.colour_chosen(train_views))
            else:
                (views, boxes), train_views = batch, None
            t0 = time.perf_counter()
            if args.method == "byol":
                m = cosine_schedule(step, steps, 0.99, 1.0)
                update_momentum(model.backbone, model.backbone_momentum, m=m)
                update_momentum(model.projection_head, model.projection_head_momentum, m=m)
            before = criterion.last_selection
            x0, x1 = criterion.select(views, model, target, boxes=boxes, epoch=epoch, train_views=train_views)
            t1 = time.perf_counter()
            if isinstance(train_views, _Timed):  # data work (a loader's, on a GPU box), not selection
                t0 += train_views.elapsed
            x0, x1 = x0.to(device), x1.to(device)
            if gen is not None:
                x0, x1 = gen(x0, x1)
            loss = _step_loss(args.method, model, criterion, x0, x1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if gen is not None:
                gen.step(loss)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            step += 1
            step_times.append(t2 - t1)
            active = hvs and criterion.last_selection is not before
            if active:
                n_active += 1
                sel_times.append(t1 - t0)
                st = criterion.last_stats
                e_lowest.append(st.lowest_iou_fraction)
                gaps.append(st.hardness_gap)
                ious = pair_ious(boxes, criterion.pairs)  # [P, M]
                sel = ious.gather(0, criterion.last_selection.index.cpu().unsqueeze(0)).squeeze(0)
                e_sel += sel.tolist()
                rnd = ious[0]  # pair 0 of i.i.d. candidates: a random (valid) pair
            else:
                rnd = pair_ious(boxes, torch.tensor([[0, 1]]))[0]
                e_sel += rnd.tolist()  # what this step trained on
            e_rnd += rnd.tolist()
            e_loss.append(loss.item())
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
        sel_iou_all += e_sel
        rnd_iou_all += e_rnd
        rec = {
            "epoch": epoch + 1,
            "loss": statistics.mean(e_loss),
            "mean_trained_iou": statistics.mean(e_sel),
            "mean_random_iou": statistics.mean(e_rnd),
            "lowest_iou_fraction": statistics.mean(e_lowest) if e_lowest else None,
        }
        if data.get("y_test") is not None and ((epoch + 1) % max(1, args.eval_every) == 0 or epoch + 1 == epochs):
            rec["knn"] = evaluate(model.backbone, data, device)
        history.append(rec)
    if bar is not None:
        bar.close()
    step_med = statistics.median(step_times)
    sel_med = statistics.median(sel_times) if sel_times else 0.0
    active_fraction = n_active / max(1, steps)
    lowest = [h["lowest_iou_fraction"] for h in history if h["lowest_iou_fraction"] is not None]
    return {
        "model": model,
        "criterion": criterion,
        "transform": transform,
        "generator": gen,
        "steps": steps,
        "epochs": epochs,
        "history": history,
        "knn": history[-1].get("knn"),
        "final_loss": statistics.mean(h["loss"] for h in history[-max(1, len(history) // 10) :]),
        "step_time": step_med,
        "selection_time": sel_med,
        "wall": time.perf_counter() - wall0,
        # model compute of an HVS step relative to the host step (selection forwards amortised over
        # the steps that select); data loading is left out: it runs in loader workers on a GPU box
        "compute_ratio": 1.0 + active_fraction * sel_med / step_med,
        "selected_iou": sel_iou_all,
        "random_iou": rnd_iou_all,
        "lowest_iou_fraction": statistics.mean(lowest) if lowest else None,
        "hardness_gap": statistics.mean(gaps) if gaps else None,
        "mean_selected_iou": statistics.mean(sel_iou_all),
        "mean_random_iou": statistics.mean(rnd_iou_all),
    }


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # a loader worker: one core's worth of augmentation


class _Timed:
    """A function that adds up the time spent in it (``elapsed``, seconds)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.elapsed = fn, 0.0

    def __call__(self, *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*a)
        finally:
            self.elapsed += time.perf_counter() - t


def _step_loss(method: str, model: nn.Module, criterion: nn.Module, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The host's own training loss on the pair (lightly's examples)."""
    if method == "simsiam":
        z0, p0 = model(x0)
        z1, p1 = model(x1)
        return 0.5 * (criterion(z0, p1) + criterion(z1, p0))
    if method == "simclr":
        return criterion(model(x0), model(x1))
    p0, p1 = model(x0), model(x1)
    z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
    return 0.5 * (criterion(p0, z1) + criterion(p1, z0))
