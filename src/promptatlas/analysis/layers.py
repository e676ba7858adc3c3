"""Layer selection for v2 compression (thesis §5.3.2, Table 3).

The thesis reads the per-layer KL curve of the attention change: its local peaks
{1, 7, 9, …, 21} and troughs {2, 8, …, 22} of mGPT (24 layers). The *peak group* is the
first layer (the input layer), the last four layers (task-specific) and the peaks; the
*trough group* the same fixed layers and the troughs; each group is half the layers:

    peak   = {0, 1, 7, 9, 11, 13, 15, 17, 20, 21, 22, 23}
    trough = {0, 2, 8, 10, 12, 14, 16, 18, 20, 21, 22, 23}

Here the number of kept last layers scales with depth (``round(L / 6)``: 4 of 24, 3 of 18)
and, with ``size``, each group is trimmed or filled to a fixed size (by KL rank: the
strongest peaks first, then other layers by descending KL; troughs symmetrically), never
taking the other group's extrema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["LayerSelection", "default_kept_last", "local_extrema", "select_layers"]


@dataclass(frozen=True)
class LayerSelection:
    peak: list[int]  # layers of the peak group (sorted)
    trough: list[int]  # layers of the trough group (sorted)
    peaks: list[int]  # strict local maxima of the curve (interior layers)
    troughs: list[int]  # strict local minima
    kept: list[int]  # layers in both groups (first and last layers)
    curve: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_kept_last(n_layers: int) -> int:
    """How many last layers both groups keep: 4 of 24 as in the thesis, scaled (≥ 1)."""
    return max(1, round(n_layers / 6))


Curve = Sequence[float] | np.ndarray | torch.Tensor


def local_extrema(curve: Curve) -> tuple[list[int], list[int]]:
    """Strict interior local maxima and minima of a per-layer curve. A flat run counts as one
    extremum (its first layer) when both sides are lower (or higher)."""
    values = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, float)
    peaks: list[int] = []
    troughs: list[int] = []
    n = len(values)
    i = 1
    while i < n - 1:
        j = i
        while j + 1 < n - 1 and values[j + 1] == values[i]:
            j += 1  # plateau i..j
        left, right = values[i - 1], values[j + 1]
        if values[i] > left and values[i] > right:
            peaks.append(i)
        elif values[i] < left and values[i] < right:
            troughs.append(i)
        i = j + 1
    return peaks, troughs


def select_layers(
    curve: Curve,
    *,
    keep_first: int = 1,
    keep_last: int | None = None,
    size: int | None = None,
) -> LayerSelection:
    """Peak and trough layer groups from a per-layer curve (e.g. the mean KL per layer).

    ``keep_first`` first and ``keep_last`` last layers (default :func:`default_kept_last`) are
    in both groups. ``size`` (e.g. ``n_layers // 2`` as in the thesis) trims or fills each
    group to that many layers."""
    values = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, float)
    n = len(values)
    if n < 1 or not np.all(np.isfinite(values)):
        raise ValueError("the curve must be a non-empty sequence of finite values")
    last = default_kept_last(n) if keep_last is None else keep_last
    if keep_first < 0 or last < 0:
        raise ValueError("keep_first and keep_last must be ≥ 0")
    kept = sorted(set(range(min(keep_first, n))) | set(range(max(0, n - last), n)))
    maxima, minima = local_extrema(values)
    middle = [i for i in range(n) if i not in kept]
    peaks = [i for i in maxima if i in middle]
    troughs = [i for i in minima if i in middle]

    def group(own: list[int], other: list[int], descending: bool) -> list[int]:
        if size is None:
            return sorted(set(kept) | set(own))
        sign = -1.0 if descending else 1.0
        rank = sorted(own, key=lambda i: sign * values[i])
        rank += sorted(
            (i for i in middle if i not in own and i not in other), key=lambda i: sign * values[i]
        )
        room = max(0, size - len(kept))
        return sorted(set(kept) | set(rank[:room]))

    return LayerSelection(
        peak=group(peaks, troughs, descending=True),
        trough=group(troughs, peaks, descending=False),
        peaks=peaks,
        troughs=troughs,
        kept=kept,
        curve=[float(v) for v in values],
    )
