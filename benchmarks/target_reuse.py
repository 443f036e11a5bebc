"""Target reuse (``HVSLoss.select(..., return_target_out=True)``): HVS step with and without reusing
the selection's momentum outputs, side by side in one process, for lightly BYOL and MoCo (NT-Xent
with a memory bank) on a BatchNorm-free momentum network (a small ViT with LayerNorm heads), where
reuse is exact.

    python benchmarks/target_reuse.py                  # vit (dim 192, depth 4), 32 px, batch 32, N=4
    python benchmarks/target_reuse.py --tiny           # seconds (tests)

Per method: host step (A), HVS step (B), HVS step with target reuse (C), interleaved A, B, C, ...
after warm-up on the same candidate batches; process CPU time (robust on a shared CPU), median over
reps. Prints the B/A and C/A ratios and writes them as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

from bench_models import ViT  # noqa: E402


class MomentumModel(nn.Module):
    """BYOL (forward -> prediction) or MoCo (forward -> projection); ``forward_momentum`` -> key."""

    def __init__(self, method: str, backbone: nn.Module, dim: int, out: int = 128) -> None:
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        mlp = lambda i, o: nn.Sequential(nn.Linear(i, 2 * i), nn.LayerNorm(2 * i), nn.GELU(), nn.Linear(2 * i, o))  # noqa: E731
        self.backbone, self.projection_head = backbone, mlp(dim, out)
        self.prediction_head = mlp(out, out) if method == "byol" else nn.Identity()
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x)))

    @torch.no_grad()
    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x))


def run(method: str, size: int, batch: int, dim: int, depth: int, reps: int, warmup: int) -> dict:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.utils import update_momentum

    from hvs_plugins.adapters.lightly import HVSLoss

    torch.manual_seed(0)
    model = MomentumModel(method, ViT(patch=4, dim=dim, depth=depth, heads=3, image_size=size), dim).train()
    if method == "byol":
        crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved")
    else:
        crit = HVSLoss(NTXentLoss(temperature=0.2, memory_bank_size=(256, 128)), n_views=4)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    gen = torch.Generator().manual_seed(1)
    batches = [[torch.randn(batch, 3, size, size, generator=gen) for _ in range(4)] for _ in range(2)]

    def step(x0, x1, t0=None, t1=None) -> None:
        if t0 is None:
            t0, t1 = model.forward_momentum(x0), model.forward_momentum(x1)
        p0, p1 = model(x0), model(x1)
        loss = 0.5 * (crit(p0, t1) + crit(p1, t0)) if method == "byol" else crit(p0, t1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def host(views):
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        step(views[0], views[1])

    def hvs(views):
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        step(*crit.select(views, model, model.forward_momentum))

    def hvs_reuse(views):
        update_momentum(model.backbone, model.backbone_momentum, m=0.99)
        (x0, x1), (t0, t1) = crit.select(views, model, model.forward_momentum, return_target_out=True)
        step(x0, x1, t0, t1)

    arms = {"host": host, "hvs": hvs, "hvs_reuse": hvs_reuse}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(warmup + reps):
        for name, fn in arms.items():  # interleaved: A, B, C, A, B, C, ...
            t = time.process_time()
            fn(batches[r % 2])
            if r >= warmup:
                times[name].append(time.process_time() - t)
    ratio = lambda k: statistics.median(b / a for a, b in zip(times["host"], times[k]))  # noqa: E731
    return {
        "host_ms": 1e3 * statistics.median(times["host"]),
        "hvs_ratio": ratio("hvs"),
        "hvs_reuse_ratio": ratio("hvs_reuse"),
        "reps": reps,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "target_reuse.json"))
    a = p.parse_args(argv)
    if a.tiny:
        a.size, a.batch, a.dim, a.depth, a.reps, a.warmup = 16, 4, 24, 1, 1, 0
    torch.set_num_threads(a.threads)
    out = {"setup": {k: v for k, v in vars(a).items() if k != "out"}, "clock": "process CPU time"}
    for method in ("byol", "moco"):
        r = out[method] = run(method, a.size, a.batch, a.dim, a.depth, a.reps, a.warmup)
        print(
            f"{method:5s} host step {r['host_ms']:.0f} ms   HVS x{r['hvs_ratio']:.3f}   "
            f"HVS + target reuse x{r['hvs_reuse_ratio']:.3f}   (median of {r['reps']} interleaved reps)"
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
