"""Shared fixtures: the ``device`` parametrisation (``cpu`` always, ``cuda`` when available) and a
``no_sync`` check for the CUDA leg."""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cuda: the CUDA leg of a device test (deselected where no GPU is present)")
    config.addinivalue_line("markers", "cuda_only: a device test with nothing to check on the CPU (its cpu leg is deselected)")


def pytest_collection_modifyitems(config, items) -> None:
    """Without a GPU the cuda legs are deselected, not skipped (the summary line stays at 0
    skipped for what cannot run on this machine by design); the header and the summary say so."""
    keep, drop = [], []
    for item in items:
        dev = getattr(getattr(item, "callspec", None), "params", {}).get("device")
        cuda_leg = dev == "cuda" or item.get_closest_marker("cuda") is not None
        cpu_leg_of_cuda_only = dev == "cpu" and item.get_closest_marker("cuda_only") is not None
        (drop if (cuda_leg and not CUDA) or cpu_leg_of_cuda_only else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config.stash[_DESELECTED] = len(drop)


_DESELECTED = pytest.StashKey[int]()


def pytest_report_header(config) -> str:
    return "cuda legs: " + (
        "run (a CUDA device is present)"
        if CUDA
        else "deselected (torch.cuda.is_available() is False); they run on a GPU machine (benchmarks/gpu/run.py)"
    )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    n = config.stash.get(_DESELECTED, 0)
    if n:
        terminalreporter.write_line(
            f"{n} device-test legs deselected: {'no CUDA device here, ' if not CUDA else ''}cuda legs need a GPU "
            "and cuda-only checks (host-device sync) have no cpu leg"
        )


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
