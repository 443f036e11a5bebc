"""Moving small index tensors between host and device without making the host wait."""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``. Host → device copies are non-blocking (safe from pageable memory: the
    source is staged before the call returns), so selection code never waits for the GPU; copies
    towards the host stay blocking, because a non-blocking device → host copy could be read before
    it has landed."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")
