"""Which per-sample pair loss HVS uses for a lightly loss class: the registry, and the built-in
two-view losses (NegativeCosineSimilarity: SimSiam, BYOL; NTXentLoss: SimCLR, MoCo).

``more_losses.py`` registers the other lightly losses and the labelled proxies into it; this module
imports nothing else of the adapter's, so the dependency runs one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from hvs_plugins import negative_cosine_pair_losses, ntxent_pair_losses

from .methods import METHOD_NAMES

# fn(criterion, online_outputs, target_outputs, pairs) -> [P, M]; outputs are lists of [N, M, ...]
PairLossFn = Callable[[nn.Module, list, Optional[list], torch.Tensor], torch.Tensor]


@dataclass
class PairLossSpec:
    """How HVS scores candidate pairs for one lightly loss class.

    ``fn(criterion, online, target, pairs) -> [P, M]``: ``online`` / ``target`` are lists (one entry
    per output of the forward) of stacked per-view outputs ``[N, M, ...]``; ``target`` is None when
    no target/momentum forward was passed. ``ordered``: score ordered pairs (k → l and l → k
    separately; asymmetric losses such as MoCo's query/key). ``pair_losses[p].mean()`` must equal
    the loss of the training step on pair p.
    """

    fn: PairLossFn
    ordered: Union[bool, Callable[[nn.Module], bool]] = False

    def is_ordered(self, criterion: nn.Module) -> bool:
        return bool(self.ordered(criterion)) if callable(self.ordered) else bool(self.ordered)


_REGISTRY: dict[type, PairLossSpec] = {}


def register_pair_loss(loss_cls: type, fn: PairLossFn, ordered: Union[bool, Callable[[nn.Module], bool]] = False) -> None:
    """Teach HVS a custom (or unsupported lightly) loss class: ``fn(criterion, online, target, pairs)``
    returns the per-sample loss of every pair ``[P, M]`` (see :class:`PairLossSpec`)."""
    if not isinstance(loss_cls, type):
        raise TypeError(f"register_pair_loss needs a loss class, got {loss_cls!r}")
    _REGISTRY[loss_cls] = PairLossSpec(fn, ordered)


def supported_losses() -> list[str]:
    return sorted({c.__name__ for c in _REGISTRY} | {"DINOLoss", *METHOD_NAMES})


_HOW_TO_REGISTER = """\
To use HVS with another loss, register its per-sample pair loss:

    from hvs_plugins.adapters.lightly import register_pair_loss

    def my_pair_loss(criterion, online, target, pairs):
        # online[0]: [N views, M samples, D] outputs of model(x) for every candidate view
        # (target: the same for the momentum/teacher forward, or None); pairs: [P, 2]
        z = online[0]
        return ((z[pairs[:, 0]] - z[pairs[:, 1]]) ** 2).sum(-1)   # [P, M]: per-sample loss of each pair

    register_pair_loss({name}, my_pair_loss)

Its mean over samples must equal your loss on that pair (HVS picks, per sample, the pair with
the highest value)."""


@dataclass
class ProxyPairLossSpec(PairLossSpec):
    """A pair loss that is a labelled proxy, not the host's loss (``HVSLoss.scoring == 'proxy'``)."""

    proxy: bool = True


# loss class -> (proxy spec, what to say when proxy=True was not given); more_losses.py registers
_PROXIES: dict[type, tuple[ProxyPairLossSpec, str]] = {}


def register_proxy(loss_cls: type, fn: PairLossFn, hint: str) -> None:
    """A labelled proxy for a loss without a per-sample form, used with ``HVSLoss(proxy=True)``."""
    _PROXIES[loss_cls] = (ProxyPairLossSpec(fn), hint)


def lookup(criterion: nn.Module, proxy: bool = False) -> PairLossSpec:
    mro = type(criterion).__mro__
    for cls in mro:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    hint = ""
    for cls in mro:
        if cls in _PROXIES:
            if proxy:
                return _PROXIES[cls][0]
            hint = _PROXIES[cls][1]
            break
    name = type(criterion).__name__
    raise NotImplementedError(
        f"HVS has no per-sample loss for {name}. Supported lightly losses: "
        f"{', '.join(supported_losses())}.\n" + hint + _HOW_TO_REGISTER.format(name=name)
    )


# ---------------------------------------------------------------- built-in per-sample pair losses
def _negative_cosine(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    if target is not None:  # BYOL: online forward -> p, momentum forward -> z
        return negative_cosine_pair_losses(online[-1], target[0], pairs)
    if len(online) != 2:
        raise ValueError(
            "NegativeCosineSimilarity without a target network (SimSiam) needs model(x) to return "
            f"(z, p) like lightly's SimSiam example; it returned {len(online)} tensor(s). For BYOL "
            "pass the momentum forward too: select(views, model, model.forward_momentum)."
        )
    z, p = online
    return negative_cosine_pair_losses(p, z, pairs)


def _ntxent(criterion: nn.Module, online: list, target: Optional[list], pairs: torch.Tensor) -> torch.Tensor:
    temperature = float(criterion.temperature)
    bank_module = getattr(criterion, "memory_bank", None)
    size = getattr(bank_module, "size", (0,))
    if bank_module is not None and size and size[0] > 0:  # MoCo: negatives from the bank (read only)
        bank = bank_module.bank
        if bank.dim() != 2 or bank.shape[0] == 0:
            raise ValueError("NTXentLoss memory bank is not initialised as [K, D]: create it with memory_bank_size=(K, D) (lightly >= 1.5)")
        if bank.shape[1] != online[0].shape[-1] and bank.shape[0] == online[0].shape[-1]:
            bank = bank.t()
        if target is None:  # the keys would silently come from the online network
            raise ValueError(
                f"{type(criterion).__name__} with a memory bank (MoCo) compares each query with the key of the momentum "
                "network, but select() got no momentum forward: call select(views, model, model.forward_momentum) "
                "(the forward that makes the keys of your training step). If your keys do come from the online "
                "network (no momentum encoder), pass it as the target: select(views, model, model)."
            )
        keys = target[0]
        return ntxent_pair_losses(online[0], pairs, temperature, keys=keys, memory_bank=bank, symmetric=False)
    if target is not None:
        raise ValueError("NTXentLoss without a memory bank (SimCLR) uses one network: call select(views, model) without a target forward")
    z = online[0]
    if getattr(criterion, "gather_distributed", False) and torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            parts = [torch.empty_like(z) for _ in range(world)]
            torch.distributed.all_gather(parts, z.contiguous())
            rank = torch.distributed.get_rank()
            return ntxent_pair_losses(z, pairs, temperature, all_embeddings=torch.cat(parts, 1), offset=rank * z.shape[1])
    return ntxent_pair_losses(z, pairs, temperature)


def _has_bank(criterion: nn.Module) -> bool:
    size = getattr(getattr(criterion, "memory_bank", None), "size", (0,))
    return bool(size) and size[0] > 0


def _register_builtins() -> None:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss

    register_pair_loss(NegativeCosineSimilarity, _negative_cosine)
    register_pair_loss(NTXentLoss, _ntxent, ordered=_has_bank)


_register_builtins()
