"""APPROXIMATE pair scoring on an earlier layer's activations (the authors' cheaper option).

Instead of the host's loss on the network's outputs, a pair (k, l) of sample i is scored by the
cosine distance ``1 − cos(a_i^k, a_i^l)`` of the activations ``a`` (flattened) right after a named
module — e.g. a ResNet's ``conv1``, ``layer1``, ``layer2`` or ``avgpool`` (the pooled features) — and
the most distant pair wins. The forward stops right after that module (a forward hook raises a
private exception), so the layers behind it never run: cheaper, but it is not the host's objective,
so the selected pair can differ from the exact selection (``benchmarks/agreement.py`` measures how
often). Never a default; the adapters label it as approximate.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .devices import to_device
from .selection import Selection, Views


class _StopForward(Exception):
    """Raised by the hook after the score layer: ends the selection forward there."""


def layer_names(root: nn.Module) -> list[str]:
    """Names ``score_layer`` accepts for ``root`` (its submodules, ``root.named_modules()`` order)."""
    return [name for name, _ in root.named_modules() if name]


def resolve_layer(root: nn.Module, name: str) -> nn.Module:
    """``root``'s submodule called ``name`` (dotted path, e.g. ``'backbone.layer1'``), or a clear
    error listing the valid names."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"score_layer must be a module name such as 'backbone.layer1', got {name!r}")
    modules = dict(root.named_modules())
    if name not in modules:
        names = layer_names(root)
        shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        raise ValueError(f"score_layer={name!r} is not a module of {type(root).__name__}; valid names: {shown}")
    return modules[name]


@contextlib.contextmanager
def stop_after(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, a forward that reaches ``module`` records its output and stops there (raises
    :class:`_StopForward`, caught by :func:`layer_forward`). The hook is removed on exit."""
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: tuple, output) -> None:
        captured.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def layer_forward(forward: Callable[[torch.Tensor], object], root: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x: [B, C, H, W]`` → the activations after ``root.<name>``, flattened to ``[B, D]``,
    running ``forward`` (which must pass through that module) only up to there."""
    module = resolve_layer(root, name)

    def run(x: torch.Tensor) -> torch.Tensor:
        with stop_after(module) as captured:
            try:
                forward(x)
            except _StopForward:
                pass
        if not captured:
            raise ValueError(
                f"the selection forward never ran score_layer={name!r}: name a module that the model's "
                f"forward calls (valid names: {', '.join(layer_names(root)[:20])}, ...)"
            )
        out = captured[0]
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"score_layer={name!r} output is not a [B, ...] tensor batch")
        return out.flatten(1)

    return run


def cosine_distance_pair_losses(features: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """APPROXIMATE score: ``1 − cos(f_i^k, f_i^l)`` for every pair. ``features: [N, M, D]``,
    ``pairs: [P, 2]`` → ``[P, M]`` (higher = more dissimilar views = harder)."""
    if features.dim() != 3:
        raise ValueError(f"features must be [N views, M samples, D], got {list(features.shape)}")
    f = F.normalize(features.float(), dim=-1)
    k, l = to_device(pairs[:, 0], f.device), to_device(pairs[:, 1], f.device)
    return 1.0 - (f[k] * f[l]).sum(-1)


def select_by_layer(
    selector,
    forward: Callable[[torch.Tensor], object],
    views: Views,
    root: nn.Module,
    name: str,
    modules: Optional[Sequence[nn.Module]] = None,
) -> Selection:
    """APPROXIMATE selection with ``selector`` (a :class:`~hvs_plugins.HardViewSelector`: its
    resolution scale, chunking, autocast, generator): per sample the pair whose activations after
    ``root.<name>`` are the most cosine-distant. ``modules``: networks whose state the guard keeps
    (default ``[root]``)."""
    run = layer_forward(forward, root, name)
    with selector.scoring(list(modules) if modules is not None else [root]):
        (features,) = selector.forward_views(run, views, selector.n_views)
        losses = cosine_distance_pair_losses(features, selector.pairs)
    return selector.choose(losses)
