"""Activated neurons: the ON score of Su et al. (2022) as used in thesis §4.3 / Eq. 17.

The activation state of a prompt at layer l is the FFN intermediate activation (the input of
the down-projection, found through the adapter) at the decoding token when the model reads
only ``[P, <sep>]``. ``ON_l(P1, P2)`` is the cosine similarity of the binarised states
(activation > 0); the raw-activation cosine is offered too. An all-zero (binarised) state has
cosine 0 with everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from promptatlas.analysis.capture import DecodingStates, prompt_only_batch, run_reducers
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "OnScores",
    "activation_states",
    "binarise",
    "on_matrix",
    "on_score",
    "on_scores",
]

OnKind = Literal["binary", "raw"]


def activation_states(
    handle: ModelHandle,
    prompts: Mapping[str, SoftPrompt | None],
    separator: TaskFormatter | Sequence[int],
    *,
    layers: Iterable[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per prompt the FFN intermediate activations at the decoding token of ``[P, <sep>]``:
    a (n_layers, d_ffn) float32 tensor (rows in ``layers`` order, default all layers).

    ``separator`` is a formatter (its separator tokens) or the separator ids. A ``None``
    prompt is the base model reading ``<sep>`` alone."""
    chosen = list(range(handle.geometry.n_layers)) if layers is None else sorted(set(layers))
    models = {name: PromptedLM(handle, p) for name, p in prompts.items()}
    reducer = DecodingStates("ffn", chosen, models)
    run_reducers(models, [prompt_only_batch(separator)], [reducer])
    states = reducer.result()
    return {name: states[name][0] for name in prompts}


def binarise(states: torch.Tensor) -> torch.Tensor:
    """1.0 where a neuron is on (activation > 0), else 0.0."""
    return (states > 0).float()


def on_score(a: torch.Tensor, b: torch.Tensor, *, kind: OnKind = "binary") -> torch.Tensor:
    """ON score per layer between two activation states (n_layers, d_ffn) → (n_layers,)."""
    if a.shape != b.shape:
        raise ValueError(f"activation states differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if kind == "binary":
        a, b = binarise(a), binarise(b)
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def on_matrix(
    rows: Mapping[str, torch.Tensor],
    cols: Mapping[str, torch.Tensor],
    *,
    kind: OnKind = "binary",
) -> torch.Tensor:
    """ON scores between every row state and every column state: (n_layers, n_rows, n_cols).
    E.g. source prompts × target prompts, with and without transfer."""
    a = torch.stack(list(rows.values())).double()  # (R, L, D)
    b = torch.stack(list(cols.values())).double()
    if a.shape[1:] != b.shape[1:]:
        raise ValueError("row and column states have different shapes")
    if kind == "binary":
        a, b = binarise(a).double(), binarise(b).double()
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    return torch.einsum("rld,cld->lrc", a, b)


@dataclass
class OnScores:
    """Pairwise ON scores of a set of prompts, per layer."""

    names: list[str]
    layers: list[int]
    binary: torch.Tensor  # (n_layers, n, n)
    raw: torch.Tensor  # (n_layers, n, n)

    def matrix(self, kind: OnKind = "binary") -> torch.Tensor:
        return self.binary if kind == "binary" else self.raw

    def mean_over_pairs(self, kind: OnKind = "binary") -> torch.Tensor:
        """Per layer, the average over all unordered pairs of distinct prompts (n_layers,)."""
        n = len(self.names)
        if n < 2:
            raise ValueError("the average over pairs needs at least two prompts")
        i, j = torch.triu_indices(n, n, offset=1)
        return self.matrix(kind)[:, i, j].mean(1)

    def pair(self, a: str, b: str, kind: OnKind = "binary") -> torch.Tensor:
        return self.matrix(kind)[:, self.names.index(a), self.names.index(b)]


def on_scores(
    states: Mapping[str, torch.Tensor], *, layers: Sequence[int] | None = None
) -> OnScores:
    """Pairwise binarised and raw ON matrices per layer for states from
    :func:`activation_states` (``layers`` names the rows; default 0..n-1)."""
    if not states:
        raise ValueError("no activation states")
    first = next(iter(states.values()))
    names = list(range(first.shape[0])) if layers is None else list(layers)
    return OnScores(
        names=list(states),
        layers=names,
        binary=on_matrix(states, states, kind="binary"),
        raw=on_matrix(states, states, kind="raw"),
    )
