"""2-process CPU DDP (gloo) run of the lightly hard-view generator in a plain torch loop.

Usage: python generator_ddp.py OUT_DIR [STEPS]

The model is wrapped in torch's DistributedDataParallel (the host averages its gradients); the
generator is not: ``gen.step()`` all-reduces its gradients itself. Two runs per rank, the same
steps: ``sync`` (default, ``sync_grads=True``) and ``nosync`` (``sync_grads=False``, the control:
the ranks' generators must drift apart there). Each rank sees different images. Every rank writes
OUT_DIR/rank{r}.pt with, per run, the generator's and the model's final parameters and the
generator's initial parameters. Workers are forked from this process (imports are done once).
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hvs_plugins.adapters.lightly import HardViewGenerator

SIZE, BATCH = 16, 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        SimCLRProjectionHead(8, 16, 8),
    )


def run(rank: int, sync: bool, steps: int) -> dict:
    model = DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = NTXentLoss(temperature=0.5)
    gen = HardViewGenerator(eps=0.1, width=4, n_blocks=1, stem_kernel=3, lr=1e-2, sync_grads=sync)
    init = [p.detach().clone() for p in gen.parameters()]
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(steps):
        x0, x1 = (torch.randn(BATCH, 3, SIZE, SIZE, generator=g) for _ in range(2))
        x0, x1 = gen(x0, x1)
        loss = crit(model(x0), model(x1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        gen.step(loss)
    return {
        "gen": [p.detach().clone() for p in gen.parameters()],
        "gen_init": init,
        "model": [p.detach().clone() for p in model.parameters()],
        "steps": gen.steps,
    }


def worker(rank: int, out_dir: str, steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    try:
        res = {"sync": run(rank, True, steps), "nosync": run(rank, False, steps), "world": dist.get_world_size()}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    mp.start_processes(worker, args=(out, n), nprocs=2, start_method="fork")
