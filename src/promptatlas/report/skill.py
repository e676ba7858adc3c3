"""Figures, tables and stored arrays of the skill-neuron and indicator analyses.

Everything is built from the result objects of :mod:`promptatlas.analysis.skill` and
:mod:`promptatlas.analysis.indicators` and written atomically (temporary file + rename):

* predictivity: :func:`write_predictivity` / :func:`read_predictivity` (``predictivity.npz``
  + ``predictivity.json``, what later perturbation/pruning commands read back),
  :func:`predictivity_csv` (per layer: top-1, top-1%, mean), :func:`predictivity_figure`
  (top-1 and top-1% predictivity by layer), :func:`skill_neurons_csv`;
* :func:`activation_histogram` — the best neuron's activations by label, with the threshold;
* :func:`similarity_figure` / :func:`similarity_csv` — skill-neuron overlap and predictivity
  correlation between tasks or languages;
* :func:`perturbation_figure` / :func:`perturbation_csv` — the metric over p: skill neurons
  (with the 95% interval), random neurons (mean ± std over seeds), least predictive;
* :func:`cross_task_figure` / :func:`cross_task_csv` — perturb task A's skill neurons,
  evaluate task B;
* :func:`pruning_csv` — one row per pruning setting;
* :func:`indicator_bar_figure`, :func:`indicator_scatter_figure`, :func:`indicator_csv` —
  Spearman ρ of each indicator with the measured transfer;
* :func:`write_skill_report` — the standard files of one predictivity result in one folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptatlas.analysis.indicators import IndicatorCorrelation
from promptatlas.analysis.skill import (
    CrossTaskPerturbation,
    NeuronActivations,
    PerturbationCurve,
    Predictivity,
    SkillNeurons,
    SkillSimilarity,
    select_skill_neurons,
)
from promptatlas.io import atomic_file, write_csv_atomic, write_json_atomic
from promptatlas.report.figures import annotated_heatmap, save_figure, subplots

__all__ = [
    "activation_histogram",
    "activations_csv",
    "cross_task_csv",
    "cross_task_figure",
    "indicator_bar_figure",
    "indicator_csv",
    "indicator_scatter_figure",
    "perturbation_csv",
    "perturbation_figure",
    "predictivity_csv",
    "predictivity_figure",
    "pruning_csv",
    "read_predictivity",
    "similarity_csv",
    "similarity_figure",
    "skill_neurons_csv",
    "write_predictivity",
    "write_skill_report",
]

_ARRAYS = ("values", "per_seed", "per_subtask", "train_mean", "token_mean")


def _named(x: Any, kind: type) -> dict[str, Any]:
    if isinstance(x, kind):
        return {getattr(x, "name", "") or "": x}
    return dict(x)


# -- predictivity ---------------------------------------------------------------------------


def write_predictivity(pred: Predictivity, folder: str | Path) -> tuple[Path, Path]:
    """``predictivity.npz`` (the arrays) and ``predictivity.json`` (everything else) in
    ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    npz = folder / "predictivity.npz"
    with atomic_file(npz, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **{k: getattr(pred, k) for k in _ARRAYS})
    meta = {
        "layers": list(pred.layers),
        "labels": list(pred.labels),
        "subtasks": list(pred.subtasks),
        "state": pred.state,
        "position": pred.position,
        "k": pred.k,
        "aggregate": pred.aggregate,
        "n_train": pred.n_train,
        "n_dev": pred.n_dev,
        "name": pred.name,
        "meta": pred.meta,
        "summary": pred.summary(),
    }
    return npz, write_json_atomic(folder / "predictivity.json", meta)


def read_predictivity(folder: str | Path) -> Predictivity:
    """The :class:`Predictivity` stored by :func:`write_predictivity`."""
    import json

    folder = Path(folder)
    meta = json.loads((folder / "predictivity.json").read_text(encoding="utf-8"))
    with np.load(folder / "predictivity.npz") as data:
        arrays = {k: np.asarray(data[k]) for k in _ARRAYS}
    return Predictivity(
        **arrays,
        layers=tuple(int(x) for x in meta["layers"]),
        labels=tuple(meta["labels"]),
        subtasks=tuple(meta["subtasks"]),
        state=str(meta["state"]),
        position=str(meta["position"]),
        k=int(meta["k"]),
        aggregate=str(meta["aggregate"]),
        n_train=int(meta["n_train"]),
        n_dev=int(meta["n_dev"]),
        name=str(meta["name"]),
        meta=dict(meta.get("meta") or {}),
    )


