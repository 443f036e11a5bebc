"""Side-effect guard for the selection forward.

Inside :func:`preserve_state`, BatchNorm layers in train mode normalise with batch statistics
but do not touch ``running_mean``/``running_var``/``num_batches_tracked`` (their
``track_running_stats`` is switched off for the duration: no copies needed). Every other buffer
(centers, queues, ...) is snapshotted and restored if anything wrote to it or replaced it.
Parameters must not change: a parameter written during selection raises. The global CPU/CUDA
RNG states are restored too, so dropout in the selection forward does not shift training's
random stream.

The modules guarded are those passed in AND every module that runs inside the block (a global
forward pre-hook guards each the first time it is called, before its forward runs), so a forward
given as a plain function or lambda is protected too; passing the modules is an optimisation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _Guard:
    """The state of every module added (with its submodules), restored by :meth:`restore`."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bns: list[_BatchNorm] = []
        self.buffers: list[tuple] = []  # (module, name, tensor object, version, copy)
        self.params: list[tuple] = []  # (module, name, parameter, version)

    def add(self, root: nn.Module) -> None:
        if id(root) in self.seen:  # the hot path: called before every module's forward
            return
        for mod in root.modules():
            if id(mod) in self.seen:
                continue
            self.seen.add(id(mod))
            is_bn = False
            if isinstance(mod, _BatchNorm) and mod.track_running_stats:
                is_bn = True
                mod.track_running_stats = False
                self.bns.append(mod)
            for name, buf in mod._buffers.items():
                if buf is not None and not is_bn:
                    self.buffers.append((mod, name, buf, buf._version, buf.detach().clone()))
            self.params += [(mod, name, p, p._version) for name, p in mod._parameters.items() if p is not None]

    def restore(self) -> None:
        for bn in self.bns:
            bn.track_running_stats = True
        for mod, name, buf, version, copy in self.buffers:
            if mod._buffers.get(name) is not buf:
                mod._buffers[name] = buf
            if buf._version != version:
                with torch.no_grad():
                    buf.copy_(copy)
        changed = [name for mod, name, p, v in self.params if p._version != v or mod._parameters.get(name) is not p]
        if changed:
            raise RuntimeError(
                f"parameters were modified during the HVS selection forward ({changed[:5]}...): the "
                "forward passed to the selector must not update weights (call the model's forward, "
                "not its training step)"
            )


@contextlib.contextmanager
def preserve_state(modules: Sequence[nn.Module], rng: bool = True, track_run: bool = True) -> Iterator[None]:
    """Run the body without lasting changes to the buffers, parameters and RNG of ``modules`` and,
    with ``track_run`` (default), of every module called inside the body."""
    guard = _Guard()
    for root in modules:
        if not isinstance(root, nn.Module):
            raise TypeError(f"preserve_state takes nn.Module objects, got {type(root).__name__}")
        guard.add(root)
    rng_ctx = (
        torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else [])
        if rng
        else contextlib.nullcontext()
    )
    handle = nn.modules.module.register_module_forward_pre_hook(lambda mod, args: guard.add(mod)) if track_run else None
    try:
        with rng_ctx:
            yield
    finally:
        if handle is not None:
            handle.remove()
        guard.restore()
