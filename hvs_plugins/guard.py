"""Side-effect guard for the selection forward.

Inside :func:`preserve_state`, BatchNorm layers in train mode normalise with batch statistics
but do not touch ``running_mean``/``running_var``/``num_batches_tracked`` (their
``track_running_stats`` is switched off for the duration: no copies needed). Every other buffer
(centers, queues, ...) is snapshotted and restored if anything wrote to it or replaced it.
Parameters must not change: a parameter written during selection raises. The global CPU/CUDA
RNG states are restored too, so dropout in the selection forward does not shift training's
random stream.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _unique_modules(modules: Sequence[nn.Module]) -> list[nn.Module]:
    seen: dict[int, nn.Module] = {}
    for root in modules:
        if not isinstance(root, nn.Module):
            raise TypeError(f"preserve_state takes nn.Module objects, got {type(root).__name__}")
        for mod in root.modules():
            seen.setdefault(id(mod), mod)
    return list(seen.values())


@contextlib.contextmanager
def preserve_state(modules: Sequence[nn.Module], rng: bool = True) -> Iterator[None]:
    """Run the body without lasting changes to the buffers, parameters and RNG of ``modules``."""
    mods = _unique_modules(modules)
    bns = [m for m in mods if isinstance(m, _BatchNorm) and m.track_running_stats]
    bn_ids = {id(m) for m in bns}
    saved_buffers = []  # (module, name, tensor object, version, copy)
    for mod in mods:
        for name, buf in mod._buffers.items():
            if buf is None or id(mod) in bn_ids:
                continue
            saved_buffers.append((mod, name, buf, buf._version, buf.detach().clone()))
    params = [(mod, name, p, p._version) for mod in mods for name, p in mod._parameters.items() if p is not None]
    rng_ctx = (
        torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else [])
        if rng
        else contextlib.nullcontext()
    )
    for bn in bns:
        bn.track_running_stats = False
    try:
        with rng_ctx:
            yield
    finally:
        for bn in bns:
            bn.track_running_stats = True
        for mod, name, buf, version, copy in saved_buffers:
            if mod._buffers.get(name) is not buf:
                mod._buffers[name] = buf
            if buf._version != version:
                with torch.no_grad():
                    buf.copy_(copy)
        changed = [name for mod, name, p, v in params if p._version != v or mod._parameters.get(name) is not p]
        if changed:
            raise RuntimeError(
                f"parameters were modified during the HVS selection forward ({changed[:5]}...): the "
                "forward passed to the selector must not update weights (call the model's forward, "
                "not its training step)"
            )
