"""Timing and peak-memory helpers of ``bench.py`` (interleaved medians, CUDA sync, peak RSS / CUDA memory)."""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* modules
if importlib.util.find_spec("hvs_plugins") is None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # not installed: the core from the checkout (an installed copy wins)


# ----------------------------------------------------------------------------- timing / memory helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = {"name": "wall"}  # "cpu": process CPU time (all threads), robust on a shared, loaded CPU


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    return timed2(fn, device)[CLOCK["name"] == "cpu"]


def timed2(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn``."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def micro(fn: Callable[[], Any], device: torch.device, min_runs: int = 5, budget_s: float = 0.3) -> float:
    """Median seconds of ``fn`` (small core calls)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 200):
        times.append(timed(fn, device))
    return statistics.median(times)


class PeakMemory:
    """Peak memory of one call. CUDA: max_memory_allocated. CPU (Linux): VmHWM after a reset via
    /proc/self/clear_refs; glibc's mmap threshold is pinned to 64 KiB first (mallopt) so that large
    tensors are mmapped and given back on free (otherwise freed heap memory stays resident and the
    peak of one step hides inside the previous one's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.available = device.type == "cuda" or (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs"))
        self.note = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM), glibc mmap threshold 64 KiB"
        self._pinned = False

    def _pin(self) -> None:
        if self._pinned or self.device.type == "cuda":
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixes it: no dynamic growth)
            libc.malloc_trim(0)
            self._libc = libc
        except OSError:
            self.available = False
        self._pinned = True

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def measure(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """Returns (peak bytes during ``fn``, peak minus the memory in use before it)."""
        self._pin()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return float(peak), float(peak - before)
        self._libc.malloc_trim(0)
        before = self._status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        peak = self._status("VmHWM")
        return float(peak), float(peak - before)
