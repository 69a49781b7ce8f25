"""Pictures of masks for the book and the exercises (needs matplotlib, imported lazily)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _panels(arrays, titles, what: str):
    """The arrays squeezed to 2-D, checked: at least one, each 2-D, one title per array."""
    arrays = [np.squeeze(np.asarray(m, dtype=float)) for m in arrays]
    if not arrays:
        raise ValueError(f"{what} must hold at least one array")
    for m in arrays:
        if m.ndim != 2:
            raise ValueError(f"each {what[:-1]} must squeeze to 2-D, got shape {m.shape}")
    if titles is not None and len(titles) != len(arrays):
        raise ValueError(f"titles must have one entry per {what[:-1]} ({len(arrays)}), "
                         f"got {len(titles)}")
    return arrays


def show_masks(masks: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, *,
               ncols: Optional[int] = None, size: float = 2.2, cmap: str = "gray",
               suptitle: Optional[str] = None, grid: bool = True):
    """Draw 2-D masks side by side (kept = white, dropped = black) and return the figure.

    Each mask is squeezed to 2-D; pass ``mask[0, 0]`` or similar for batched masks.
    """
    plt = _plt()
    masks = _panels(masks, titles, "masks")
    n = len(masks)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        m = masks[k]
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if grid and max(m.shape) <= 32:
            ax.set_xticks(np.arange(-0.5, m.shape[1], 1), minor=True)
            ax.set_yticks(np.arange(-0.5, m.shape[0], 1), minor=True)
            ax.grid(which="minor", color="tab:gray", linewidth=0.4)
            ax.tick_params(which="minor", length=0)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_heatmap(values: np.ndarray, title: str = "", *, cmap: str = "viridis",
                 colorbar_label: str = "", annotate: bool = False, fmt: str = "{:.3f}", ax=None):
    """Draw a 2-D array as a heat map with a colour bar; returns the axes."""
    plt = _plt()
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D array, got shape {values.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.5))
    im = ax.imshow(values, cmap=cmap, interpolation="nearest")
    cbar = ax.figure.colorbar(im, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="w")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def show_images(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, *,
                ncols: Optional[int] = None, size: float = 2.2, cmap: str = "viridis",
                vmin: Optional[float] = None, vmax: Optional[float] = None,
                suptitle: Optional[str] = None, colorbar: bool = False):
    """Draw 2-D arrays of any values side by side on one shared colour scale; returns the figure.

    Unlike :func:`show_masks` (0/1 masks), this is for feature maps and dropout outputs. The
    colour scale is shared so that a zeroed region and a scaled survivor are comparable across
    panels; ``vmin``/``vmax`` default to the smallest and largest value over all images.
    """
    plt = _plt()
    images = _panels(images, titles, "images")
    lo = min(float(m.min()) for m in images) if vmin is None else vmin
    hi = max(float(m.max()) for m in images) if vmax is None else vmax
    n = len(images)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        im = ax.imshow(images[k], cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if colorbar and im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return fig
