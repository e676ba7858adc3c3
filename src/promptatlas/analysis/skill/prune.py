"""Pruning FFN neurons (Wang et al. 2022; spec §A4).

In each chosen layer the kept neurons K stay and the removed ones R go: gate/up lose the
output rows of R and down loses the input columns of R (GPT-2: c_fc loses columns and bias
entries, c_proj loses rows). The removed neurons' expected contribution is folded into the
down-projection's bias, ``b' = b + W_down[:, R] · μ_R`` (Llama and Gemma have no bias there,
so one is added), so a pruned layer whose removed neurons would have been at μ computes
exactly the unpruned output. μ defaults to the mean over the training tokens
(:attr:`Predictivity.token_mean`); the decoding-token mean and zero are options.

Only the removed set is folded (the reference also folds the kept neurons' means: a double
count), the kept set is chosen by predictivity (skill neurons first, then the next best; not
padded by index), and the bias applies at every position.
"""

from __future__ import annotations

import copy
import hashlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from promptatlas.analysis.skill.predictivity import Predictivity, SkillNeurons, select_count
from promptatlas.analysis.skill.states import ffn_parts
from promptatlas.models.registry import ModelHandle

__all__ = [
    "PrunedModel",
    "default_prune_layers",
    "forward_time",
    "keep_by_predictivity",
    "prune_ffn",
    "pruning_means",
    "random_keep",
]

MeanSource = Literal["tokens", "decoding", "zero"]


