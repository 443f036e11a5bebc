"""Per-sample pair losses for MMSelfSup / MMPretrain self-supervised algorithms.

Every scorer runs the algorithm's own backbone / neck / head predictor / momentum network, per
candidate view, and turns the outputs into ``pair_losses: [P, M]`` such that
``pair_losses[p].mean()`` equals the algorithm's ``loss()`` on pair p (same loss module settings:
temperature, loss weight, shift/scale factors). ``loss()`` itself is never called: it steps the
momentum encoder (BYOL, MoCo v2/v3) and enqueues keys (MoCo v2).

MMSelfSup keeps a head's loss module at ``head.loss``; MMPretrain at ``head.loss_module``; both
are handled.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hvs_plugins import (
    HardViewSelector,
    invariance_proxy_pair_losses,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
    resize_views,
)
from hvs_plugins.devices import to_device
from hvs_plugins.layer_scoring import cosine_distance_pair_losses, layer_forward, layer_names, resolve_layer

SUPPORTED = ("SimSiam", "SimCLR", "BYOL", "MoCo", "MoCoV3", "SwAV", "BarlowTwins")
# No per-sample loss: only the labelled invariance proxy, with HardViewSelectionHook(proxy=True).
PROXY = ("BarlowTwins",)
_HOSTS = ("mmselfsup", "mmpretrain")


def algorithm_name(model: nn.Module) -> Optional[str]:
    """The supported algorithm ``model`` is (or subclasses), else None. Only classes defined in
    mmselfsup or mmpretrain count (a user class merely named "MoCo" does not)."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.split(".")[0] in _HOSTS:
            return cls.__name__
    return None


def check_supported(model: nn.Module, proxy: bool = False) -> str:
    name = algorithm_name(model)
    if name is None:
        raise NotImplementedError(
            f"HardViewSelectionHook does not support the algorithm {type(model).__name__}: supported "
            f"are {', '.join(SUPPORTED)} (MMSelfSup 1.x or MMPretrain 1.x; {', '.join(PROXY)} with "
            "proxy=True). Remove the hook from custom_hooks for this algorithm."
        )
    if name in PROXY and not proxy:
        raise NotImplementedError(
            f"{name} has no per-sample loss (its cross-correlation matrix couples the whole batch), so "
            "HardViewSelectionHook cannot select with its exact objective; set "
            "dict(type='HardViewSelectionHook', proxy=True) to select with the labelled invariance proxy "
            "(mean squared distance of the two embeddings), or remove the hook"
        )
    return name


def _loss_module(head: nn.Module) -> nn.Module:
    mod = getattr(head, "loss_module", None)  # MMPretrain
    if mod is None:
        mod = getattr(head, "loss", None)  # MMSelfSup
    if not isinstance(mod, nn.Module):
        raise TypeError(f"cannot find the loss module of head {type(head).__name__}")
    return mod


def _cosine_factors(head: nn.Module) -> tuple[float, float]:
    loss = _loss_module(head)
    if type(loss).__name__ != "CosineSimilarityLoss":
        raise NotImplementedError(f"HVS scores {type(head).__name__} with CosineSimilarityLoss only, got {type(loss).__name__}")
    return float(loss.shift_factor), float(loss.scale_factor)


def _ce_weight(head: nn.Module) -> float:
    """Loss weight of a plain softmax cross-entropy loss module (mmcls/mmpretrain CrossEntropyLoss)."""
    loss = _loss_module(head)
    plain = (
        type(loss).__name__ == "CrossEntropyLoss"
        and not getattr(loss, "use_sigmoid", False)
        and not getattr(loss, "use_soft", False)
        and getattr(loss, "class_weight", None) is None
        and getattr(loss, "reduction", "mean") == "mean"
    )
    if not plain:
        raise NotImplementedError(
            f"HVS scores {type(head).__name__} with a plain CrossEntropyLoss (softmax, no class weights, reduction='mean'), got {loss!r}"
        )
    return float(getattr(loss, "loss_weight", 1.0))


