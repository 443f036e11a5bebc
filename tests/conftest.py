"""Shared fixtures: the ``device`` parametrisation (``cpu`` always, ``cuda`` when available) and a
``no_sync`` check for the CUDA leg."""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import pytest
import torch

NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False): the cuda leg runs on a GPU machine"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]


@pytest.fixture(params=DEVICES)
def device(request) -> Iterator[torch.device]:
    """``torch.device('cpu')``, then ``torch.device('cuda')`` where a GPU is present. On CUDA,
    TF32 is switched off for the test, so that comparisons with float32 references stay tight."""
    dev = torch.device(request.param)
    if dev.type != "cuda":
        yield dev
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield dev
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        torch.cuda.synchronize()


@pytest.fixture
def no_sync() -> Callable[[torch.device], ContextManager[None]]:
    """``with no_sync(device): ...`` raises on any host-device synchronisation inside (CUDA:
    ``torch.cuda.set_sync_debug_mode('error')``); a no-op on the CPU."""

    @contextlib.contextmanager
    def check(device: torch.device) -> Iterator[None]:
        if device.type != "cuda":
            yield
            return
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    return check