def default_prune_layers(n_layers: int) -> list[int]:
    """Layers ⌊L/4⌋..L−1 (the reference prunes 3–11 of 12)."""
    return list(range(n_layers // 4, n_layers))


def keep_by_predictivity(
    pred: Predictivity,
    layers: Sequence[int],
    keep: float = 0.02,
    *,
    skill: SkillNeurons | None = None,
) -> dict[int, np.ndarray]:
    """Per layer ⌈keep·D⌉ neurons to keep: the layer's skill neurons first (if given), then the
    next most predictive ones (stable order)."""
    d = pred.d_ffn
    k = max(1, select_count(keep, d))
    out = {}
    for layer in layers:
        row = pred.row(layer)
        order = [int(i) for i in np.argsort(-row, kind="stable")]
        first = [] if skill is None else [int(i) for i in skill.neurons.get(layer, ())]
        seen = set(first)
        ranked = first + [i for i in order if i not in seen]
        out[layer] = np.asarray(ranked[:k], dtype=np.int64)
    return out


def random_keep(
    d_ffn: int, layers: Sequence[int], keep: float = 0.02, *, seed: int = 0
) -> dict[int, np.ndarray]:
    """The random-pruning control: ⌈keep·D⌉ random neurons per layer (``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    k = max(1, select_count(keep, d_ffn))
    return {layer: np.sort(rng.choice(d_ffn, size=k, replace=False)) for layer in layers}


def pruning_means(
    pred: Predictivity | None, source: MeanSource = "tokens", *, seed: int = 0
) -> dict[int, np.ndarray] | None:
    """μ per layer for the bias fold: the training-token mean (default), the decoding-token
    training mean, or None for zero (nothing folded)."""
    if source == "zero":
        return None
    if pred is None:
        raise ValueError(f"μ source {source!r} needs the predictivity of the task")
    if pred.state != "down_input":
        raise ValueError(
            f"the bias fold needs means of the down-projection input; this predictivity was "
            f"read from state {pred.state!r}"
        )
    if source == "tokens":
        return {layer: pred.token_mean[seed, j] for j, layer in enumerate(pred.layers)}
    if source == "decoding":
        return pred.baseline(seed)
    raise ValueError(f"μ source must be tokens, decoding or zero, got {source!r}")


def _slice_linear(
    module: nn.Linear, idx: torch.Tensor, dim: int, bias: torch.Tensor | None = None
) -> nn.Linear:
    w = module.weight.detach()
    w = w.index_select(dim, idx)
    out_f, in_f = w.shape
    b = module.bias.detach() if module.bias is not None else None
    if dim == 0 and b is not None:
        b = b.index_select(0, idx)
    if bias is not None:
        b = bias if b is None else b + bias.to(b.dtype)
    new = nn.Linear(in_f, out_f, bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None and new.bias is not None:
            new.bias.copy_(b.to(w.dtype))
    new.requires_grad_(module.weight.requires_grad)
    return new


def _conv1d(weight: torch.Tensor, bias: torch.Tensor, like: Any) -> nn.Module:
    """A Conv1D (GPT-2: weight stored (in, out)) of the same class with these parameters."""
    nx, nf = int(weight.shape[0]), int(weight.shape[1])
    new: Any = type(like)(nf, nx)
    new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias.to(weight.dtype))
    new.requires_grad_(bool(like.weight.requires_grad))
    module: nn.Module = new
    return module


def _fold(w_removed: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """W_down[:, R] · μ_R in float64 (w_removed: (d, |R|))."""
    return (w_removed.double() @ mu.double()).float()


@dataclass
class PrunedModel:
    """A pruned copy of a model and what was removed.

    ``kept`` per pruned layer the kept neuron indices; ``folded`` the bias added to each
    down-projection (``W_down[:, R]·μ_R``, zeros when nothing is folded)."""

    handle: ModelHandle
    kept: dict[int, np.ndarray]
    folded: dict[int, torch.Tensor]
    params_before: int
    params_after: int
    ffn_params_before: int
    ffn_params_after: int
    mean_source: str

    @property
    def kept_fraction(self) -> float:
        return self.params_after / self.params_before

    def summary(self) -> dict[str, Any]:
        return {
            "layers": sorted(self.kept),
            "kept_per_layer": {str(k): len(v) for k, v in self.kept.items()},
            "params_before": self.params_before,
            "params_after": self.params_after,
            "kept_fraction": self.kept_fraction,
            "ffn_params_before": self.ffn_params_before,
            "ffn_params_after": self.ffn_params_after,
            "mean_source": self.mean_source,
        }


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def prune_ffn(
    handle: ModelHandle,
    keep: Mapping[int, Sequence[int] | np.ndarray],
    means: Mapping[int, np.ndarray | torch.Tensor] | None = None,
    *,
    mean_source: str = "given",
    inplace: bool = False,
) -> PrunedModel:
    """Keep only the neurons ``keep[l]`` in each layer l (any order; stored sorted), folding
    the removed neurons' ``means[l]`` (full (D,) vectors) into the down-projection bias
    (``None``: nothing folded, i.e. μ = 0). Returns a pruned deep copy (``inplace``: prunes
    ``handle``'s model itself) in a new :class:`ModelHandle` with the same geometry, so prompts
    of the unpruned model still fit."""
    model = handle.model if inplace else copy.deepcopy(handle.model)
    new_handle = handle if inplace else replace(handle, model=model)
    before = _count(model)
    ffn_before = ffn_after = 0
    kept_out: dict[int, np.ndarray] = {}
    folded: dict[int, torch.Tensor] = {}
    for layer, idx_raw in sorted(keep.items()):
        ffn, layout = ffn_parts(new_handle, layer)
        ffn_before += _count(ffn)
        down = getattr(ffn, layout.down)
        device = next(ffn.parameters()).device
        d_ffn = int(down.weight.shape[0] if layout.conv1d else down.weight.shape[1])
        kept = np.unique(np.asarray(idx_raw, dtype=np.int64))
        if kept.size == 0 or kept.min() < 0 or kept.max() >= d_ffn:
            raise ValueError(f"layer {layer}: kept indices must be non-empty and in 0..{d_ffn - 1}")
        removed = np.setdiff1d(np.arange(d_ffn), kept)
        k_idx = torch.as_tensor(kept, device=device)
        r_idx = torch.as_tensor(removed, device=device)
        if means is not None and removed.size:
            if layer not in means:
                raise ValueError(f"no means for layer {layer} (means cover {sorted(means)})")
            mu = torch.as_tensor(np.asarray(means[layer]), dtype=torch.float64, device=device)
            if mu.shape != (d_ffn,):
                raise ValueError(
                    f"layer {layer}: means must have shape ({d_ffn},), got {tuple(mu.shape)}"
                )
            w_down = down.weight.T if layout.conv1d else down.weight  # (d, D)
            extra = _fold(w_down.index_select(1, r_idx), mu.index_select(0, r_idx))
        else:
            w_rows = down.weight.shape[1] if layout.conv1d else down.weight.shape[0]
            extra = torch.zeros(w_rows, device=device)
        folded[layer] = extra.cpu()
        if layout.conv1d:  # GPT-2: c_fc (d, D) + (D,), c_proj (D, d) + (d,)
            up = getattr(ffn, layout.up)
            setattr(
                ffn,
                layout.up,
                _conv1d(up.weight.index_select(1, k_idx), up.bias.index_select(0, k_idx), up),
            )
            new_bias = down.bias + extra.to(down.bias.dtype)
            setattr(ffn, layout.down, _conv1d(down.weight.index_select(0, k_idx), new_bias, down))
        else:
            assert layout.gate is not None
            for name in (layout.gate, layout.up):
                setattr(ffn, name, _slice_linear(getattr(ffn, name), k_idx, 0))
            setattr(ffn, layout.down, _slice_linear(down, k_idx, 1, bias=extra))
        ffn_after += _count(ffn)
        kept_out[layer] = kept
    after = _count(model)
    digest = hashlib.sha256(
        repr({k: v.tolist() for k, v in kept_out.items()}).encode() + mean_source.encode()
    ).hexdigest()[:12]
    new_handle.fingerprint = f"{handle.fingerprint}+pruned-{digest}"
    new_handle.name = f"{handle.name}+pruned"
    return PrunedModel(
        new_handle, kept_out, folded, before, after, ffn_before, ffn_after, mean_source
    )


def forward_time(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times)) if times else math.nan
