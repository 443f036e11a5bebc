"""Do the cheap selection settings pick the same pair as full-resolution fp32 selection?

    python benchmarks/agreement.py                  # both parts (~1 min + ~2.5 min on 1 CPU thread)
    python benchmarks/agreement.py --part settings  # resolution / bf16 / joint_views on the demo model
    python benchmarks/agreement.py --part layers    # score_layer (APPROXIMATE): agreement + step-time ratio,
                                                    # SimSiam and SimCLR (benchmarks/agreement_layers.py)

A SimSiam model of the lightly demo is trained briefly (baseline, 2 epochs of the embedded data);
then on fresh candidate batches (N=4) every setting's chosen pair is compared with the reference
(resolution 1.0, fp32, one forward per view). Chance agreement: 1/6. Writes
``benchmarks/results/agreement.json`` (a part run alone replaces only its own entries; the layer
part is under ``"score_layer"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("hvs_plugins") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # not installed: the core from the checkout (an installed copy wins)

from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss, demo  # noqa: E402


def settings_agreement(argv=None) -> dict:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.transforms import SimSiamTransform

    torch.set_num_threads(1)
    args = demo.build_parser().parse_args(["--epochs", "2", "--n-images", "1024"] + list(argv or []))
    images, _ = demo.make_shapes(args.n_images, args.image_size, seed=12345)
    run = demo.train(args, images, hvs=False, device=torch.device("cpu"), desc="train (baseline)")
    model = run["model"]
    transform = CandidateViews(SimSiamTransform(input_size=args.image_size, gaussian_blur=0.0, min_scale=0.2), n_views=4)
    loader = torch.utils.data.DataLoader(
        demo._Images(images, transform), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    settings = {
        "res 0.75": dict(resolution_scale=0.75),
        "res 0.5": dict(resolution_scale=0.5),
        "res 0.25": dict(resolution_scale=0.25),
        "bf16": dict(autocast_dtype=torch.bfloat16),
        "bf16 + res 0.5": dict(autocast_dtype=torch.bfloat16, resolution_scale=0.5),
        "joint_views": dict(joint_views=True),
    }
    ref = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    agree = {k: [] for k in settings}
    for b, (views, _) in enumerate(loader):
        if b == 4:
            break
        ref.select(views, model)
        want = ref.last_selection.index
        for name, kw in settings.items():
            joint = kw.pop("joint_views", False)
            crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, **kw)
            crit.selector.joint_views = joint
            if joint:
                kw["joint_views"] = True
            crit.select(views, model)
            agree[name] += (crit.last_selection.index == want).tolist()
    out = {name: sum(v) / len(v) for name, v in agree.items()}
    out["chance"] = 1 / 6
    out["samples"] = len(agree["bf16"])
    for k, v in out.items():
        print(f"{k:16s} {v:.3f}" if isinstance(v, float) else f"{k:16s} {v}")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="selection agreement of the cheap settings with the exact selection")
    p.add_argument("--part", choices=["all", "settings", "layers"], default="all")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "agreement.json"))
    p.add_argument("--tiny", action="store_true", help="layers part in seconds (tests): batch 8, 1 rep")
    for name, default in (("size", 32), ("batch", 32), ("n-batches", 4), ("train-steps", 10), ("reps", 3)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"layers part (default {default})")
    a, rest = p.parse_known_args(argv)
    path = Path(a.out)
    out = json.loads(path.read_text()) if path.is_file() else {}
    if a.part in ("all", "settings"):
        out.update(settings_agreement(rest))
    if a.part in ("all", "layers"):
        import agreement_layers

        kw = (
            dict(batch=8, n_batches=1, train_steps=1, reps=1, size=16)
            if a.tiny
            else dict(batch=a.batch, n_batches=a.n_batches, train_steps=a.train_steps, reps=a.reps, size=a.size)
        )
        out["score_layer"] = agreement_layers.main(**kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
