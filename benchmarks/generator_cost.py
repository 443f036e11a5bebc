"""Cost of the hard-view generator per training step: host step with the generator vs without.

    python benchmarks/generator_cost.py                 # SimCLR, demo ConvNet, 24 px, batch 64, 20 steps
    python benchmarks/generator_cost.py --steps 2       # seconds (tests)
    python benchmarks/generator_cost.py --host resnet50 --size 112 --batch 8 --steps 8   # a ResNet-50 host

Host step (lightly SimCLR: the demo's ``small_backbone``, ``SimCLRProjectionHead``, ``NTXentLoss``,
SGD) side by side in one process with the same step on generated views (``x0, x1 = gen(x0, x1)``,
then ``gen.step(loss)`` after the host's ``optimizer.step()``), for the default generator (Viewmaker
size: width 32, 3 residual blocks, 9x9 stem/final convs) and a light one (width 16, 3x3).
``--host resnet18|resnet50``: torchvision's ResNet as the backbone instead (the generator's share
shrinks as the encoder grows; both are convolutional, so the ratio barely depends on the size). Arms are
interleaved per step on the same batches after warm-up; process CPU time (robust on a shared CPU);
the ratio is the median over steps of (arm step / host step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("hvs_plugins") is None and str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # not installed: the checkout

GENERATORS = {
    "generator (width 32, 9x9, 3 blocks)": dict(width=32, stem_kernel=9, n_blocks=3),
    "generator light (width 16, 3x3, 3 blocks)": dict(width=16, stem_kernel=3, n_blocks=3),
}


def backbone(host: str, width: int = 16) -> tuple[nn.Module, int]:
    """The host's encoder and its feature dimension: the demo ConvNet or a torchvision ResNet."""
    if host == "demo":
        from hvs_plugins.adapters.lightly.demo_train import small_backbone

        return small_backbone(width), 8 * width
    import torchvision

    net = getattr(torchvision.models, host)()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def run(size: int, batch: int, steps: int, warmup: int, host_net: str = "demo") -> dict:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from hvs_plugins.adapters.lightly import HardViewGenerator

    torch.manual_seed(0)
    net, dim = backbone(host_net)
    model = nn.Sequential(net, SimCLRProjectionHead(dim, dim, 64)).train()
    criterion = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gens = {name: HardViewGenerator(eps=0.05, seed=1, **kw) for name, kw in GENERATORS.items()}
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g)) for _ in range(2)]

    def host(x0, x1):
        loss = criterion(model(x0), model(x1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def with_generator(gen):
        def step(x0, x1):
            x0, x1 = gen(x0, x1)
            gen.step(host(x0, x1))

        return step

    arms = {"host": host, **{name: with_generator(gen) for name, gen in gens.items()}}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(warmup + steps):
        for name, fn in arms.items():  # interleaved: host, gen, light, host, ...
            t = time.process_time()
            fn(*batches[r % 2])
            if r >= warmup:
                times[name].append(time.process_time() - t)
    out = {"host_ms": 1e3 * statistics.median(times["host"]), "arms": {}}
    for name in gens:
        ratio = statistics.median(b / a for a, b in zip(times["host"], times[name]))
        params = sum(p.numel() for p in gens[name].parameters())
        out["arms"][name] = {"ms": 1e3 * statistics.median(times[name]), "ratio": ratio, "params": params}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--host", choices=["demo", "resnet18", "resnet50"], default="demo", help="the host's backbone")
    p.add_argument("--out", default=None, help="default: results/generator_cost.json (demo), generator_cost_<host>.json")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = str(HERE / "results" / ("generator_cost.json" if a.host == "demo" else f"generator_cost_{a.host}.json"))
    torch.set_num_threads(a.threads)
    res = run(a.size, a.batch, a.steps, a.warmup, a.host)
    res = {"setup": {k: v for k, v in vars(a).items() if k != "out"}, "clock": "process CPU time", "torch": torch.__version__, **res}
    host = "demo ConvNet (width 16)" if a.host == "demo" else f"torchvision {a.host}"
    print(f"SimCLR, {host}, {a.size} px, batch {a.batch}, {a.threads} thread(s), median of {a.steps} interleaved steps (process CPU time)")
    print(f"host step: {res['host_ms']:.1f} ms")
    for name, arm in res["arms"].items():
        print(f"{name}: {arm['ms']:.1f} ms/step, cost ratio x{arm['ratio']:.2f} ({arm['params']} generator parameters)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
