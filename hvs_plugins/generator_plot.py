"""Figure of generated hard views (needs matplotlib: ``pip install hvs-plugins[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .plotting import _plt, _save


def plot_generated_views(
    inputs: torch.Tensor,
    generated: torch.Tensor,
    path: Union[str, Path],
    title: str = "Generated hard views",
) -> Path:
    """One row per image: input view, generated view, and the perturbation (amplified to the full
    grey range, grey = 0), with the realised mean |δ| in the title of each row.

    ``inputs``, ``generated``: ``[M, 3, H, W]`` in [0, 1] (denormalise first). Returns ``path``.
    """
    if inputs.shape != generated.shape or inputs.dim() != 4 or inputs.shape[1] not in (1, 3):
        raise ValueError(f"inputs and generated must both be [M, 3, H, W] in [0, 1], got {list(inputs.shape)} and {list(generated.shape)}")
    plt = _plt()
    x, g = inputs.detach().float().cpu(), generated.detach().float().cpu()
    delta = g - x
    m = x.shape[0]
    fig, axes = plt.subplots(m, 3, figsize=(4.8, 1.6 * m), squeeze=False)

    def show(ax, img: torch.Tensor, label: str) -> None:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=7)

    for i in range(m):
        d = delta[i]
        amp = d.abs().max().clamp_min(1e-12)
        show(axes[i][0], x[i], "input")
        show(axes[i][1], g[i], "generated")
        show(axes[i][2], 0.5 + 0.5 * d / amp, f"δ (mean |δ| {float(d.abs().mean()):.3f})")
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)
