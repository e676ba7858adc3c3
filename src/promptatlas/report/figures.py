"""Shared figure helpers: a headless matplotlib backend, consistent styling, atomic PNG writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never needs a display

import matplotlib.pyplot as plt
import numpy as np

from promptatlas.io import atomic_file

__all__ = ["annotated_heatmap", "save_figure", "subplots"]


def subplots(nrows: int, ncols: int, *, panel: tuple[float, float] = (3.5, 3.0)) -> tuple[Any, Any]:
    """A figure of ``nrows × ncols`` panels of size ``panel`` inches; axes always 2-D."""
    fig, axes = plt.subplots(
        max(nrows, 1),
        max(ncols, 1),
        figsize=(panel[0] * max(ncols, 1), panel[1] * max(nrows, 1)),
        squeeze=False,
        constrained_layout=True,
    )
    return fig, axes


def annotated_heatmap(
    ax: Any,
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    limit: float | None = None,
    fmt: str = "{:.2f}",
    cmap: str = "RdBu",
    diverging: bool = True,
) -> Any:
    """A heatmap with each cell's value written in it (missing cells = NaN, left blank).

    diverging: colour scale symmetric around 0 (``limit`` = the largest |value| shown)."""
    data = np.ma.masked_invalid(np.asarray(values, dtype=float))
    if diverging:
        lim = (
            limit
            if limit
            else float(np.nanmax(np.abs(values)))
            if np.isfinite(values).any()
            else 1.0
        )
        lim = lim or 1.0
        image = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
    else:
        image = ax.imshow(data, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    norm = image.norm
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            shade = norm(v)
            colour = "white" if (diverging and abs(shade - 0.5) > 0.3) else "black"
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color=colour)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return image


def save_figure(fig: Any, path: str | Path, *, dpi: int = 130) -> Path:
    """Save as PNG through a temp file + rename (never a half-written figure), then close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
