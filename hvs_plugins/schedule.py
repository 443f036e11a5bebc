"""When to apply HVS: every k-th step, with probability p, from epoch e on (cost knobs).

On steps where HVS is off, the host trains on two of the candidates drawn at random (the first
two: candidates are i.i.d. draws of the host's augmentation, so that is a plain random pair).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class HVSSchedule:
    """``every``: apply on steps ``step % every == 0``; ``probability``: then apply with this
    probability (drawn from the schedule's own generator, never the global RNG); ``start_epoch``:
    no HVS before this epoch."""

    every: int = 1
    probability: float = 1.0
    start_epoch: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an int >= 1 (1 = every step), got {self.every!r}")
        if not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability!r}")
        if isinstance(self.start_epoch, bool) or not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise ValueError(f"start_epoch must be an int >= 0, got {self.start_epoch!r}")
        self._generator: Optional[torch.Generator] = None

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def active(self, step: int, epoch: int = 0) -> bool:
        """Whether HVS runs at global ``step`` of ``epoch``."""
        if epoch < self.start_epoch or step % self.every:
            return False
        if self.probability >= 1.0:
            return True
        return bool(torch.rand((), generator=self.generator) < self.probability)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