def predictivity_csv(pred: Predictivity, path: str | Path, *, p: float = 0.01) -> Path:
    """Per layer: the best neuron (index, predictivity), the mean of the top ``p``, the mean."""
    top1, topp = pred.top1(), pred.top_fraction(p)
    rows = [
        (
            layer,
            int(np.argmax(pred.values[j])),
            f"{top1[j]:.6f}",
            f"{topp[j]:.6f}",
            f"{pred.values[j].mean():.6f}",
        )
        for j, layer in enumerate(pred.layers)
    ]
    header = ("layer", "best_index", "top1", f"top{p * 100:g}pct", "mean")
    return write_csv_atomic(Path(path), header, rows)


def skill_neurons_csv(
    skill: SkillNeurons, path: str | Path, pred: Predictivity | None = None
) -> Path:
    """One row per skill neuron: layer, index, rank in its layer, predictivity (if given)."""
    rows = []
    for layer in sorted(skill.neurons):
        for rank, i in enumerate(skill.neurons[layer].tolist()):
            value = "" if pred is None else f"{pred.row(layer)[i]:.6f}"
            rows.append((layer, i, rank, value))
    return write_csv_atomic(Path(path), ("layer", "index", "rank", "predictivity"), rows)


def predictivity_figure(
    preds: Predictivity | Mapping[str, Predictivity], path: str | Path, *, p: float = 0.01
) -> Path:
    """Top-1 (solid) and top-``p`` (dashed) predictivity by layer, one colour per result."""
    named = _named(preds, Predictivity)
    fig, axes = subplots(1, 1, panel=(6.0, 3.6))
    ax = axes[0, 0]
    for n, (name, pred) in enumerate(named.items()):
        colour = f"C{n % 10}"
        ax.plot(pred.layers, pred.top1(), "-o", color=colour, ms=3, label=f"{name} top-1")
        ax.plot(
            pred.layers,
            pred.top_fraction(p),
            "--",
            color=colour,
            label=f"{name} top-{p * 100:g}%",
        )
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("predictivity")
    ax.set_title("Neuron predictivity by layer")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# -- one neuron's activations ---------------------------------------------------------------


