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


def _save(plt, fig, path: Union[str, Path]) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_candidates(images: torch.Tensor, chosen: torch.Tensor, path: Union[str, Path], title: str = "HVS: selected pair (red)") -> Path:
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
    return _save(plt, fig, path)


def plot_iou_histograms(series: dict[str, Sequence[float]], path: Union[str, Path], title: str = "IoU of training pairs") -> Path:
    """Overlaid IoU histograms, e.g. ``{"HVS selected": ..., "random pair": ...}`` (paper Fig. 3)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, values in series.items():
        ax.hist(list(values), bins=20, range=(0, 1), alpha=0.55, density=True, label=label)
    ax.set_xlabel("IoU of the two crops")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return _save(plt, fig, path)


def _band(runs: Sequence[Sequence[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs where every run has ``key``, the mean and the std over runs."""
    import statistics

    epochs = [h["epoch"] for h in runs[0] if all(len(r) >= h["epoch"] and r[h["epoch"] - 1].get(key) is not None for r in runs)]
    vals = [[r[e - 1][key] for r in runs] for e in epochs]
    mean = [statistics.mean(v) for v in vals]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
    return epochs, mean, std


def plot_training_curves(
    series: dict[str, Sequence[Sequence[dict]]],
    path: Union[str, Path],
    random_fraction: float = 1 / 6,
    title: str = "",
) -> Path:
    """Per-epoch curves, baseline vs HVS (paper Fig. 3 left and Fig. 4 left), mean ± std over seeds.

    ``series``: label → one history per seed; a history is a list of per-epoch dicts with
    ``epoch`` and any of ``knn``, ``lowest_iou_fraction``, ``mean_trained_iou``. Panels: kNN
    accuracy, lowest-IoU fraction of the selected pairs (the dotted line: a random pair), mean IoU
    of the trained pairs."""
    plt = _plt()
    panels = [("knn", "kNN accuracy"), ("lowest_iou_fraction", "lowest-IoU fraction"), ("mean_trained_iou", "mean IoU of trained pairs")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, panels):
        for i, (name, runs) in enumerate(series.items()):
            runs = [r for r in runs if r]
            if not runs:
                continue
            epochs, mean, std = _band(runs, key)
            if not epochs:
                continue
            colour = f"C{i}"  # a series keeps its colour in every panel
            ax.plot(epochs, mean, marker="o" if len(epochs) < 12 else None, ms=3, label=name, color=colour)
            if len(runs) > 1:
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour, alpha=0.2)
        if key == "lowest_iou_fraction":
            ax.axhline(random_fraction, ls=":", color="gray", label="random pair")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)
