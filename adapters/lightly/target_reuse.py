"""``HVSLoss.select(..., return_target_out=True)``: the momentum network's selection outputs of the
chosen views handed to the training step (BYOL, MoCo), like DINO's ``return_teacher_out``.

Reuse is exact only when the training step's momentum forward would compute the same values: the
selection at full resolution, on the views the step trains on, and a momentum network whose output
per sample depends neither on the rest of the batch nor on the RNG (no BatchNorm or dropout in train
mode, e.g. a ViT with LayerNorm heads, or a momentum network kept in eval mode). Anything else is
refused with the reason. The modules checked are those the target forward actually ran during the
selection (a global forward pre-hook records them), so an online network with BatchNorm does not
count against a BatchNorm-free momentum network.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch
from torch import nn

from hvs_plugins import modules_run, ran_violations  # noqa: F401 (modules_run: used by loss.py)


def check_target_reuse(hvs: Any, target: Optional[Callable], train_views: Any) -> None:
    """Before the selection: raise a ValueError naming the fix where reuse cannot be exact."""
    name = type(hvs.criterion).__name__
    if hvs.is_dino or hvs.method is not None:
        raise ValueError(
            f"return_target_out=True is for two-view losses with a momentum network; for {name} use return_teacher_out=True (DINO)"
        )
    if target is None:
        raise ValueError(
            f"return_target_out=True needs the momentum/target forward (select(views, model, "
            f"model.forward_momentum)); {name} was called without one"
        )
    if hvs.score_layer is not None:
        raise ValueError("return_target_out=True cannot be combined with score_layer: layer scoring does not run the target network")
    if hvs.selector.resolution_scale != 1.0:
        raise ValueError(
            f"return_target_out=True needs selection at full resolution (resolution_scale=1.0, got "
            f"{hvs.selector.resolution_scale}): the target outputs at reduced resolution are not the ones the "
            "training step would compute. Drop return_target_out or the resolution scale."
        )
    if train_views is not None:
        raise ValueError(
            "return_target_out=True scores and trains on the same views: drop train_views (the target "
            "outputs of the scoring views are not those of the training views)"
        )


def check_ran_modules(ran: list[nn.Module], names: dict[int, str]) -> None:
    """After the selection's target forward: refuse if a module it ran couples samples or draws
    random numbers in train mode (BatchNorm, dropout, drop-path with p > 0)."""
    found = ran_violations(ran, names)
    if found:
        raise ValueError(
            "return_target_out=True needs a momentum network whose output per sample does not depend on the batch "
            "or the RNG, so that its selection outputs equal those of the training step; in train mode it has: "
            f"{', '.join(found[:4])}{' ...' if len(found) > 4 else ''}. Call select without return_target_out and "
            "forward the momentum network on the selected views as before (or keep it in eval mode)."
        )


def watch_parameters(ran: list[nn.Module]) -> list[tuple[weakref.ref, int, int]]:
    """``(weak reference, version, data_ptr)`` of the parameters of the modules the target forward
    ran (weak: a deep copy of the loss keeps watching the same network)."""
    seen: dict[int, tuple[weakref.ref, int, int]] = {}
    for m in ran:
        for p in m.parameters(recurse=False):
            seen.setdefault(id(p), (weakref.ref(p), p._version, p.data_ptr()))
    return list(seen.values())


def refuse_stale_target(watch: list[tuple[weakref.ref, int, int]]) -> None:
    """At the loss call after ``select(return_target_out=True)``: the momentum network must not have
    changed since (lightly's ``update_momentum`` writes in place), else the reused outputs are stale."""
    params = [(ref(), v, ptr) for ref, v, ptr in watch]
    if any(p is not None and (p._version != v or p.data_ptr() != ptr) for p, v, ptr in params):
        raise ValueError(
            "return_target_out=True: the momentum network changed between select() and the loss (update_momentum "
            "ran after select), so the momentum outputs select() returned are those of the previous weights. Call "
            "select(..., return_target_out=True) after update_momentum, where the training step's momentum forward was."
        )


def chosen_target_outputs(target_out: list[torch.Tensor], chosen: torch.Tensor) -> tuple[Any, Any]:
    """Per slot j of ``chosen: [M, 2]``, the target outputs of the chosen view of every sample:
    ``target_out`` holds one ``[N, M, ...]`` tensor per output of the target forward; a slot gets a
    tensor ``[M, ...]`` (or a tuple of them for a forward with several outputs)."""
    m = torch.arange(chosen.shape[0], device=target_out[0].device)
    c = chosen.to(target_out[0].device)
    slots = []
    for j in range(2):
        outs = tuple(o[c[:, j], m] for o in target_out)
        slots.append(outs[0] if len(outs) == 1 else outs)
    return slots[0], slots[1]


def plain_target_outputs(target: Callable, x0: torch.Tensor, x1: torch.Tensor) -> tuple[Any, Any]:
    """Off-steps of the schedule: the target forward of the two plain views (no gradients)."""
    with torch.no_grad():
        return target(x0), target(x1)