def activation_histogram(acts: NeuronActivations, path: str | Path, *, bins: int = 30) -> Path:
    """Histogram of one neuron's activations per label, with the threshold (a_bsl)."""
    fig, axes = subplots(1, 1, panel=(5.0, 3.4))
    ax = axes[0, 0]
    values = acts.values[np.isfinite(acts.values)]
    edges = np.histogram_bin_edges(values if values.size else np.zeros(1), bins=bins)
    for label, v in acts.by_label().items():
        ax.hist(v, bins=edges, alpha=0.55, label=f"{label} (n={len(v)})")
    if acts.threshold is not None and math.isfinite(acts.threshold):
        ax.axvline(acts.threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel("activation")
    ax.set_ylabel("examples")
    ax.set_title(f"{acts.name} neuron ({acts.layer}, {acts.index})".strip())
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def activations_csv(acts: NeuronActivations, path: str | Path) -> Path:
    rows = [
        (i, lab, f"{v:.6g}")
        for i, (v, lab) in enumerate(zip(acts.values, acts.labels, strict=True))
    ]
    return write_csv_atomic(Path(path), ("example", "label", "activation"), rows)


# -- similarity between tasks ---------------------------------------------------------------


def similarity_figure(sim: SkillSimilarity, path: str | Path) -> Path:
    """Two heatmaps: skill-neuron overlap (row ∩ column / row) and predictivity correlation."""
    n = len(sim.names)
    size = max(3.2, 0.6 * n + 1.8)
    fig, axes = subplots(1, 2, panel=(size, size * 0.85))
    annotated_heatmap(
        axes[0, 0], sim.overlap, sim.names, sim.names, cmap="viridis", diverging=False
    )
    axes[0, 0].set_title(f"skill-neuron overlap (top {sim.p * 100:g}%, {sim.scope})")
    annotated_heatmap(axes[0, 1], sim.correlation, sim.names, sim.names, limit=1.0)
    axes[0, 1].set_title(f"predictivity correlation ({sim.method})")
    return save_figure(fig, path)


def similarity_csv(sim: SkillSimilarity, path: str | Path) -> Path:
    rows = [
        (a, b, f"{sim.overlap[i, j]:.6f}", f"{sim.correlation[i, j]:.6f}")
        for i, a in enumerate(sim.names)
        for j, b in enumerate(sim.names)
    ]
    return write_csv_atomic(Path(path), ("row", "column", "overlap", "correlation"), rows)


# -- perturbation ---------------------------------------------------------------------------


def perturbation_figure(
    curves: PerturbationCurve | Mapping[str, PerturbationCurve], path: str | Path
) -> Path:
    """The metric over the perturbed fraction p: skill neurons (95% band), random neurons
    (mean ± std over seeds), least predictive, and the unperturbed score."""
    named = _named(curves, PerturbationCurve)
    fig, axes = subplots(1, len(named), panel=(4.6, 3.4))
    for ax, (name, curve) in zip(axes[0], named.items(), strict=False):
        rows = curve.rows()
        ps = np.array([r["p"] for r in rows]) * 100
        skill = np.array([r["skill"] for r in rows])
        ax.plot(ps, skill, "-o", color="C3", ms=4, label="skill neurons")
        ax.fill_between(
            ps,
            [r["skill_low"] for r in rows],
            [r["skill_high"] for r in rows],
            color="C3",
            alpha=0.15,
        )
        rmean = np.array([r["random_mean"] for r in rows])
        if np.isfinite(rmean).any():
            ax.errorbar(
                ps,
                rmean,
                yerr=[r["random_std"] for r in rows],
                fmt="-s",
                color="C0",
                ms=4,
                capsize=3,
                label="random (mean ± std)",
            )
        least = np.array([r["least"] for r in rows])
        if np.isfinite(least).any():
            ax.plot(ps, least, "-^", color="C2", ms=4, label="least predictive")
        if rows:
            ax.axhline(rows[0]["baseline"], color="grey", ls="--", lw=1, label="unperturbed")
        mode = curve.results[0].mode if curve.results else ""
        ax.set_xlabel("perturbed neurons p (%)")
        ax.set_ylabel("score")
        ax.set_title(f"{name or curve.name} ({mode})".strip())
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def perturbation_csv(curve: PerturbationCurve, path: str | Path) -> Path:
    rows = curve.rows()
    header = list(rows[0]) if rows else ["p"]
    return write_csv_atomic(Path(path), header, [[r[k] for k in header] for r in rows])


def cross_task_figure(
    result: CrossTaskPerturbation, path: str | Path, *, relative: bool = False
) -> Path:
    """Rows: whose skill neurons are perturbed; columns: the evaluated task; cells: the score
    drop (×100), or the perturbed/unperturbed ratio with ``relative``."""
    values = result.relative() if relative else result.drops * 100
    fig, axes = subplots(
        1,
        1,
        panel=(max(3.5, 0.8 * len(result.targets) + 2), max(3.0, 0.6 * len(result.sources) + 1.6)),
    )
    annotated_heatmap(
        axes[0, 0],
        values,
        result.sources,
        result.targets,
        fmt="{:.2f}" if relative else "{:.1f}",
        cmap="viridis" if relative else "Reds",
        diverging=False,
    )
    axes[0, 0].set_xlabel("evaluated task")
    axes[0, 0].set_ylabel("perturbed skill neurons of")
    what = "perturbed / unperturbed" if relative else "score drop ×100"
    axes[0, 0].set_title(f"{what} ({result.mode}, p={result.p * 100:g}%)")
    return save_figure(fig, path)


def cross_task_csv(result: CrossTaskPerturbation, path: str | Path) -> Path:
    rows = [
        (
            s,
            t,
            f"{result.baselines[j]:.6f}",
            f"{result.scores[i, j]:.6f}",
            f"{result.drops[i, j]:.6f}",
        )
        for i, s in enumerate(result.sources)
        for j, t in enumerate(result.targets)
    ]
    return write_csv_atomic(
        Path(path), ("source", "target", "unperturbed", "perturbed", "drop"), rows
    )


def pruning_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One row per pruning setting (e.g. kept fraction, kept parameters, score, time ratio);
    columns are the union of the rows' keys in first-seen order."""
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    return write_csv_atomic(Path(path), header, [[r.get(k, "") for k in header] for r in rows])


# -- indicators -----------------------------------------------------------------------------


def indicator_csv(correlations: Mapping[str, IndicatorCorrelation], path: str | Path) -> Path:
    """Per indicator: mean ± std of the per-target ρ, pooled ρ and p, counts."""
    rows = [
        (
            name,
            f"{c.mean:.6f}",
            f"{c.std:.6f}",
            c.n_targets,
            f"{c.pooled:.6f}",
            f"{c.pooled_p:.6g}",
            c.n_pairs,
            c.skipped,
        )
        for name, c in correlations.items()
    ]
    header = (
        "indicator",
        "rho_mean",
        "rho_std",
        "targets",
        "rho_pooled",
        "p_pooled",
        "pairs",
        "skipped",
    )
    return write_csv_atomic(Path(path), header, rows)


def indicator_bar_figure(
    correlations: Mapping[str, IndicatorCorrelation], path: str | Path
) -> Path:
    """Mean per-target Spearman ρ (± std) per indicator, the pooled ρ as a marker."""
    names = list(correlations)
    means = np.array([correlations[n].mean for n in names], dtype=float)
    stds = np.array([correlations[n].std for n in names], dtype=float)
    pooled = np.array([correlations[n].pooled for n in names], dtype=float)
    fig, axes = subplots(1, 1, panel=(max(4.0, 0.45 * len(names) + 2), 3.4))
    ax = axes[0, 0]
    x = np.arange(len(names))
    ax.bar(
        x,
        np.nan_to_num(means),
        yerr=np.nan_to_num(stds),
        color="C0",
        alpha=0.8,
        capsize=3,
        label="mean ρ per target",
    )
    ax.plot(x, pooled, "D", color="C3", ms=4, label="pooled ρ")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, labels=names, rotation=45, ha="right")
    ax.set_ylabel("Spearman ρ with transfer")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def indicator_scatter_figure(
    correlations: Mapping[str, IndicatorCorrelation],
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
) -> Path:
    """One panel per indicator: indicator value against the measured transfer T(s→t), one
    colour per target."""
    chosen = list(names) if names is not None else list(correlations)
    cols = min(4, max(1, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / cols))
    fig, axes = subplots(nrows, cols, panel=(3.2, 2.8))
    targets = sorted({p[1] for n in chosen for p in correlations[n].points})
    colour = {t: f"C{i % 10}" for i, t in enumerate(targets)}
    for k in range(nrows * cols):
        ax = axes[k // cols, k % cols]
        if k >= len(chosen):
            ax.axis("off")
            continue
        c = correlations[chosen[k]]
        for t in targets:
            pts = [(p[2], p[3]) for p in c.points if p[1] == t]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=14, color=colour[t], label=t)
        ax.set_title(f"{chosen[k]}: ρ={c.pooled:.2f}", fontsize=9)
        ax.set_xlabel("indicator", fontsize=8)
        ax.set_ylabel("transfer", fontsize=8)
    if targets and chosen:
        axes[0, 0].legend(fontsize=6, title="target", title_fontsize=6)
    return save_figure(fig, path)


