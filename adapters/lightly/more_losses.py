"""More lightly losses for :class:`HVSLoss`: the exact per-sample ones (DCLLoss, DCLWLoss, MACLLoss,
TiCoLoss, DirectCLRLoss) and the labelled invariance proxy for BarlowTwinsLoss / VICRegLoss
(``HVSLoss(..., proxy=True)``; off by default). Importing the package registers them."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from hvs_plugins import dcl_pair_losses, invariance_proxy_pair_losses, macl_pair_losses, tico_pair_losses

from .registry import _has_bank, _ntxent, register_pair_loss, register_proxy


def _distributed_world(criterion: nn.Module) -> int:
    if not getattr(criterion, "gather_distributed", False):
        return 1
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _refuse_gathered(criterion: nn.Module) -> None:
    if _distributed_world(criterion) > 1:
        raise NotImplementedError(
            f"{type(criterion).__name__}(gather_distributed=True) takes negatives/statistics from every rank; "
            "HVS scores it on one rank only. Use gather_distributed=False with HVS (or NTXentLoss, whose "
            "gathered negatives HVS supports)"
        )


def _one_network(criterion: nn.Module, online: list, target: Optional[list]) -> torch.Tensor:
    if target is not None:
        raise ValueError(
            f"{type(criterion).__name__} compares two views of one network: call select(views, model) without a target forward"
        )
    return online[0]


def _dcl(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    _refuse_gathered(criterion)
    z = _one_network(criterion, online, target)
    return dcl_pair_losses(z, pairs, float(criterion.temperature), criterion.weight_fn)


def _macl(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    z = _one_network(criterion, online, target)
    return macl_pair_losses(z, pairs, float(criterion.temperature), float(criterion.alpha), float(criterion.A_0), float(criterion.eps))


def _tico(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    """lightly's TiCo example: ``criterion(model(x0), model.forward_momentum(x1))``: z_a online, z_b
    momentum (or the online network for both without a target forward)."""
    _refuse_gathered(criterion)
    za = online[0]
    zb = target[0] if target is not None else za
    return tico_pair_losses(za, zb, pairs, float(criterion.beta), float(criterion.rho), criterion.C)


def _directclr(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    """NT-Xent on the first ``loss_dim`` dimensions of the flattened representation (DirectCLRLoss)."""
    d = int(criterion.loss_dim)

    def cut(outs: Optional[list]) -> Optional[list]:
        return None if outs is None else [o.flatten(2)[..., :d] for o in outs]

    return _ntxent(criterion, cut(online), cut(target), pairs)


def _invariance_proxy(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    """PROXY, not the loss: per-sample ``‖z_k − z_l‖² / D`` (VICReg's invariance term; for Barlow
    Twins a stand-in for its on-diagonal term)."""
    return invariance_proxy_pair_losses(_one_network(criterion, online, target), pairs)


def _register() -> None:
    from lightly.loss import DCLLoss, DCLWLoss, DirectCLRLoss, MACLLoss, TiCoLoss

    register_pair_loss(DCLLoss, _dcl)
    register_pair_loss(DCLWLoss, _dcl)  # a DCLLoss with its weight_fn (negative von Mises-Fisher weights)
    register_pair_loss(MACLLoss, _macl)
    register_pair_loss(TiCoLoss, _tico, ordered=True)  # asymmetric: the covariance term uses z_a only
    register_pair_loss(DirectCLRLoss, _directclr, ordered=_has_bank)  # before NTXentLoss in the MRO


_register()


_PROXY_HINT = (
    "{name} is not sample-decomposable (its variance/covariance or cross-correlation terms couple the batch), "
    "so HVS cannot select with its exact objective. HVSLoss(criterion, proxy=True) selects with the labelled "
    "invariance proxy (per-sample mean squared distance of the two embeddings; criterion.scoring == 'proxy'), "
    "or train without HVS.\n"
)
PROXY_LOSSES = ["BarlowTwinsLoss", "VICRegLoss"]


def _register_proxies() -> None:
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    for cls in (BarlowTwinsLoss, VICRegLoss):
        register_proxy(cls, _invariance_proxy, _PROXY_HINT.format(name=cls.__name__))


_register_proxies()
