"""score_layer (APPROXIMATE layer scoring): how often it picks the exact selection's pair, and what
the HVS step then costs, for lightly SimSiam and SimCLR (``benchmarks/agreement.py --part layers``).

Per method: a ResNet-18 (CIFAR stem with max-pool, as the CPU benchmark profile) with lightly's heads
is trained briefly with the plain host step on patches of scikit-image's bundled photos (32 px,
lightly's default transform without blur); then on fresh candidate batches (N=4) each setting
(score layer × selection resolution, and the exact objective at the lower resolution) is compared
with the exact selection (the loss's own per-sample objective, full resolution, fp32). Step-time
ratio: HVS step (selection through ``HVSLoss.select`` + the host step) over the host step alone,
interleaved, process CPU time, median over reps, as ``benchmarks/bench.py`` measures it.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LAYERS = ["backbone.conv1", "backbone.layer1", "backbone.layer2", "backbone.avgpool"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat", "hubble_deep_field"]


def photo_patches(n: int, size: int = 48, seed: int = 0) -> list:
    """``n`` random ``size``-pixel RGB patches (PIL) of scikit-image's bundled sample photos."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in PHOTOS]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        y, x = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        out.append(Image.fromarray(np.ascontiguousarray(im[y : y + size, x : x + size, :3])))
    return out


def _cpu_time(fn) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def run_method(
    method: str, batch: int, n_batches: int, train_steps: int, reps: int, size: int, resolutions: list[float], log=print
) -> dict:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.transforms import SimCLRTransform, SimSiamTransform

    import bench_models
    from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss

    torch.manual_seed(0)
    backbone, dim = bench_models.resnet_backbone("resnet18", size, "cifar-pool")
    model = (bench_models.SimSiamModel if method == "simsiam" else bench_models.SimCLRModel)(backbone, dim)
    base = NegativeCosineSimilarity() if method == "simsiam" else NTXentLoss(temperature=0.5)
    tf = (SimSiamTransform if method == "simsiam" else SimCLRTransform)(input_size=size, gaussian_blur=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    def step(x0, x1) -> None:
        if method == "simsiam":
            (z0, p0), (z1, p1) = model(x0), model(x1)
            loss = 0.5 * (base(z0, p1) + base(z1, p0))
        else:
            loss = base(model(x0), model(x1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    images = photo_patches(batch * (n_batches + 2), seed=1 if method == "simsiam" else 2)
    cand = CandidateViews(tf, n_views=4)
    batches = []
    for b in range(n_batches + 2):
        views = [cand(im) for im in images[b * batch : (b + 1) * batch]]
        batches.append([torch.stack([v[k] for v in views]) for k in range(4)])
    t0 = time.perf_counter()
    model.train()
    for s in range(train_steps):  # the plain host step on the first two candidates, cycling the batches
        vs = batches[s % len(batches)]
        step(vs[0], vs[1])
    log(f"  {method}: {train_steps} training steps in {time.perf_counter() - t0:.0f} s")

    settings: dict[str, dict] = {}
    for res in resolutions:
        if res != 1.0:
            settings[f"exact res {res}"] = dict(resolution_scale=res)
        for layer in LAYERS:
            settings[f"{layer.split('.')[-1]} res {res}"] = dict(score_layer=layer, resolution_scale=res)
    ref = HVSLoss(base, n_views=4)
    crits = {name: HVSLoss(base, n_views=4, **kw) for name, kw in settings.items()}
    agree = {name: 0 for name in settings}
    n = 0
    for vs in batches[2:]:
        ref.select(vs, model)
        want = ref.last_selection.index
        n += want.numel()
        for name, crit in crits.items():
            crit.select(vs, model)
            agree[name] += int((crit.last_selection.index == want).sum())

    timed = {"exact res 1.0": ref, **crits}
    ratios: dict[str, list[float]] = {name: [] for name in timed}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    vs = batches[0]
    for name, crit in timed.items():  # one warm-up per setting
        crit.select(vs, model)
    for r in range(reps):
        for name, crit in timed.items():
            host = _cpu_time(lambda: step(vs[0], vs[1]))
            hvs = _cpu_time(lambda: step(*crit.select(vs, model)))
            ratios[name].append(hvs / host)
    model.load_state_dict(state)
    opt.load_state_dict(opt_state)
    rows = {}
    for name in timed:
        rows[name] = dict(
            agreement=None if name == "exact res 1.0" else agree[name] / n,
            ratio=statistics.median(ratios[name]),
            ratio_min=min(ratios[name]),
            ratio_max=max(ratios[name]),
        )
        a = rows[name]["agreement"]
        log(
            f"  {method:8s} {name:18s} agreement {'   ref' if a is None else f'{a:6.1%}'}  step ratio x{rows[name]['ratio']:.3f} "
            f"[{rows[name]['ratio_min']:.2f}-{rows[name]['ratio_max']:.2f}]"
        )
    return dict(rows=rows, samples=n)


def main(
    batch: int = 32,
    n_batches: int = 4,
    train_steps: int = 10,
    reps: int = 3,
    size: int = 32,
    resolutions: Optional[list[float]] = None,
    threads: int = 1,
    log=print,
) -> dict:
    torch.set_num_threads(threads)
    resolutions = resolutions or [1.0, 0.5]
    t0 = time.perf_counter()
    out = {
        "setup": dict(
            backbone="resnet18 (cifar-pool stem)",
            image_size=size,
            batch=batch,
            n_views=4,
            train_steps=train_steps,
            reps=reps,
            threads=threads,
            clock="process CPU time",
            data="scikit-image sample photo patches",
            chance=1 / 6,
        )
    }
    for method in ("simsiam", "simclr"):
        out[method] = run_method(method, batch, n_batches, train_steps, reps, size, resolutions, log)
    out["setup"]["wall_s"] = round(time.perf_counter() - t0, 1)
    return out
