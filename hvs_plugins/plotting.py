"""Figures (needs matplotlib: ``pip install hvs-plugins[plot]``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'hvs-plugins[plot]'") from err
    return plt


def plot_candidates(
    images: torch.Tensor, chosen: torch.Tensor, path: Union[str, Path], title: str = "HVS: selected pair (red)"
) -> Path:
    """Grid of candidate views, one row per sample, the selected pair framed in red (paper Fig. 2).

    ``images: [M, N, 3, H, W]`` in [0, 1]; ``chosen: [M, 2]`` selected view indices.
    """
    plt = _plt()
    m, n = images.shape[:2]
    fig, axes = plt.subplots(m, n, figsize=(1.6 * n, 1.6 * m), squeeze=False)
    for i in range(m):
        for v in range(n):
            ax = axes[i][v]
            ax.imshow(images[i, v].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            picked = v in chosen[i].tolist()
            for spine in ax.spines.values():
                spine.set_edgecolor("red" if picked else "lightgray")
                spine.set_linewidth(4 if picked else 1)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_iou_histograms(
    series: dict[str, Sequence[float]], path: Union[str, Path], title: str = "IoU of training pairs"
) -> Path:
    """Overlaid IoU histograms, e.g. ``{"HVS selected": ..., "random pair": ...}`` (paper Fig. 3)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, values in series.items():
        ax.hist(list(values), bins=20, range=(0, 1), alpha=0.55, density=True, label=label)
    ax.set_xlabel("IoU of the two crops")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
