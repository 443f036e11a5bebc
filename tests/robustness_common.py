"""Shared by the robustness tests (tests/test_robustness*.py): which hosts are installed, the skip
markers naming how to install them, the messages the bad-input cases expect, candidate views."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

HAS = {m: importlib.util.find_spec(m) is not None for m in ("lightly", "pytorch_lightning", "solo", "mmselfsup")}
HELPERS = Path(__file__).resolve().parent / "_dist_helpers"
M = 6

needs_lightly = pytest.mark.skipif(not HAS["lightly"], reason="lightly not installed (pip install 'hvs-plugins[lightly]')")
needs_lightning = pytest.mark.skipif(not (HAS["lightly"] and HAS["pytorch_lightning"]), reason="lightly / pytorch_lightning not installed")
needs_mmselfsup = pytest.mark.skipif(not HAS["mmselfsup"], reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")
needs_solo = pytest.mark.skipif(
    not HAS["solo"],
    reason="solo-learn is not installed (no usable registry build); to run these: "
    "HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test "
    "(or HVS_SOLO_LEARN_SRC=<a solo-learn folder or .tar.gz>)",
)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def views_of(n: int = 4, m: int = M, size: int = 16, seed: int = 0, sizes=None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [size] * n
    return [torch.randn(m, 3, s, s, generator=g) for s in sizes]


EMPTY = r"HVS got an empty batch \(0 samples in a candidate view\).*drop_last=True"
NOT_TENSOR = r"candidate view 0 is a str, not a torch\.Tensor: HVS needs the N candidate views as tensors"
ONE_SAMPLE_FALLBACK = (
    r"HVS could not score a batch \(a batch of 1 sample, and BatchNorm in train mode \(.*\) cannot "
    r"normalise a single sample\); it trains on a plain random pair instead.*drop_last=True"
)
