"""Tables and heatmaps of a transfer grid, built from the results database (so the cells of
several shards or machines, merged into one database, give one report).

Files written to ``<grid out>/report/``:

* ``cross_task_<lang>_<method>.csv`` — thesis Tables 7–10 layout: rows = target task,
  columns = source task, diagonal = the baseline (target trained from scratch), scores ×100;
* ``cross_lang_<method>.csv`` — Tables 11–12: rows ``en_to_ko`` / ``ko_to_en``, columns = task
  (transferred score), plus the baselines of the target language for reference;
* ``zero_shot_<method>.csv`` — Tables 13–14: rows ``en_to_ko`` (source language segment) and
  ``en_to_ko*`` (target language segment), …;
* ``cells.csv`` — every cell in long form: score, baseline, transferred − baseline, relative
  score, steps to 90% of the baseline's best dev score (transfer and baseline);
* ``transfer_heatmaps.png`` — transferred − baseline (×100), one row of panels per method:
  cross-task per language (rows = source, columns = target) and cross-language
  (rows = source→target language, columns = task), like thesis Figures 8–9.

Scores are means over seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptatlas.io import write_csv_atomic as _write_csv
from promptatlas.io import write_text_atomic

__all__ = ["TransferLayout", "summary_markdown", "write_transfer_report"]


@dataclass(frozen=True)
class TransferLayout:
    """What the tables of a transfer grid show: its name and model, the methods, tasks and
    languages of its experiment, the source and target tasks of cross-task transfer, and which
    kinds of transfer it ran. The grid study fills it; the report never sees the grid's config."""

    name: str
    model: str
    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    langs: tuple[str, ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    cross_task: bool
    cross_lang: bool
    zero_shot: bool


def _ci(pair: Sequence[float] | None) -> str:
    return "" if not pair else f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def _diff(est: dict[str, Any] | None) -> str:
    """A paired difference ×100 with its interval and * when the interval excludes zero."""
    if not est:
        return "–"
    star = "*" if est.get("significant") else ""
    return f"{100 * est['value']:+.1f}{star} [{100 * est['low']:+.1f}, {100 * est['high']:+.1f}]"


def _cell_name(r: dict[str, Any]) -> str:
    if r["kind"] == "base":
        return f"{r['task']}-{r['lang']}"
    if r["kind"] == "task":
        return f"{r['source_task']} → {r['task']} ({r['lang']})"
    seg = " (target lang. segment)" if r.get("lang_segment") == "target" else ""
    return f"{r['task']} {r['source_lang']} → {r['lang']}{seg}"


def summary_markdown(rows: Sequence[dict[str, Any]], title: str) -> str:
    """Every cell's score with its 95% bootstrap CI and the paired differences (trained −
    untrained, transfer − baseline) with theirs; * = the interval excludes zero."""
    kinds = {
        "base": "Task sub-prompts (baselines): trained vs untrained",
        "task": "Cross-task transfer",
        "language": "Cross-language transfer",
        "zero": "Zero-shot cross-language (no training)",
    }
    lines = [
        f"# {title}",
        "",
        "Scores ×100 on the test examples (n per row), with 95% bootstrap intervals; "
        "differences are paired over the same examples (* = the interval excludes 0). "
        "Untrained = the target task's prompt before training (its initialisation).",
    ]
    for kind, heading in kinds.items():
        sub = [r for r in rows if r["kind"] == kind]
        if not sub:
            continue
        lines += ["", f"## {heading}", ""]
        if kind == "base":
            lines += [
                "| method | task | n | untrained | trained | trained − untrained |",
                "|---|---|---|---|---|---|",
            ]
            for r in sub:
                untrained = r["zero_shot_init"] if r.get("zero_shot_init") is not None else None
                u = r.get("untrained_score")
                lines.append(
                    f"| {r['method']} | {_cell_name(r)} | {r.get('n') or ''} | "
                    f"{_fmt1(u if u is not None else untrained)} {_ci(r.get('untrained_ci'))} | "
                    f"{_fmt1(r['score'])} {_ci(r.get('ci'))} | {_diff(r.get('gain'))} |"
                )
        elif kind == "zero":
            lines += [
                "| method | cell | n | score | target's baseline | zero-shot − baseline |",
                "|---|---|---|---|---|---|",
            ]
            for r in sub:
                lines.append(
                    f"| {r['method']} | {_cell_name(r)} | {r.get('n') or ''} | "
                    f"{_fmt1(r['score'])} {_ci(r.get('ci'))} | {_fmt1(r.get('baseline'))} | "
                    f"{_diff(r.get('delta_ci'))} |"
                )
        else:
            lines += [
                "| method | transfer | n | score | baseline | transfer − baseline | "
                "transfer − untrained | steps to 90% (transfer / baseline) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in sub:
                steps = f"{r.get('steps_to_90') or '–'} / {r.get('baseline_steps_to_90') or '–'}"
                lines.append(
                    f"| {r['method']} | {_cell_name(r)} | {r.get('n') or ''} | "
                    f"{_fmt1(r['score'])} {_ci(r.get('ci'))} | {_fmt1(r.get('baseline'))} | "
                    f"{_diff(r.get('delta_ci'))} | {_diff(r.get('vs_untrained'))} | {steps} |"
                )
    return "\n".join(lines) + "\n"


def _fmt1(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(nums) / len(nums) if nums else None


def _by(rows: Sequence[dict[str, Any]], *keys: str, value: str = "score") -> dict[Any, float]:
    groups: dict[Any, list[Any]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r[value])
    return {k: m for k, v in groups.items() if (m := _mean(v)) is not None}


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _pair(src: str, tgt: str) -> str:
    return f"{src}_to_{tgt}"


def write_transfer_report(
    rows: Sequence[dict[str, Any]], layout: TransferLayout, out: Path
) -> list[Path]:
    """Write the CSV tables and the heatmap figure of the finished cells ``rows`` (one mapping
    per cell, as the grid study reads them from the results database) into ``out``; returns the
    files written."""
    exp = spec = layout
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fields = list(rows[0]) if rows else ["kind"]
    written.append(
        _write_csv(out / "cells.csv", fields, [[r.get(f) for f in fields] for r in rows])
    )
    write_text_atomic(
        out / "summary.md", summary_markdown(rows, f"{layout.name}: results with intervals")
    )
    written.append(out / "summary.md")
    base = _by([r for r in rows if r["kind"] == "base"], "method", "task", "lang")
    task_rows = [r for r in rows if r["kind"] == "task"]
    task_score = _by(task_rows, "method", "lang", "source_task", "task")
    task_delta = _by(task_rows, "method", "lang", "source_task", "task", value="delta")
    lang_rows = [r for r in rows if r["kind"] == "language"]
    lang_score = _by(lang_rows, "method", "source_lang", "lang", "task")
    lang_delta = _by(lang_rows, "method", "source_lang", "lang", "task", value="delta")
    zero = _by(
        [r for r in rows if r["kind"] == "zero"],
        "method",
        "source_lang",
        "lang",
        "task",
        "lang_segment",
    )
    sources = list(spec.sources or exp.tasks)
    targets = list(spec.targets or exp.tasks)
    pairs = [(s, t) for s in exp.langs for t in exp.langs if s != t]
    for method in exp.methods:
        if spec.cross_task:
            for lang in exp.langs:
                body = []
                for tgt in targets:
                    line: list[str] = [tgt]
                    for src in sources:
                        value = (
                            base.get((method, tgt, lang))
                            if src == tgt
                            else task_score.get((method, lang, src, tgt))
                        )
                        line.append(_fmt(value))
                    body.append(line)
                written.append(
                    _write_csv(
                        out / f"cross_task_{lang}_{method}.csv",
                        ["target \\ source", *sources],
                        body,
                    )
                )
        if spec.cross_lang:
            body = [
                [_pair(s, t), *(_fmt(lang_score.get((method, s, t, task))) for task in exp.tasks)]
                for s, t in pairs
            ]
            body += [
                [f"baseline_{lang}", *(_fmt(base.get((method, task, lang))) for task in exp.tasks)]
                for lang in exp.langs
            ]
            written.append(_write_csv(out / f"cross_lang_{method}.csv", ["", *exp.tasks], body))
        if spec.zero_shot:
            body = []
            for s, t in pairs:
                for segment, mark in (("source", ""), ("target", "*")):
                    body.append(
                        [
                            _pair(s, t) + mark,
                            *(_fmt(zero.get((method, s, t, task, segment))) for task in exp.tasks),
                        ]
                    )
            written.append(_write_csv(out / f"zero_shot_{method}.csv", ["", *exp.tasks], body))
    if task_delta or lang_delta:
        written.append(
            _heatmaps(
                out / "transfer_heatmaps.png",
                layout,
                sources,
                targets,
                pairs,
                task_delta,
                lang_delta,
            )
        )
    return written


def _heatmaps(
    path: Path,
    layout: TransferLayout,
    sources: Sequence[str],
    targets: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    task_delta: dict[Any, float],
    lang_delta: dict[Any, float],
) -> Path:
    import numpy as np

    from promptatlas.report.figures import annotated_heatmap, save_figure, subplots

    exp = spec = layout
    methods = list(exp.methods)
    panels: list[tuple[str, list[str], list[str], Any]] = []
    for method in methods:
        if spec.cross_task:
            for lang in exp.langs:
                grid_values = np.full((len(sources), len(targets)), np.nan)
                for i, src in enumerate(sources):
                    for j, tgt in enumerate(targets):
                        v = task_delta.get((method, lang, src, tgt))
                        if v is not None:
                            grid_values[i, j] = 100 * v
                panels.append(
                    (f"{method} cross-task ({lang})", list(sources), list(targets), grid_values)
                )
        if spec.cross_lang:
            grid_values = np.full((len(pairs), len(exp.tasks)), np.nan)
            for i, (s, t) in enumerate(pairs):
                for j, task in enumerate(exp.tasks):
                    v = lang_delta.get((method, s, t, task))
                    if v is not None:
                        grid_values[i, j] = 100 * v
            panels.append(
                (
                    f"{method} cross-language",
                    [f"{s}→{t}" for s, t in pairs],
                    list(exp.tasks),
                    grid_values,
                )
            )
    per_row = len(panels) // max(len(methods), 1)
    finite = [abs(float(x)) for _, _, _, g in panels for x in g.ravel() if np.isfinite(x)]
    limit = max(finite) if finite else 1.0
    fig, axes = subplots(len(methods), per_row, panel=(3.4, 2.9))
    for ax, (title, rows, cols, values) in zip(axes.ravel(), panels, strict=False):
        annotated_heatmap(ax, values, rows, cols, limit=limit, fmt="{:+.1f}")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("source")
        ax.set_xlabel("target")
    fig.suptitle(f"{layout.name}: transferred − baseline (score ×100) on {exp.model}", fontsize=11)
    return save_figure(fig, path)
