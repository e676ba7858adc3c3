"""PCA of soft prompts (thesis §5.2.1, Figures 10-15).

Each prompt contributes its k position vectors as points. v1 prompts give one panel (vectors
in the model's embedding space); v2 prompts give one panel per layer with a prefix (vectors in
the key/value space; with separate key and value prefixes a point is the concatenation
[key, value] of one position). The PCA is fitted on the points of all prompts of a panel
together, so coordinates are comparable across prompts (colour = task, marker = language is
the figure's business).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = ["PcaPanel", "pca_points", "prompt_pca", "prompt_points"]

Points = torch.Tensor | np.ndarray


@dataclass
class PcaPanel:
    """One PCA fit: ``coords[name]`` is (n_points, n_components) for each prompt."""

    layer: int | None  # None for v1 (or for a free-form set of points)
    names: list[str]
    coords: dict[str, np.ndarray]
    explained_variance_ratio: np.ndarray  # (n_components,)
    explained_variance: np.ndarray  # (n_components,)


def _array(x: Points) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().double().numpy())
    return np.asarray(x, dtype=float)


def pca_points(
    points: Mapping[str, Points], *, n_components: int = 2, layer: int | None = None
) -> PcaPanel:
    """Fit a PCA on the union of ``points`` (each (n_i, d)) and project every set."""
    from sklearn.decomposition import PCA

    if not points:
        raise ValueError("no points")
    arrays = {name: _array(p) for name, p in points.items()}
    dims = {a.shape[1] for a in arrays.values() if a.ndim == 2}
    if len(dims) != 1 or any(a.ndim != 2 for a in arrays.values()):
        raise ValueError("every point set must be a (n, d) array with the same d")
    stacked = np.concatenate(list(arrays.values()), axis=0)
    k = min(n_components, stacked.shape[0], stacked.shape[1])
    if k < 1:
        raise ValueError("PCA needs at least one point")
    pca = PCA(n_components=k, svd_solver="full")
    projected = pca.fit_transform(stacked)
    coords: dict[str, np.ndarray] = {}
    start = 0
    for name, a in arrays.items():
        coords[name] = projected[start : start + len(a)]
        start += len(a)
    return PcaPanel(
        layer=layer,
        names=list(arrays),
        coords=coords,
        explained_variance_ratio=np.asarray(pca.explained_variance_ratio_),
        explained_variance=np.asarray(pca.explained_variance_),
    )


def prompt_points(
    prompt: SoftPrompt, *, segment: str | None = None
) -> dict[int | None, torch.Tensor]:
    """The points of one prompt: v1 ``{None: (k, d)}``; v2 ``{layer: (k, d_kv)}`` (shared) or
    ``{layer: (k, 2·d_kv)}`` (separate: [key, value]). ``segment`` restricts to one named
    segment (e.g. the task sub-prompt)."""
    with torch.no_grad():
        full = prompt.segments[segment] if segment is not None else prompt.tensor()
        full = full.detach().float().cpu()
    if prompt.method == "v1":
        return {None: full}
    out: dict[int | None, torch.Tensor] = {}
    for i, layer in enumerate(prompt.layer_indices):
        if prompt.config.kv == "separate":
            out[layer] = torch.cat([full[i, 0], full[i, 1]], dim=-1)
        else:
            out[layer] = full[i]
    return out


def prompt_pca(
    prompts: Mapping[str, SoftPrompt], *, n_components: int = 2, segment: str | None = None
) -> list[PcaPanel]:
    """PCA panels of a set of prompts of one method: v1 → one panel; v2 → one per layer
    (a prompt on a layer subset appears only in the panels of its layers)."""
    if not prompts:
        raise ValueError("no prompts")
    methods = {p.method for p in prompts.values()}
    if len(methods) != 1:
        raise ValueError("PCA panels need prompts of one method (all v1 or all v2)")
    per_prompt = {name: prompt_points(p, segment=segment) for name, p in prompts.items()}
    keys = sorted(
        {k for pts in per_prompt.values() for k in pts}, key=lambda k: -1 if k is None else k
    )
    panels = []
    for key in keys:
        members = {name: pts[key] for name, pts in per_prompt.items() if key in pts}
        panels.append(pca_points(members, n_components=n_components, layer=key))
    return panels
