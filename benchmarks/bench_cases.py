"""Benchmark cases of ``bench.py``: per (host, method), the host's own step and the HVS step on shared candidate batches."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules
if importlib.util.find_spec("hvs_plugins") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # not installed: the core from the checkout (an installed copy wins)

from hvs_plugins import (  # noqa: E402
    CombinationSpace,
    dino_cross_entropy,
    gather_views,
    make_pairs,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
    resize_views,
)
from bench_models import DINOModel, SimCLRModel, SimSiamModel, make_backbone  # noqa: E402
from bench_timing import micro  # noqa: E402


# ----------------------------------------------------------------------------- benchmark cases
@dataclass
class Case:
    """One (host, method): ``candidates()`` makes a fresh candidate batch; ``host(batch)`` runs the
    host's own step on its 2 views (or DINO layout); ``hvs(batch, variant)`` selects through the
    adapter and runs the same host step; ``core(batch, variant)`` times our own arithmetic."""

    host: str
    method: str
    batch: int
    image_size: Any
    backbone: str
    n_views: int
    cap: Optional[int]
    make_candidates: Callable[[], Any]
    host_step: Callable[[Any], None]
    hvs_step: Callable[[Any, dict], None]
    core_times: Callable[[Any, dict], dict]
    configure: Callable[[dict], None]
    notes: str = ""
    resolutions: list = field(default_factory=list)


def _views(n: int, batch: int, size: int, device: torch.device, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, size, size, generator=gen).to(device) for _ in range(n)]


def lightly_two_view(method: str, prof: dict, device: torch.device, n_views: int) -> Case:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss

    from hvs_plugins.adapters.lightly import HVSLoss

    torch.manual_seed(0)
    backbone, dim = make_backbone(prof["arch"], prof["image_size"], prof["stem"])
    model = (SimSiamModel if method == "simsiam" else SimCLRModel)(backbone, dim).to(device)
    base = NegativeCosineSimilarity() if method == "simsiam" else NTXentLoss(temperature=0.5)
    crit = HVSLoss(base, n_views=n_views, autocast_dtype=_dtype(prof["autocast"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    size, batch = prof["image_size"], prof["batch"]

    def train(x0, x1):
        if method == "simsiam":
            z0, p0 = model(x0)
            z1, p1 = model(x1)
            loss = 0.5 * (crit(z0, p1) + crit(z1, p0))
        else:
            loss = crit(model(x0), model(x1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    def configure(v: dict) -> None:
        sel = crit.selector
        sel.resolution_scale = v["resolution"]
        sel.joint_views = v.get("joint_views", False)
        sel.autocast_dtype = _dtype(v.get("autocast", prof["autocast"]))

    def host(views):
        train(views[0], views[1])

    def hvs(views, v):
        x0, x1 = crit.select(views, model)
        train(x0, x1)

    def core(views, v):
        sel = crit.selector
        mods = [model, crit.criterion]
        out: dict[str, float] = {}
        with sel.scoring(mods):
            outs = sel.forward_views(model, views, n_views)
        if method == "simsiam":
            z, p = outs
            loss_fn = lambda: negative_cosine_pair_losses(p, z, sel.pairs)  # noqa: E731
        else:
            (z,) = outs
            loss_fn = lambda: ntxent_pair_losses(z, sel.pairs, float(base.temperature))  # noqa: E731
        out["enumerate"] = micro(lambda: make_pairs(n_views, None, False), device)
        out["pair_losses"] = micro(loss_fn, device)
        losses = loss_fn()
        out["argmax"] = micro(lambda: sel.choose(losses), device)
        selection = sel.choose(losses)
        out["gather"] = micro(lambda: selection.gather(views), device)
        out["guard"] = micro(lambda: _enter_exit(sel.scoring(mods)), device)
        out["stack"] = micro(lambda: [torch.stack([o[i] for i in range(n_views)]) for o in outs], device)
        if v["resolution"] < 1:
            out["resize"] = micro(lambda: [resize_views(x, v["resolution"]) for x in views], device)
        return out

    return Case(
        "lightly",
        method,
        batch,
        size,
        f"{prof['arch']} ({prof['stem']} stem)",
        n_views,
        None,
        lambda: _views(n_views, batch, size, device, gen),
        host,
        hvs,
        core,
        configure,
        resolutions=list(prof["resolutions"]),
    )


def lightly_dino(prof: dict, device: torch.device, cap: Optional[int], exact: bool, backbone: Optional[str] = None) -> Case:
    from lightly.loss import DINOLoss
    from lightly.models.utils import update_momentum

    from hvs_plugins.adapters.lightly import HVSLoss

    d = dict(prof["dino"], backbone=backbone) if backbone else prof["dino"]
    torch.manual_seed(0)
    backbone, dim = make_backbone(d["backbone"], d["global_size"], prof["stem"])
    model = DINOModel(backbone, dim, d["out_dim"]).to(device)
    base = DINOLoss(output_dim=d["out_dim"], warmup_teacher_temp_epochs=5).to(device)
    kw = dict(exact=True) if exact else dict(cap=cap)
    crit = HVSLoss(base, n_global_candidates=4, autocast_dtype=_dtype(prof["autocast"]), **kw)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3) if d["backbone"].startswith("vit") else torch.optim.SGD(params, lr=0.06, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    n_local, batch = d["n_local"], d["batch"]

    def momentum():
        update_momentum(model.student_backbone, model.teacher_backbone, m=0.996)
        update_momentum(model.student_head, model.teacher_head, m=0.996)

    def train(views, teacher_out=None):
        if teacher_out is None:
            momentum()
            teacher_out = [model.forward_teacher(v) for v in views[:2]]
        student_out = [model.forward(v) for v in views]
        loss = crit(teacher_out, student_out, epoch=0)
        loss.backward()
        model.student_head.cancel_last_layer_gradients(current_epoch=0)
        opt.step()
        opt.zero_grad()

    def candidates():
        return _views(4, batch, d["global_size"], device, gen) + _views(2 * n_local, batch, d["local_size"], device, gen)

    def configure(v: dict) -> None:
        sel = crit.selector
        sel.resolution_scale = v["resolution"]
        sel.joint_views = v.get("joint_views", False)
        sel.autocast_dtype = _dtype(v.get("autocast", prof["autocast"]))

    def host(views):  # DINO's own layout: 2 globals + n_local locals (one candidate per crop)
        train([views[0], views[1]] + views[4::2])

    def hvs(views, v):
        if v.get("reuse_teacher"):
            return hvs_reuse_teacher(views, v)
        train(crit.select(views, model, model.forward_teacher, epoch=0))

    def hvs_reuse_teacher(views, v):
        """The adapter's ``return_teacher_out=True``: the selection's teacher outputs of the 2 chosen
        globals replace the training step's teacher forward (select after the momentum update).
        The adapter allows it only for teachers without BatchNorm/dropout in train mode (ViT)."""
        momentum()
        layout, teacher_out = crit.select(views, model, model.forward_teacher, epoch=0, return_teacher_out=True)
        train(layout, teacher_out=teacher_out)

    def core(views, v):
        sel = crit.selector
        mods = [model, base]
        glob, loc = views[:4], views[4:]
        with sel.scoring(mods):
            t_out = sel.forward_views(model.forward_teacher, glob)[0]
            s_out = torch.cat([sel.forward_views(model.forward, glob)[0], sel.forward_views(model.forward, loc)[0]])
        temp = crit._teacher_temp(0, None)
        ce_fn = lambda: dino_cross_entropy(t_out, s_out, base.center, temp, float(base.student_temp))  # noqa: E731
        out: dict[str, float] = {}
        out["enumerate"] = micro(lambda: CombinationSpace(4, 2 * n_local, n_local).global_pairs, device)
        out["pair_losses"] = micro(ce_fn, device)
        ce = ce_fn()
        space = CombinationSpace(4, 2 * n_local, n_local)
        if exact:
            search = lambda: space.exact_search(ce, sel.generator)  # noqa: E731
        else:
            search = lambda: space.search(ce, cap, sel.generator)  # noqa: E731
        out["argmax"] = micro(search, device)  # enumeration/sampling of combinations + their losses + argmax
        choice = search()
        out["gather"] = micro(lambda: (gather_views(glob, choice.globals_), gather_views(loc, choice.locals_)), device)
        out["guard"] = micro(lambda: _enter_exit(sel.scoring(mods)), device)
        if v["resolution"] < 1:
            out["resize"] = micro(lambda: [resize_views(x, v["resolution"]) for x in views], device)
        return out

    size = f"2x{d['global_size']}+{n_local}x{d['local_size']}"
    label = "dino" if d is prof["dino"] else f"dino ({d['backbone']})"
    return Case(
        "lightly",
        label,
        batch,
        size,
        d["backbone"] + (f" ({prof['stem']} stem)" if d["backbone"].startswith("resnet") else ""),
        4 + 2 * n_local,
        None if exact else cap,
        candidates,
        host,
        hvs,
        core,
        configure,
        notes="exact search" if exact else f"cap {cap}",
        resolutions=list(prof["resolutions"]),
    )


def mmselfsup_case(method: str, prof: dict, device: torch.device, n_views: int, pair_forward: bool = True) -> Case:
    import warnings

    warnings.filterwarnings("ignore")
    from mmengine.optim import OptimWrapper
    from mmengine.registry import init_default_scope
    from mmselfsup.registry import MODELS
    from mmselfsup.structures import SelfSupDataSample

    import hvs_plugins.adapters.mmselfsup  # noqa: F401  (registers the hook, repairs registries)
    from hvs_plugins import HardViewSelector
    from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook

    init_default_scope("mmselfsup")
    depth = int(prof["arch"].replace("resnet", ""))
    feat = 512 if depth < 50 else 2048
    pre = dict(type="SelfSupDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
    backbone = dict(type="ResNet", depth=depth, in_channels=3, out_indices=[4], norm_cfg=dict(type="BN"))
    if method == "simsiam":
        proj = 2048 if feat >= 2048 else 512
        cfg = dict(
            type="SimSiam",
            data_preprocessor=pre,
            backbone=backbone,
            neck=dict(
                type="NonLinearNeck",
                in_channels=feat,
                hid_channels=proj,
                out_channels=proj,
                num_layers=3,
                with_last_bn_affine=False,
                with_avg_pool=True,
            ),
            head=dict(
                type="LatentPredictHead",
                loss=dict(type="CosineSimilarityLoss"),
                predictor=dict(
                    type="NonLinearNeck",
                    in_channels=proj,
                    hid_channels=proj // 4,
                    out_channels=proj,
                    with_avg_pool=False,
                    with_last_bn=False,
                    with_last_bias=True,
                ),
            ),
        )
    else:
        cfg = dict(
            type="SimCLR",
            data_preprocessor=pre,
            backbone=backbone,
            neck=dict(type="NonLinearNeck", in_channels=feat, hid_channels=feat, out_channels=128, num_layers=2, with_avg_pool=True),
            head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.1),
        )
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    if prof["stem"] in ("cifar", "cifar-pool"):  # same small-image stem as the lightly cases
        model.backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        if prof["stem"] == "cifar":
            model.backbone.maxpool = nn.Identity()
    model = model.to(device)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    hook = HardViewSelectionHook(n_views=n_views, simclr_pair_forward=pair_forward, log_stats=False, autocast_dtype=prof["autocast"])
    hook.algorithm = "SimSiam" if method == "simsiam" else "SimCLR"
    size, batch = prof["image_size"], prof["batch"]
    gen = torch.Generator().manual_seed(3)
    samples = [SelfSupDataSample() for _ in range(batch)]
    runner = type("RunnerStub", (), {})()
    runner.model, runner.iter, runner.message_hub = model, 0, None

    def candidates():  # raw uint8 BGR views, as MMSelfSup's MultiView + PackSelfSupInputs give them
        return [torch.randint(0, 256, (batch, 3, size, size), generator=gen, dtype=torch.uint8) for _ in range(n_views)]

    def configure(v: dict) -> None:
        hook.selector = HardViewSelector(
            n_views,
            resolution_scale=v["resolution"],
            joint_views=v.get("joint_views", False),
            autocast_dtype=_dtype(v.get("autocast", prof["autocast"])),
        )

    def host(views):
        model.train_step({"inputs": [views[0], views[1]], "data_samples": samples}, optim)

    def hvs(views, v):
        data = {"inputs": list(views), "data_samples": samples}
        hook.before_train_iter(runner, 0, data)
        model.train_step(data, optim)

    def core(views, v):  # the same core calls on tensors of the hook's shapes (its forwards run inside the adapter)
        sel = hook.selector
        with sel.scoring([model]):
            pv = hook._preprocess(model, list(views))
            z = sel.forward_views(lambda x: model.neck(model.backbone(x))[0], pv, n_views)[0]
        out: dict[str, float] = {}
        out["enumerate"] = micro(lambda: make_pairs(n_views, None, False), device)
        if method == "simsiam":
            loss_fn = lambda: negative_cosine_pair_losses(z, z, sel.pairs)  # noqa: E731
        else:
            loss_fn = lambda: ntxent_pair_losses(z, sel.pairs, 0.1)  # noqa: E731
        out["pair_losses"] = micro(loss_fn, device)
        losses = loss_fn()
        out["argmax"] = micro(lambda: sel.choose(losses), device)
        selection = sel.choose(losses)
        out["gather"] = micro(lambda: selection.gather(list(views)), device)
        out["guard"] = micro(lambda: _enter_exit(sel.scoring([model])), device)
        if v["resolution"] < 1:
            out["resize"] = micro(lambda: [resize_views(x, v["resolution"]) for x in pv], device)
        return out

    name = method + ("" if method != "simclr" else (" (pair forward, exact)" if pair_forward else " (per-view forward, approx.)"))
    return Case(
        "mmselfsup",
        name,
        batch,
        size,
        f"{prof['arch']} ({prof['stem']} stem)",
        n_views,
        None,
        candidates,
        host,
        hvs,
        core,
        configure,
        resolutions=list(prof["mm_resolutions"]),
    )


def _enter_exit(ctx) -> None:
    with ctx:
        pass


def _dtype(name):
    if name is None or isinstance(name, torch.dtype):
        return name
    return getattr(torch, name)
