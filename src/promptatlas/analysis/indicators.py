"""Transferability indicators (Su et al. 2022; Wang et al. 2022; spec §B1–B4).

Indicators between a source prompt s and a target prompt t, to be correlated with the
measured transfer T(s→t) = score(P_s on t) / score(P_t on t):

* embedding similarity (on the task segment by default; v2 per layer on [K; V], averaged):
  ``cos_flat`` = cos(vec P, vec Q); ``cos_tok`` = mean over all token pairs of cos(p_i, q_j)
  (identical prompts score below 1); ``cos_avg`` = cos of the mean vectors; ``euc_flat`` =
  1/(1+‖P−Q‖_F); ``euc_tok`` = 1/(1 + mean_{i,j} ‖p_i−q_j‖);
* ON (activated neurons at the decoding token of ``[P, <sep>]``): per layer (``on_l{l}``),
  per window of 3 consecutive layers (``on_w{a}-{b}``, the reference's groups), over all
  layers concatenated (``on_all``) and the mean of the per-layer scores (``on_mean``);
  state ``down_input`` (default) or ``gate``;
* skill neurons: ``skill_overlap`` = |S_s ∩ S_t| / |S_s|, ``skill_corr`` = Spearman ρ of the
  predictivity vectors, ``skill_on`` = ON restricted to S_s ∪ S_t.

:func:`indicator_correlation` gives, per target, Spearman ρ over the sources of (indicator,
transfer), their mean ± std, and a pooled ρ (with p) over all pairs; NaN pairs are skipped and
counted. :func:`suggest` ranks candidate sources for a target by an indicator. For a *new*
task, before any transfer training: :func:`probe_skill_indicators` computes the skill-neuron
indicators (it needs a few labelled training and held-out examples of the new task and no
prompt for it), :func:`probe_prompt_indicators` the embedding and ON indicators (they need a
probe prompt of the new task, e.g. one trained for a few steps).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from promptatlas.analysis.capture import prompt_only_batch
from promptatlas.analysis.skill.predictivity import (
    Predictivity,
    SkillNeurons,
    neuron_predictivity,
    predictivity_correlation,
    select_skill_neurons,
    skill_overlap,
)
from promptatlas.analysis.skill.states import NeuronRead, read_neurons
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example

__all__ = [
    "EMBEDDING_INDICATORS",
    "IndicatorCorrelation",
    "Suggestion",
    "correlate_indicators",
    "embedding_similarity",
    "indicator_correlation",
    "masked_on",
    "on_indicators",
    "pairwise_indicators",
    "probe_prompt_indicators",
    "probe_skill_indicators",
    "prompt_matrix",
    "prompt_states",
    "rank_indicators",
    "spearman",
    "suggest",
    "transfer_ratios",
]

Pair = tuple[str, str]  # (source, target)
EMBEDDING_INDICATORS: tuple[str, ...] = ("cos_flat", "cos_tok", "cos_avg", "euc_flat", "euc_tok")


# -- embedding similarity -------------------------------------------------------------------


def prompt_matrix(prompt: SoftPrompt | torch.Tensor, segment: str | None = "task") -> torch.Tensor:
    """The prompt as token vectors: v1 (k, d); v2 (L, k', d_kv) per layer, where separate
    keys/values give [K; V] (k' = 2k). A :class:`SoftPrompt` gives its ``segment`` (when it
    has one by that name; ``None``: all segments); a tensor is taken as is."""
    if isinstance(prompt, SoftPrompt):
        names = prompt.segment_names()
        if segment is not None and segment in names and len(names) > 1:
            x = prompt.segments[segment].detach()
        else:
            x = prompt.tensor().detach()
        if prompt.method == "v2" and prompt.config.kv == "separate":
            x = torch.cat([x[:, 0], x[:, 1]], dim=1)
        return x.float().cpu()
    x = prompt.detach().float().cpu()
    if x.dim() == 4:  # (L, 2, k, d): separate keys and values
        x = torch.cat([x[:, 0], x[:, 1]], dim=1)
    return x


def _similarity_2d(p: torch.Tensor, q: torch.Tensor, kind: str) -> float:
    p, q = p.double(), q.double()
    if kind == "cos_flat":
        if p.shape != q.shape:
            raise ValueError(
                f"cos_flat needs prompts of one shape: {tuple(p.shape)} vs {tuple(q.shape)}"
            )
        return float(F.cosine_similarity(p.reshape(1, -1), q.reshape(1, -1), eps=1e-12)[0])
    if kind == "cos_tok":
        return float((F.normalize(p, dim=-1) @ F.normalize(q, dim=-1).T).mean())
    if kind == "cos_avg":
        return float(
            F.cosine_similarity(p.mean(0, keepdim=True), q.mean(0, keepdim=True), eps=1e-12)[0]
        )
    if kind == "euc_flat":
        if p.shape != q.shape:
            raise ValueError(
                f"euc_flat needs prompts of one shape: {tuple(p.shape)} vs {tuple(q.shape)}"
            )
        return 1.0 / (1.0 + float(torch.linalg.norm(p - q)))
    if kind == "euc_tok":
        return 1.0 / (1.0 + float(torch.cdist(p, q).mean()))
    raise ValueError(
        f"unknown embedding indicator {kind!r} (one of {', '.join(EMBEDDING_INDICATORS)})"
    )


def embedding_similarity(
    p: SoftPrompt | torch.Tensor,
    q: SoftPrompt | torch.Tensor,
    kind: str = "cos_flat",
    *,
    segment: str | None = "task",
) -> float:
    """One embedding indicator between two prompts (v2: per layer, then averaged)."""
    a, b = prompt_matrix(p, segment), prompt_matrix(q, segment)
    if a.dim() != b.dim():
        raise ValueError("cannot compare a v1 prompt with a v2 prompt")
    if a.dim() == 2:
        return _similarity_2d(a, b, kind)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"v2 prompts over different layers: {a.shape[0]} vs {b.shape[0]}")
    return float(np.mean([_similarity_2d(a[i], b[i], kind) for i in range(a.shape[0])]))


# -- ON ---------------------------------------------------------------------------------------


def prompt_states(
    handle: ModelHandle,
    prompts: Mapping[str, SoftPrompt | None],
    separator: TaskFormatter | Sequence[int],
    *,
    state: str = "down_input",
    layers: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per prompt the neuron states (``down_input`` or ``gate``) at the decoding token of
    ``[P, <sep>]``: (n_layers, d_ffn) float32 (``down_input`` equals
    :func:`promptatlas.analysis.neurons.activation_states`)."""
    chosen = list(range(handle.geometry.n_layers)) if layers is None else sorted(set(layers))
    batch = prompt_only_batch(separator)
    out = {}
    for name, prompt in prompts.items():
        rows: dict[int, torch.Tensor] = {}

        def sink(read: NeuronRead, rows: dict[int, torch.Tensor] = rows) -> None:
            rows[read.layer] = read.at("decoding")[0, 0].float().cpu()

        read_neurons(PromptedLM(handle, prompt), batch, chosen, sink, state=state)
        out[name] = torch.stack([rows[i] for i in chosen])
    return out


def _binary_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = (a > 0).double().reshape(-1), (b > 0).double().reshape(-1)
    nx, ny = float(x.norm()), float(y.norm())
    return 0.0 if nx == 0 or ny == 0 else float(x @ y) / (nx * ny)


def on_indicators(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    window: int = 3,
) -> dict[str, float]:
    """ON between two states (L, D): per layer ``on_l{l}``, per window of ``window``
    consecutive layers ``on_w{first}-{last}`` (non-overlapping, from the first layer; a short
    last window is kept), ``on_all`` over all layers concatenated, ``on_mean`` the mean of
    the per-layer scores. An all-off state has ON 0 with everything."""
    if a.shape != b.shape:
        raise ValueError(f"states differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 1:
        a, b = a[None], b[None]
    names = list(range(a.shape[0])) if layers is None else list(layers)
    out: dict[str, float] = {}
    per_layer = []
    for j, layer in enumerate(names):
        v = _binary_cos(a[j], b[j])
        out[f"on_l{layer}"] = v
        per_layer.append(v)
    if window >= 1:
        for start in range(0, len(names), window):
            stop = min(start + window, len(names))
            out[f"on_w{names[start]}-{names[stop - 1]}"] = _binary_cos(a[start:stop], b[start:stop])
    out["on_all"] = _binary_cos(a, b)
    out["on_mean"] = float(np.mean(per_layer))
    return out


def masked_on(a: torch.Tensor, b: torch.Tensor, mask: np.ndarray | torch.Tensor) -> float:
    """ON over the neurons in ``mask`` (L, D) only (e.g. S_s ∪ S_t)."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
    return _binary_cos(a[m], b[m])


# -- all indicators for all pairs -------------------------------------------------------------


def pairwise_indicators(
    names: Sequence[str],
    *,
    prompts: Mapping[str, SoftPrompt | torch.Tensor] | None = None,
    states: Mapping[str, torch.Tensor] | None = None,
    predictivities: Mapping[str, Predictivity] | None = None,
    p: float = 0.01,
    scope: Literal["layer", "global"] = "layer",
    window: int = 3,
    segment: str | None = "task",
    layers: Sequence[int] | None = None,
    pairs: Sequence[Pair] | None = None,
) -> dict[str, dict[Pair, float]]:
    """Every indicator the inputs allow, for every ordered pair (source, target) of distinct
    ``names`` (or the given ``pairs``): embedding indicators from ``prompts``, ON from
    ``states`` (from :func:`prompt_states`; ``layers`` names their rows), skill-neuron
    indicators from ``predictivities`` (top ``p``; ``skill_on`` needs ``states`` too)."""
    todo = list(pairs) if pairs is not None else [(s, t) for s in names for t in names if s != t]
    out: dict[str, dict[Pair, float]] = {}

    def put(name: str, pair: Pair, value: float) -> None:
        out.setdefault(name, {})[pair] = value

    skills: dict[str, SkillNeurons] = {}
    if predictivities is not None:
        skills = {
            n: select_skill_neurons(predictivities[n], p, scope=scope) for n in predictivities
        }
    for s, t in todo:
        if prompts is not None and s in prompts and t in prompts:
            for kind in EMBEDDING_INDICATORS:
                put(
                    kind,
                    (s, t),
                    embedding_similarity(prompts[s], prompts[t], kind, segment=segment),
                )
        if states is not None and s in states and t in states:
            for kind, value in on_indicators(
                states[s], states[t], layers=layers, window=window
            ).items():
                put(kind, (s, t), value)
        if predictivities is not None and s in predictivities and t in predictivities:
            put("skill_overlap", (s, t), skill_overlap(skills[s], skills[t]))
            put(
                "skill_corr", (s, t), predictivity_correlation(predictivities[s], predictivities[t])
            )
            if states is not None and s in states and t in states:
                rows = list(predictivities[s].layers)
                union = skills[s].mask(rows) | skills[t].mask(rows)
                state_rows = list(range(states[s].shape[0])) if layers is None else list(layers)
                pick = [state_rows.index(layer) for layer in rows]
                put("skill_on", (s, t), masked_on(states[s][pick], states[t][pick], union))
    return out


# -- correlation with transfer ----------------------------------------------------------------


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman ρ and its two-sided p-value (NaN, NaN for fewer than 3 points or a constant
    input)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape:
        raise ValueError("x and y differ in length")
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue)


def transfer_ratios(scores: Mapping[Pair, float]) -> dict[Pair, float]:
    """T(s→t) = score(P_s on t) / score(P_t on t) for s ≠ t, from a grid's scores keyed
    (source, target) with the diagonal (t, t) as each target's own prompt. Pairs whose target
    has no diagonal or a zero one are left out."""
    out = {}
    for (s, t), v in scores.items():
        if s == t:
            continue
        own = scores.get((t, t))
        if own is None or own == 0 or not math.isfinite(own):
            continue
        out[(s, t)] = float(v) / float(own)
    return out


@dataclass
class IndicatorCorrelation:
    """Spearman ρ of one indicator with transfer: per target over its sources, their mean ±
    std, and pooled over all pairs. ``skipped``: pairs without a finite indicator or transfer."""

    indicator: str
    per_target: dict[str, float]
    per_target_p: dict[str, float]
    mean: float
    std: float
    pooled: float
    pooled_p: float
    n_pairs: int
    skipped: int
    points: list[tuple[str, str, float, float]] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return sum(math.isfinite(v) for v in self.per_target.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "indicator": self.indicator,
            "per_target": self.per_target,
            "per_target_p": self.per_target_p,
            "mean": self.mean,
            "std": self.std,
            "n_targets": self.n_targets,
            "pooled": self.pooled,
            "pooled_p": self.pooled_p,
            "n_pairs": self.n_pairs,
            "skipped": self.skipped,
        }


def indicator_correlation(
    indicator: Mapping[Pair, float], transfer: Mapping[Pair, float], *, name: str = ""
) -> IndicatorCorrelation:
    """ρ_t = Spearman over sources s ≠ t of (I(s, t), T(s→t)) per target t, their mean ± std
    (sample std; targets with fewer than 3 usable sources give NaN and are left out), and the
    pooled ρ with its p-value over all usable pairs."""
    by_target: dict[str, list[tuple[str, float, float]]] = {}
    skipped = 0
    points = []
    for (s, t), tv in transfer.items():
        if s == t:
            continue
        iv = indicator.get((s, t))
        if iv is None or not math.isfinite(iv) or not math.isfinite(tv):
            skipped += 1
            continue
        by_target.setdefault(t, []).append((s, float(iv), float(tv)))
        points.append((s, t, float(iv), float(tv)))
    per, per_p = {}, {}
    for t, rows in by_target.items():
        rho, pv = spearman([r[1] for r in rows], [r[2] for r in rows])
        per[t], per_p[t] = rho, pv
    finite = [v for v in per.values() if math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else math.nan
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else math.nan)
    pooled, pooled_p = spearman([p[2] for p in points], [p[3] for p in points])
    return IndicatorCorrelation(
        name, per, per_p, mean, std, pooled, pooled_p, len(points), skipped, points
    )


def correlate_indicators(
    indicators: Mapping[str, Mapping[Pair, float]], transfer: Mapping[Pair, float]
) -> dict[str, IndicatorCorrelation]:
    """:func:`indicator_correlation` for each named indicator."""
    return {k: indicator_correlation(v, transfer, name=k) for k, v in indicators.items()}


def rank_indicators(correlations: Mapping[str, IndicatorCorrelation]) -> list[str]:
    """Indicator names from the best (highest mean per-target ρ, pooled ρ on ties) to the
    worst; NaN last."""

    def key(name: str) -> tuple[float, float]:
        c = correlations[name]
        m = c.mean if math.isfinite(c.mean) else -math.inf
        p = c.pooled if math.isfinite(c.pooled) else -math.inf
        return (-m, -p)

    return sorted(correlations, key=key)


# -- suggesting sources -------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    source: str
    value: float
    rank: int
    indicator: str


def suggest(
    values: Mapping[str, float],
    *,
    indicator: str = "",
    top: int = 3,
    exclude: Sequence[str] = (),
) -> list[Suggestion]:
    """The ``top`` sources with the highest indicator value (NaN never suggested; ties keep
    the input order). ``values``: the indicator between each source and the target."""
    skip = set(exclude)
    usable = [(s, float(v)) for s, v in values.items() if s not in skip and math.isfinite(v)]
    ordered = sorted(usable, key=lambda sv: -sv[1])
    return [Suggestion(s, v, i + 1, indicator) for i, (s, v) in enumerate(ordered[: max(0, top)])]


def probe_skill_indicators(
    handle: ModelHandle,
    formatter: TaskFormatter,
    train: Sequence[Example],
    dev: Sequence[Example],
    sources: Mapping[str, tuple[SoftPrompt, Predictivity]],
    *,
    p: float = 0.01,
    scope: Literal["layer", "global"] = "layer",
    state: str = "down_input",
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Skill-neuron indicators between each source and a new task, before any training on it.

    Data: a few labelled ``train`` examples (thresholds) and held-out ``dev`` examples of the
    new task (tens of each suffice for a ranking). For every source (its prompt and its
    predictivity on its own task), the new task's neuron predictivity is read *through the
    source prompt* and compared with the source's: returns {indicator: {source: value}} for
    ``skill_overlap`` (|S_source ∩ S_new| / |S_source|) and ``skill_corr``."""
    out: dict[str, dict[str, float]] = {"skill_overlap": {}, "skill_corr": {}}
    for name, (prompt, source_pred) in sources.items():
        probe = neuron_predictivity(
            handle,
            prompt,
            formatter,
            train,
            dev,
            layers=source_pred.layers,
            state=state,
            batch_size=batch_size,
            name=f"{formatter.task.name}|{name}",
        )
        s_set = select_skill_neurons(source_pred, p, scope=scope)
        t_set = select_skill_neurons(probe, p, scope=scope)
        out["skill_overlap"][name] = skill_overlap(s_set, t_set)
        out["skill_corr"][name] = predictivity_correlation(source_pred, probe)
    return out


def probe_prompt_indicators(
    handle: ModelHandle,
    probe: SoftPrompt,
    sources: Mapping[str, SoftPrompt],
    separator: TaskFormatter | Sequence[int],
    *,
    state: str = "down_input",
    window: int = 3,
    segment: str | None = "task",
) -> dict[str, dict[str, float]]:
    """Embedding and ON indicators between each source prompt and a probe prompt of the new
    task (a prompt trained briefly on it): {indicator: {source: value}}."""
    out: dict[str, dict[str, float]] = {}
    states = prompt_states(handle, {"__probe__": probe, **sources}, separator, state=state)
    for name, prompt in sources.items():
        for kind in EMBEDDING_INDICATORS:
            value = embedding_similarity(prompt, probe, kind, segment=segment)
            out.setdefault(kind, {})[name] = value
        for kind, value in on_indicators(states[name], states["__probe__"], window=window).items():
            out.setdefault(kind, {})[name] = value
    return out
