"""Tables and figures of the composition study (spec composition.md): the comparison table in
AMP's Table 1 layout, the AMP attention heatmap (AMP Fig. 6), recovery against d_I and the PCA
of IPT's intrinsic vectors. Every file is written through a temporary file and a rename."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptatlas.compose import MethodScore, OwnComposition, RecoveryResult, ScoreComparison
from promptatlas.evaluation.confidence import SeedSummary, seed_summary
from promptatlas.io import write_csv_atomic, write_text_atomic
from promptatlas.report.figures import annotated_heatmap, save_figure, subplots

__all__ = [
    "AMP_TABLE1",
    "METHOD_LABELS",
    "TABLE1_METHODS",
    "ComparisonTable",
    "comparison_markdown",
    "comparison_table",
    "plot_attention_heatmap",
    "plot_intrinsic_pca",
    "plot_recovery_vs_dim",
    "recovery_markdown",
    "write_attention_csv",
    "write_comparison_csv",
    "write_comparison_markdown",
    "write_recovery_csv",
]

TABLE1_METHODS: tuple[str, ...] = ("pt", "spot-s", "spot-m", "attempt", "amp")
METHOD_LABELS: dict[str, str] = {
    "pt": "PT",
    "spot-s": "SPoT-s",
    "spot-m": "SPoT-m",
    "attempt": "ATTEMPT",
    "amp": "AMP",
    "ipt": "IPT",
    "ft": "FT",
}

# AMP's Table 1 (RoBERTa-base; IMDB's PT reconstructed from the text, see composition.md).
AMP_TABLE1: dict[str, dict[str, float]] = {
    "IMDB": {"ft": 93.1, "pt": 86.5, "spot-s": 85.2, "spot-m": 91.8, "attempt": 90.3, "amp": 88.3},
    "SST-2": {"ft": 90.1, "pt": 86.8, "spot-s": 87.5, "spot-m": 87.1, "attempt": 86.3, "amp": 89.9},
    "Yelp-2": {
        "ft": 88.4,
        "pt": 83.5,
        "spot-s": 81.2,
        "spot-m": 84.9,
        "attempt": 83.1,
        "amp": 83.9,
    },
    "STS-B": {"ft": 86.5, "pt": 81.2, "spot-s": 83.5, "spot-m": 85.2, "attempt": 83.4, "amp": 86.3},
    "MRPC": {"ft": 87.9, "pt": 69.4, "spot-s": 68.5, "spot-m": 74.1, "attempt": 73.3, "amp": 76.6},
    "RTE": {"ft": 71.1, "pt": 57.8, "spot-s": 66.4, "spot-m": 68.8, "attempt": 68.1, "amp": 66.8},
    "SciTail": {
        "ft": 93.3,
        "pt": 87.8,
        "spot-s": 86.2,
        "spot-m": 88.1,
        "attempt": 86.3,
        "amp": 86.9,
    },
    "CB": {"ft": 83.5, "pt": 71.4, "spot-s": 75.3, "spot-m": 84.1, "attempt": 81.3, "amp": 78.9},
    "MultiRC": {
        "ft": 73.1,
        "pt": 64.4,
        "spot-s": 74.1,
        "spot-m": 76.2,
        "attempt": 70.1,
        "amp": 70.7,
    },
    "BoolQ": {"ft": 75.8, "pt": 63.5, "spot-s": 69.4, "spot-m": 72.2, "attempt": 68.2, "amp": 70.1},
    "QNLI": {"ft": 89.5, "pt": 85.4, "spot-s": 84.3, "spot-m": 86.2, "attempt": 85.1, "amp": 83.3},
    "mean": {"ft": 84.8, "pt": 76.2, "spot-s": 78.3, "spot-m": 81.7, "attempt": 79.6, "amp": 80.2},
}


def _as_record(score: MethodScore | Mapping[str, Any]) -> dict[str, Any]:
    return score.to_dict() if isinstance(score, MethodScore) else dict(score)


@dataclass
class ComparisonTable:
    """tasks × methods of mean ± std over seeds; ``mean_row``: per method, mean ± std over
    seeds of the mean over tasks (only seeds scored on every task; None otherwise)."""

    tasks: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], SeedSummary]
    mean_row: dict[str, SeedSummary | None] = field(default_factory=dict)
    lang: str | None = None


def comparison_table(
    scores: Iterable[MethodScore | Mapping[str, Any]],
    *,
    methods: Sequence[str] = TABLE1_METHODS,
    lang: str | None = None,
    tasks: Sequence[str] | None = None,
) -> ComparisonTable:
    """The AMP Table 1 layout from method scores (MethodScore or dicts with method, task,
    lang, seed, score). With ``lang`` rows are tasks of that language; without, "task-lang"."""
    values: dict[tuple[str, str], dict[int, float]] = {}
    for raw in scores:
        rec = _as_record(raw)
        if lang is not None and str(rec["lang"]).lower() != lang.lower():
            continue
        method = str(rec["method"])
        if method not in methods:
            continue
        row = str(rec["task"]) if lang is not None else f"{rec['task']}-{rec['lang']}"
        values.setdefault((row, method), {})[int(rec.get("seed") or 0)] = float(rec["score"])
    rows = list(tasks) if tasks is not None else sorted({r for r, _ in values})
    cells = {key: seed_summary([v[s] for s in sorted(v)]) for key, v in values.items()}
    mean_row: dict[str, SeedSummary | None] = {}
    for method in methods:
        per_task = [values.get((r, method), {}) for r in rows]
        if not rows or any(not v for v in per_task):
            mean_row[method] = None
            continue
        common = set.intersection(*(set(v) for v in per_task))
        if not common:
            mean_row[method] = None
            continue
        means = [sum(v[s] for v in per_task) / len(per_task) for s in sorted(common)]
        mean_row[method] = seed_summary(means)
    return ComparisonTable(rows, list(methods), cells, mean_row, lang)


def _fmt(summary: SeedSummary | None, scale: float, digits: int) -> str:
    if summary is None:
        return "–"
    if len(summary.values) == 1:
        return f"{summary.mean * scale:.{digits}f}"
    return summary.format(scale, digits)


def comparison_markdown(
    table: ComparisonTable, *, scale: float = 100.0, digits: int = 1, paper: bool = False
) -> str:
    """A markdown table (×100, mean ± std over seeds; one seed: the value); with ``paper`` the
    AMP Table 1 means (RoBERTa-base) follow as a last row for reading against. A method with
    fewer seeds than the table's most (an unfinished study) says how many in its header."""
    seeds = {
        m: [len(c.values) for t in table.tasks if (c := table.cells.get((t, m))) is not None]
        for m in table.methods
    }
    most = max((n for counts in seeds.values() for n in counts), default=0)
    labels = []
    for m in table.methods:
        label, fewest = METHOD_LABELS.get(m, m), min(seeds[m], default=most)
        if fewest < most:
            label += f" ({fewest} seed{'s' if fewest != 1 else ''})"
        labels.append(label)
    lines = [
        "| task | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for task in table.tasks:
        cells = [_fmt(table.cells.get((task, m)), scale, digits) for m in table.methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    means = [_fmt(table.mean_row.get(m), scale, digits) for m in table.methods]
    lines.append("| **mean** | " + " | ".join(means) + " |")
    if paper:
        ref = [
            f"{AMP_TABLE1['mean'][m]:.1f}" if m in AMP_TABLE1["mean"] else "–"
            for m in table.methods
        ]
        lines.append("| AMP Table 1 mean (RoBERTa-base) | " + " | ".join(ref) + " |")
    return "\n".join(lines) + "\n"


def write_comparison_markdown(table: ComparisonTable, path: str | Path, **kw: Any) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, comparison_markdown(table, **kw))
    return out


def write_comparison_csv(table: ComparisonTable, path: str | Path) -> Path:
    """Wide CSV: task, then per method its mean, std and number of seeds (fractions)."""
    header = ["task"]
    for m in table.methods:
        header += [f"{m}_mean", f"{m}_std", f"{m}_seeds"]
    rows: list[list[Any]] = []
    for task in [*table.tasks, "mean"]:
        row: list[Any] = [task]
        for m in table.methods:
            s = table.mean_row.get(m) if task == "mean" else table.cells.get((task, m))
            row += ["", "", 0] if s is None else [s.mean, s.std, len(s.values)]
        rows.append(row)
    return write_csv_atomic(Path(path), header, rows)


# -- AMP attention -------------------------------------------------------------------------------


def write_attention_csv(attention: Any, keys: Sequence[str], path: str | Path) -> Path:
    """The attention matrix: one row per target prompt, one column per source."""
    a = np.asarray(attention, dtype=float)
    return write_csv_atomic(
        Path(path), ["target", *keys], [[k, *row] for k, row in zip(keys, a.tolist(), strict=True)]
    )


def plot_attention_heatmap(
    attention: Any, keys: Sequence[str], path: str | Path, *, title: str | None = None
) -> Path:
    """AMP Fig. 6: rows = target prompts, columns = source prompts, each cell its weight."""
    a = np.asarray(attention, dtype=float)
    if a.shape != (len(keys), len(keys)):
        raise ValueError(f"attention of shape {a.shape} does not match {len(keys)} keys")
    size = max(3.0, 0.6 * len(keys) + 1.5)
    fig, axes = subplots(1, 1, panel=(size + 1.0, size))
    ax = axes[0, 0]
    annotated_heatmap(ax, a, list(keys), list(keys), cmap="Blues", diverging=False)
    ax.set_xlabel("source prompt")
    ax.set_ylabel("target prompt")
    ax.set_title(title or "AMP attention over source prompts")
    return save_figure(fig, path)


# -- IPT ----------------------------------------------------------------------------------------


def _recovery_points(results: Sequence[RecoveryResult], group: str) -> list[tuple[int, float]]:
    pts = []
    for r in results:
        value = r.seen if group == "seen" else r.unseen
        if value is not None:
            pts.append((r.intrinsic_dim, value["mean_ratio"]))
    return sorted(pts)


def write_recovery_csv(results: Sequence[RecoveryResult], path: str | Path) -> Path:
    """One row per (d_I, target task): IST, full PT, recovery, the controls, seen or not, the
    untrained score and the gain recovery where known."""
    header = [
        "intrinsic_dim", "key", "task", "lang", "seen", "ist", "full", "recovery",
        "random_decoder", "decoded_init_pt", "untrained", "gain_recovery",
    ]  # fmt: skip
    rows = [
        [
            r.intrinsic_dim,
            row.key,
            row.task,
            row.lang,
            row.seen,
            row.ist,
            row.full,
            row.recovery,
            row.random_decoder,
            row.decoded_init_pt,
            row.untrained,
            row.gain_recovery,
        ]
        for r in results
        for row in r.rows
    ]
    return write_csv_atomic(Path(path), header, rows)


def recovery_markdown(results: Sequence[RecoveryResult]) -> str:
    """Recovery against d_I as a markdown table: per d_I the seen and unseen means of IST /
    full PT (the paper's recovery) and, where untrained scores are known, of the gain
    recovery (IST − untrained) / (full − untrained); then one row per target task."""

    def pct(value: float | None) -> str:
        return "—" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"

    def group(r: RecoveryResult, name: str, key: str) -> str:
        g = r.seen if name == "seen" else r.unseen
        return pct(None if g is None else g.get(key))

    lines = [
        "| d_I | seen | unseen | seen, gain | unseen, gain |",
        "|---|---|---|---|---|",
    ]
    ordered = sorted(results, key=lambda r: r.intrinsic_dim)
    for r in ordered:
        cells = [
            group(r, n, k) for k in ("mean_ratio", "gain_recovery") for n in ("seen", "unseen")
        ]
        lines.append(f"| {r.intrinsic_dim} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| d_I | target | seen | untrained | IST | full | recovery | gain recovery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        for row in r.rows:
            untrained = "—" if row.untrained is None else f"{100 * row.untrained:.1f}"
            lines.append(
                f"| {r.intrinsic_dim} | {row.key} | {'yes' if row.seen else 'no'} | {untrained} "
                f"| {100 * row.ist:.1f} | {100 * row.full:.1f} | {pct(row.recovery)} "
                f"| {pct(row.gain_recovery)} |"
            )
    return "\n".join(lines) + "\n"


def _diff(estimate: Mapping[str, Any] | None) -> str:
    """A paired difference as "+3.1 [−0.5, +6.8]" (points), with * when significant."""
    if estimate is None:
        return "—"
    mark = "*" if estimate.get("significant") else ""
    value, low, high = (100 * float(estimate[k]) for k in ("value", "low", "high"))
    return f"{value:+.1f}{mark} [{low:+.1f}, {high:+.1f}]"


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _with_ci(c: ScoreComparison) -> str:
    if c.low is None or c.high is None:
        return _points(c.score)
    return f"{100 * c.score:.1f} [{100 * c.low:.1f}, {100 * c.high:.1f}]"


def own_composition_markdown(result: OwnComposition) -> str:
    """A grid's composition step as markdown: AMP's composed prompts and the IST prompt, each
    beside its target's own and untrained prompts, with the paired differences (points; *: the
    95% interval excludes 0) and, for IST, recovery and gain recovery."""

    def pct(value: float | None) -> str:
        return "—" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"

    lines = [f"# Composition of the own prompts ({result.model})", ""]
    header = (
        "| target | untrained | own prompt | {m} [95% CI] | {m} − own | {m} − untrained |"
        " recovery | gain recovery |\n|---|---|---|---|---|---|---|---|"
    )
    if result.amp:
        lines += [
            f"## AMP ({result.amp_lang}: attention over {', '.join(result.attention_keys)})",
            "",
            header.format(m="AMP"),
        ]
        for c in result.amp:
            lines.append(
                f"| {c.key} | {_points(c.untrained)} | {_points(c.own)} | {_with_ci(c)} "
                f"| {_diff(c.minus_own)} | {_diff(c.minus_untrained)} | {pct(c.recovery)} "
                f"| {pct(c.gain_recovery)} |"
            )
        if result.attention is not None:
            keys = result.attention_keys
            lines += ["", "Attention (rows: targets, columns: sources):", ""]
            lines += ["| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for key, row in zip(keys, result.attention, strict=False):
                lines.append(f"| {key} | " + " | ".join(f"{w:.2f}" for w in row) + " |")
        lines.append("")
    if result.ipt is not None:
        c = result.ipt
        seen = "seen: in the fit" if result.ipt_seen else "unseen: left out of the fit"
        mse = result.ipt_reconstruction_mse
        lines += [
            f"## IPT (d_I = {result.ipt_dim}; fitted on {', '.join(result.ipt_fitted)}; "
            f"reconstruction MSE {'—' if mse is None else f'{mse:.3f}'})",
            "",
            f"Intrinsic subspace tuning of {c.key} ({seen}): only z trains.",
            "",
            header.format(m="IST"),
            f"| {c.key} | {_points(c.untrained)} | {_points(c.own)} | {_with_ci(c)} "
            f"| {_diff(c.minus_own)} | {_diff(c.minus_untrained)} | {pct(c.recovery)} "
            f"| {pct(c.gain_recovery)} |",
            "",
        ]
    lines.append(
        "Scores in points (test); differences are paired on the same test examples; "
        "recovery = composed / own, gain recovery = (composed − untrained) / (own − untrained)."
    )
    return "\n".join(lines) + "\n"


def plot_recovery_vs_dim(
    results: Sequence[RecoveryResult], path: str | Path, *, paper: bool = True
) -> Path:
    """Recovery (mean over tasks of IST / PT) against d_I, seen and unseen tasks as two lines;
    with ``paper`` the paper's points (d_I = 5: 87% / 65%; d_I = 250: 97% / 83%) as markers."""
    fig, axes = subplots(1, 1, panel=(4.5, 3.2))
    ax = axes[0, 0]
    for group, style in (("seen", "o-"), ("unseen", "s--")):
        pts = _recovery_points(results, group)
        if pts:
            ax.plot([d for d, _ in pts], [v * 100 for _, v in pts], style, label=f"{group} tasks")
    if paper:
        ax.plot([5, 250], [87, 97], "k^", alpha=0.5, label="paper, seen")
        ax.plot([5, 250], [65, 83], "kv", alpha=0.5, label="paper, unseen")
    ax.set_xscale("log")
    ax.set_xlabel("intrinsic dimension d_I")
    ax.set_ylabel("recovery (% of full prompt tuning)")
    ax.axhline(100, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0, keepdims=True)
    if x.shape[1] == 1:
        return np.concatenate([centred, np.zeros_like(centred)], axis=1)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.asarray(centred @ vt[:2].T)
    if xy.shape[1] < 2:  # fewer vectors than two: the missing axis is zero
        xy = np.concatenate([xy, np.zeros((xy.shape[0], 2 - xy.shape[1]))], axis=1)
    return xy


def plot_intrinsic_pca(
    vectors: Any,
    tasks: Sequence[str],
    langs: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """PCA of intrinsic vectors enc(P): colour = task, marker = language (d_I = 1: the value on
    the x axis)."""
    x = np.asarray(vectors, dtype=float)
    if x.ndim != 2 or x.shape[0] != len(tasks) or len(tasks) != len(langs):
        raise ValueError("one task and one language per intrinsic vector")
    xy = _pca_2d(x)
    fig, axes = subplots(1, 1, panel=(4.5, 3.6))
    ax = axes[0, 0]
    colours = {t: f"C{i % 10}" for i, t in enumerate(sorted(set(tasks)))}
    markers = {lang: "osD^v*"[i % 6] for i, lang in enumerate(sorted(set(langs)))}
    seen: set[tuple[str, str]] = set()
    for (px, py), task, lang in zip(xy, tasks, langs, strict=True):
        label = f"{task}-{lang}" if (task, lang) not in seen else None
        seen.add((task, lang))
        ax.scatter(px, py, c=colours[task], marker=markers[lang], label=label, s=36)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2" if x.shape[1] > 1 else "")
    ax.set_title(title or f"intrinsic vectors (d_I = {x.shape[1]})")
    ax.legend(fontsize=7, ncol=2)
    if not math.isfinite(float(np.abs(xy).sum())):
        raise ValueError("intrinsic vectors are not finite")
    return save_figure(fig, path)