def write_skill_report(
    pred: Predictivity,
    folder: str | Path,
    *,
    ps: Sequence[float] = (0.01,),
    scope: str = "layer",
    activations: NeuronActivations | None = None,
) -> list[Path]:
    """The files of one predictivity result: the stored arrays, ``by_layer.csv`` and
    ``by_layer.png`` (top-1 and top-``ps[0]``), ``skill_<p>.csv`` and ``skill_<p>.json`` for each
    p (the skill neurons), and, given the best neuron's activations, ``best_neuron.png`` and
    ``best_neuron.csv``."""
    folder = Path(folder)
    first = ps[0] if ps else 0.01
    out = [*write_predictivity(pred, folder)]
    out.append(predictivity_csv(pred, folder / "by_layer.csv", p=first))
    out.append(predictivity_figure({pred.name: pred}, folder / "by_layer.png", p=first))
    for p in ps:
        skill = select_skill_neurons(pred, p, scope="global" if scope == "global" else "layer")
        tag = f"{p * 100:g}pct"
        out.append(skill_neurons_csv(skill, folder / f"skill_{tag}.csv", pred))
        out.append(write_json_atomic(folder / f"skill_{tag}.json", skill.to_dict()))
    if activations is not None:
        out.append(activation_histogram(activations, folder / "best_neuron.png"))
        out.append(activations_csv(activations, folder / "best_neuron.csv"))
    return out
