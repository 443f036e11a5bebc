"""Fallback warnings without a host-device synchronisation.

Reading how many samples fell back (``int(fallback.sum())``) makes the CPU wait for the GPU. With
statistics switched off, the adapters hand the ``fallback: [M]`` mask of each selection to
:class:`DeferredFallbackWarnings` instead: on CUDA its count is copied to pinned host memory without
waiting, and the warning is issued at a later call, once the copy has landed (an event query, no
wait). Host tensors are counted and warned about at once, as :func:`warn_fallbacks` does.
"""

from __future__ import annotations


import torch

from .selection import warn_fallback_count, warn_fallbacks


class DeferredFallbackWarnings:
    """Queue of ``(count, n_samples, what, event)`` for device fallback masks not yet read back."""

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, int, str, torch.cuda.Event]] = []

    def push(self, fallback: torch.Tensor, what: str = "pair loss") -> None:
        """Record ``fallback: [M]`` (bool) of one selection; warns for earlier ones that are ready."""
        self.poll()
        if fallback.device.type != "cuda":
            warn_fallbacks(fallback, what, stacklevel=4)
            return
        count = torch.empty((), dtype=torch.long, pin_memory=True)
        count.copy_(fallback.sum(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((count, fallback.numel(), what, event))

    def poll(self, wait: bool = False) -> int:
        """Warn for every recorded selection whose count has arrived (all of them with ``wait``,
        which synchronises); returns the number of fallback samples warned about."""
        total, still = 0, []
        for count, n, what, event in self._pending:
            if wait:
                event.synchronize()
            if event.query():
                total += warn_fallback_count(int(count), n, what, stacklevel=4)  # pinned host memory: no sync
            else:
                still.append((count, n, what, event))
        self._pending = still
        return total

    def __len__(self) -> int:
        return len(self._pending)