def _gather_rows(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated along ``dim`` (rank order) and this rank's offset; no-op
    outside distributed training."""
    from mmengine.dist import all_gather, get_rank, get_world_size

    if get_world_size() <= 1:
        return x, 0
    parts = all_gather(x.contiguous())
    offset = sum(p.shape[dim] for p in parts[: get_rank()])
    return torch.cat(parts, dim=dim), offset


# -- scorers: (model, selector, views [N tensors [M,C,H,W], preprocessed]) -> [P, M]


def _simsiam(model, selector: HardViewSelector, views) -> torch.Tensor:
    shift, scale = _cosine_factors(model.head)

    def forward(x):
        z = model.neck(model.backbone(x))[0]
        return model.head.predictor([z])[0], z

    p, z = selector.forward_views(forward, views, selector.n_views)
    # loss() = ½(L(p1, z2) + L(p2, z1)), L = shift − scale·cos
    return shift + scale * negative_cosine_pair_losses(p, z, selector.pairs)


def _byol(model, selector: HardViewSelector, views, target: Optional[nn.Module] = None, keep: Optional[dict] = None) -> torch.Tensor:
    shift, scale = _cosine_factors(model.head)
    target = model.target_net if target is None else target  # target_reuse: the post-update shadow

    def forward(x):
        z = model.neck(model.backbone(x))[0]
        return model.head.predictor([z])[0], target(x)[0]

    p, t = selector.forward_views(forward, views, selector.n_views)
    if keep is not None:
        keep["target"] = t  # [N, M, D]: the momentum outputs, for reuse in the training step
    # loss() = 2·(L(p1, t2) + L(p2, t1)) = 4 · ½(...)
    return 4.0 * (shift + scale * negative_cosine_pair_losses(p, t, selector.pairs))


def _moco(model, selector: HardViewSelector, views) -> torch.Tensor:
    weight = _ce_weight(model.head)

    def forward(x):
        return model.neck(model.backbone(x))[0], model.encoder_k(x)[0]

    q, k = selector.forward_views(forward, views, selector.n_views)
    # query from view a (first column), key from view b; negatives: the queue (read only)
    losses = ntxent_pair_losses(
        q,
        selector.pairs,
        temperature=float(model.head.temperature),
        keys=k,
        memory_bank=model.queue.detach().t(),
        symmetric=False,
    )
    return weight * losses


def _mocov3(model, selector: HardViewSelector, views, target: Optional[nn.Module] = None, keep: Optional[dict] = None) -> torch.Tensor:
    weight = _ce_weight(model.head)
    temperature = float(model.head.temperature)
    target = model.momentum_encoder if target is None else target  # target_reuse: the post-update shadow

    def forward(x):
        q = model.neck(model.backbone(x))[0]
        return model.head.predictor([q])[0], target(x)[0]

    pred, key = selector.forward_views(forward, views, selector.n_views)
    if keep is not None:
        keep["target"] = key  # [N, M, D] raw momentum outputs (before normalising), for reuse
    pred = F.normalize(pred, dim=-1)  # [N, M, D]
    key, offset = _gather_rows(F.normalize(key, dim=-1), dim=1)  # [N, M_all, D]
    m = pred.shape[1]
    logits = torch.einsum("aid,bjd->abij", pred, key) / temperature  # [N(pred), N(key), M, M_all]
    own = torch.arange(m, device=logits.device)
    pos = logits[..., own, own + offset]  # [N, N, M]
    ce = torch.logsumexp(logits, dim=-1) - pos
    a, b = to_device(selector.pairs[:, 0], ce.device), to_device(selector.pairs[:, 1], ce.device)
    # loss() = head(q1, k2) + head(q2, k1)
    return weight * (ce[a, b] + ce[b, a])


def _simclr(model, selector: HardViewSelector, views, pair_forward: bool = True) -> torch.Tensor:
    weight = _ce_weight(model.head)
    temperature = float(model.head.temperature)

    def embed(x):
        z = model.neck(model.backbone(x))[0]
        return z / (torch.norm(z, p=2, dim=1, keepdim=True) + 1e-10)

    if not pair_forward:  # approximation: each view is its own BatchNorm batch
        (z,) = selector.forward_views(embed, views, selector.n_views)
        z_all, offset = _gather_rows(z, dim=1)
        return weight * ntxent_pair_losses(z, selector.pairs, temperature=temperature, all_embeddings=z_all, offset=offset)
    # exact: SimCLR forwards the two views of a pair as ONE BatchNorm batch (interleaved, 2M),
    # so every pair gets its own joint forward (P forwards of 2M views)
    one = torch.tensor([[0, 1]])
    out = []
    for k, l in selector.pairs.tolist():
        xa = resize_views(views[k], selector.resolution_scale)
        xb = resize_views(views[l], selector.resolution_scale)
        m = xa.shape[0]
        x = torch.stack([xa, xb], 1).reshape(2 * m, *xa.shape[1:])
        ctx = selector._autocast(x.device)
        with ctx:
            z = embed(x).float()
        z = torch.stack([z[0::2], z[1::2]])  # [2, M, D]
        z_all, offset = _gather_rows(z, dim=1)
        out.append(ntxent_pair_losses(z, one, temperature=temperature, all_embeddings=z_all, offset=offset)[0])
    return weight * torch.stack(out)


def _barlowtwins_proxy(model, selector: HardViewSelector, views) -> torch.Tensor:
    """PROXY, not the host's loss: the per-sample invariance term of the neck embeddings."""
    (z,) = selector.forward_views(lambda x: model.neck(model.backbone(x))[0], views, selector.n_views)
    return invariance_proxy_pair_losses(z, selector.pairs)


def _swav(model, selector: HardViewSelector, views) -> torch.Tensor:
    from .swav import swav_pair_losses

    return swav_pair_losses(model, selector, views)


SCORERS: dict[str, Callable] = {
    "SwAV": _swav,
    "BarlowTwins": _barlowtwins_proxy,
    "SimSiam": _simsiam,
    "BYOL": _byol,
    "MoCo": _moco,
    "MoCoV3": _mocov3,
    "SimCLR": _simclr,
}


def score_pairs(name: str, model: nn.Module, selector: HardViewSelector, views: Sequence[torch.Tensor], **options) -> torch.Tensor:
    """``[P, M]`` per-sample losses of every pair in ``selector.pairs``. Call inside
    ``selector.scoring([model])`` (no grad, state preserved)."""
    views = list(views)
    if name == "SimCLR":
        return SCORERS[name](model, selector, views, pair_forward=options.get("simclr_pair_forward", True))
    if name in ("BYOL", "MoCoV3") and (options.get("target") is not None or options.get("keep") is not None):
        # reuse_target: score with the momentum network as loss() will use it, keep its outputs
        return SCORERS[name](model, selector, views, target=options.get("target"), keep=options.get("keep"))
    return SCORERS[name](model, selector, views)


# -- APPROXIMATE scoring on an earlier layer (score_layer=; core hvs_plugins.layer_scoring)

# the online path the layer-scoring forward runs: backbone -> neck (-> head.predictor where present)
ONLINE_PATH = ("backbone", "neck", "head.predictor")


def online_forward(model: nn.Module) -> Callable[[torch.Tensor], object]:
    """``x: [B, C, H, W]`` -> the online network's output (backbone, neck, and the head's predictor
    for SimSiam / BYOL / MoCo v3): every module a ``score_layer`` may name lies on this path."""
    predictor = getattr(getattr(model, "head", None), "predictor", None)

    def forward(x: torch.Tensor):
        z = model.neck(model.backbone(x))
        return predictor([z[0]]) if isinstance(predictor, nn.Module) else z

    return forward


def online_layer_names(model: nn.Module) -> list[str]:
    """The names ``score_layer`` accepts: the modules on :data:`ONLINE_PATH` (``model.named_modules()`` order)."""
    roots = [r for r in ONLINE_PATH if r in dict(model.named_modules())]
    return [n for n in layer_names(model) if any(n == r or n.startswith(r + ".") for r in roots)]


def check_score_layer(model: nn.Module, name: str) -> str:
    """``name`` if it is a module on the online path of ``model``, else a ValueError listing the
    valid names (an unknown name, or one of a momentum/key network the selection never runs)."""
    resolve_layer(model, name)  # not a module at all: the core's error with the valid names
    valid = online_layer_names(model)
    if name not in valid:
        shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
        raise ValueError(
            f"score_layer={name!r} is not on the online path the selection forward runs ({' -> '.join(ONLINE_PATH)}; "
            f"momentum / key networks are not scored); valid names: {shown}"
        )
    return name


def layer_pair_losses(model: nn.Module, selector: HardViewSelector, views: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """APPROXIMATE ``[P, M]``: ``1 - cos`` of the online activations after ``model.<name>`` of every
    pair, the network run only up to there (call inside ``selector.scoring([model])``)."""
    run = layer_forward(online_forward(model), model, name)
    (features,) = selector.forward_views(run, list(views), selector.n_views)  # [N, M, D]
    return cosine_distance_pair_losses(features, selector.pairs)
