"""Which modules make a sample's output depend on the rest of the batch or on the RNG, and which
modules a forward actually ran.

One scan for all three adapters: target/teacher reuse (the selection's momentum outputs handed to
the training step) is exact only if no module the momentum forward runs is of that kind in its
current mode.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Union

from torch import nn


def breaks_per_sample(m: nn.Module) -> Optional[str]:
    """Why ``m`` in its current mode couples the samples of a batch or draws random numbers
    (``"BatchNorm2d"``, ``"Dropout, p=0.1"``, ``"DropPath, drop_prob=0.1"``, ...), or None.
    Covers BatchNorm in train mode and, in train mode with a rate > 0, dropout, attention dropout
    and drop-path / stochastic depth (timm, mmcv/mmpretrain, torchvision)."""
    if not m.training:
        return None
    kind = type(m).__name__
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return kind
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return f"{kind}, p={m.p}" if m.p > 0 else None
    if isinstance(m, nn.MultiheadAttention):
        return f"{kind}, dropout={m.dropout}" if m.dropout > 0 else None
    drop = getattr(m, "drop_prob", None)  # timm / mmcv / mmpretrain DropPath
    if isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop > 0:
        return f"{kind}, drop_prob={drop}"
    if kind == "StochasticDepth" and float(getattr(m, "p", 0.0)) > 0:  # torchvision
        return f"{kind}, p={m.p}"
    return None


def per_sample_violations(nets: Union[nn.Module, Sequence[nn.Module]], prefix: str = "") -> list[str]:
    """``"name (reason)"`` for every submodule of ``nets`` that :func:`breaks_per_sample`
    (names relative to each net, ``prefix`` put in front; a net itself is named by its class)."""
    roots = [nets] if isinstance(nets, nn.Module) else list(nets)
    found, seen = [], set()
    for root in roots:
        for name, m in root.named_modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            why = breaks_per_sample(m)
            if why is not None:
                found.append(f"{prefix}{name or type(root).__name__} ({why})")
    return found


@contextlib.contextmanager
def modules_run() -> Iterator[list[nn.Module]]:
    """Records every module called inside the block, in call order (a global forward pre-hook)."""
    seen: list[nn.Module] = []
    handle = nn.modules.module.register_module_forward_pre_hook(lambda mod, args: seen.append(mod))
    try:
        yield seen
    finally:
        handle.remove()


def ran_violations(ran: Sequence[nn.Module], names: Optional[dict[int, str]] = None) -> list[str]:
    """:func:`breaks_per_sample` over the modules a forward ran (from :func:`modules_run`), each
    once, as ``"name (reason)"`` (``names``: module id → name; else the class name)."""
    found: dict[int, str] = {}
    for m in ran:
        why = breaks_per_sample(m)
        if why is not None and id(m) not in found:
            found[id(m)] = f"{(names or {}).get(id(m), type(m).__name__)} ({why})"
    return list(found.values())
