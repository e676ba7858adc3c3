"""Studies over several prompts: transferability indicators of a finished grid, and source
suggestions for a new task (spec §B, docs/skill-neurons.md).

* :func:`grid_indicators` — every indicator (embedding, ON per layer/window/all, skill-neuron
  overlap and predictivity correlation) between the own prompts of a finished grid's tasks,
  correlated (Spearman) with the transfer the grid measured, T(s→t) = transferred score /
  target's own score, per target and pooled; tables, a bar chart and scatters.
* :func:`suggest_sources` — rank the task prompts of a bank as sources for a new task by one
  indicator, before any transfer training.
* :func:`perturbation_matrix` — the task × task (or language × language) matrix: perturb the
  skill neurons found for A inside the model prompted for B, evaluate B.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptatlas.analysis.indicators import (
    EMBEDDING_INDICATORS,
    IndicatorCorrelation,
    Suggestion,
    correlate_indicators,
    pairwise_indicators,
    probe_prompt_indicators,
    probe_skill_indicators,
    prompt_states,
    rank_indicators,
    suggest,
)
from promptatlas.analysis.skill import (
    CrossTaskPerturbation,
    EvalSetup,
    Predictivity,
    cross_task_perturbation,
    neuron_predictivity,
    select_skill_neurons,
)
from promptatlas.bank import list_prompts, load_prompt, read_metadata
from promptatlas.bank.store import versions
from promptatlas.formatting import TaskFormatter
from promptatlas.io import write_json_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.models.precision import hardware_info
from promptatlas.prompts import SoftPrompt
from promptatlas.report.skill import (
    cross_task_csv,
    cross_task_figure,
    indicator_bar_figure,
    indicator_csv,
    indicator_scatter_figure,
)
from promptatlas.tasks import get_task, load_split

__all__ = [
    "SKILL_INDICATORS",
    "SUGGEST_INDICATOR",
    "TRANSFER_MEASURES",
    "GridIndicators",
    "best_indicator",
    "grid_indicators",
    "grid_transfer",
    "perturbation_matrix",
    "suggest_sources",
    "zero_shot_pairs",
    "zero_shot_transfer",
]

Log = Callable[[str], Any]
Pair = tuple[str, str]

SKILL_INDICATORS: tuple[str, ...] = ("skill_overlap", "skill_corr")
# The default indicator of ``suggest``: the Spearman ρ of the predictivity vectors. Wang et al.
# find skill-neuron indicators better than ON; of the two, ρ uses every neuron and so is
# less noisy than the overlap of the top 1% when the probe has only tens of examples.
SUGGEST_INDICATOR = "skill_corr"


def _quiet(_: str) -> None:
    return None


# -- the grid's measured transfer -------------------------------------------------------------


# How the transfer T(s→t) an indicator is correlated with is measured: "zero-shot" evaluates
# the source's own prompt on the target's test split and divides by the target's own prompt on
# the same examples (SPEC B4, Su et al.); "init" reads the grid's transfer cells (the source
# segment as the initialisation of a prompt trained on the target).
TRANSFER_MEASURES: tuple[str, ...] = ("zero-shot", "init")


@dataclass
class GridTransfer:
    """Transfer pairs of a grid: node = ``method/s<seed>/<task>-<lang>``; ``prompts`` the
    own prompt directory of each node; ``transfer`` T(s→t) per (source node, target node)
    (empty for ``zero-shot`` until :func:`zero_shot_transfer` measures it); ``kinds`` every
    pair's kind; for zero-shot, ``scores`` the source prompt's score on the target and ``own``
    each target's own score on the same examples."""

    prompts: dict[str, Path]
    transfer: dict[Pair, float]
    kinds: dict[Pair, str] = field(default_factory=dict)
    scores: dict[Pair, float] = field(default_factory=dict)
    own: dict[str, float] = field(default_factory=dict)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _node_parts(node: str) -> tuple[str, str, str]:
    """``method/s<seed>/<task>-<lang>`` → (group ``method/s<seed>``, task, lang)."""
    group, name = node.rsplit("/", 1)
    task, lang = name.rsplit("-", 1)
    return group, task, lang


def zero_shot_pairs(nodes: Sequence[str]) -> dict[Pair, str]:
    """The ordered pairs whose zero-shot transfer is measured, with their kind: within one
    method and seed, every other task of the same language (``cross_task``) and the same task
    in every other language (``cross_language``)."""
    pairs: dict[Pair, str] = {}
    for s in nodes:
        gs, ts, ls = _node_parts(s)
        for t in nodes:
            gt, tt, lt = _node_parts(t)
            if s == t or gs != gt:
                continue
            if ls == lt:
                pairs[(s, t)] = "cross_task"
            elif ts == tt:
                pairs[(s, t)] = "cross_language"
    return pairs


def grid_transfer(grid_dir: str | Path, *, measure: str = "init") -> GridTransfer:
    """The own prompts and the transfer pairs of a finished grid (its ``report/cells.csv``,
    written by ``promptatlas grid``). ``measure`` "init": T from the grid's cross-task and
    cross-language cells; "zero-shot": the pairs of :func:`zero_shot_pairs` over the grid's
    own prompts, T left to :func:`zero_shot_transfer` (no transfer cell is needed)."""
    if measure not in TRANSFER_MEASURES:
        raise ValueError(
            f"transfer measure must be one of {', '.join(TRANSFER_MEASURES)}, got {measure!r}"
        )
    grid_dir = Path(grid_dir)
    cells = grid_dir / "report" / "cells.csv"
    if not cells.exists():
        cells = grid_dir / "cells.csv"
    if not cells.exists():
        raise FileNotFoundError(
            f"{grid_dir} holds no report/cells.csv; give the output folder of a finished "
            "`promptatlas grid` run"
        )
    with open(cells, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    prompts: dict[str, Path] = {}
    transfer: dict[Pair, float] = {}
    kinds: dict[Pair, str] = {}

    def node(r: Mapping[str, str], task: str, lang: str) -> str:
        return f"{r['method']}/s{r['seed']}/{task}-{lang}"

    for r in rows:
        if r.get("kind") == "base" and r.get("prompt_dir"):
            prompts[node(r, r["task"], r["lang"])] = Path(r["prompt_dir"])
    if measure == "zero-shot":
        kinds = zero_shot_pairs(sorted(prompts))
        if not kinds:
            raise ValueError(
                f"{cells} has no two own prompts of one method and seed that share a task or "
                "a language; the grid needs at least two tasks or two languages"
            )
        return GridTransfer(prompts, {}, kinds)
    for r in rows:
        kind = r.get("kind")
        if kind == "task":
            src = node(r, r["source_task"], r["lang"])
        elif kind == "language":
            src = node(r, r["task"], r["source_lang"])
        else:
            continue
        tgt = node(r, r["task"], r["lang"])
        value = _float(r.get("relative"))
        if value is None:
            score, base = _float(r.get("score")), _float(r.get("baseline"))
            value = score / base if score is not None and base else None
        if value is not None:
            transfer[(src, tgt)] = value
            kinds[(src, tgt)] = "cross_task" if kind == "task" else "cross_language"
    if not transfer:
        raise ValueError(
            f"{cells} has no finished cross-task or cross-language transfer cell; run the grid "
            "to the end (or enable transfer.cross_task / cross_lang)"
        )
    return GridTransfer(prompts, transfer, kinds)


def zero_shot_transfer(
    grid: GridTransfer,
    handle: ModelHandle,
    *,
    test_limit: int | None = 200,
    label_words: str = "source",
    data_dir: str | None = None,
    reuse_stored: bool = False,
    log: Log = _quiet,
) -> GridTransfer:
    """Measure T(s→t) = score(P_s on t) / score(P_t on t) for every pair of ``grid.kinds``:
    each prompt is evaluated as trained on the target's test split (its first ``test_limit``
    examples, the target prompt's input format and evaluation settings); the own score is the
    target's prompt on the same examples. ``label_words`` as in
    :func:`promptatlas.runs.transfer.zero_shot` (the source's words where the label keys match,
    i.e. the same task in another language). A pair whose own score is 0 gets no T.

    With ``reuse_stored`` (a grid whose cells have just evaluated their prompts with these
    settings) the own score is read from the target prompt's stored test evaluation where that
    holds per-example predictions for at least these examples, in the same mode, on the same
    data files (the prompt's own format and evaluation settings, so the same predictions): no
    second evaluation."""
    from promptatlas.runs.transfer import zero_shot

    targets = sorted({t for _, t in grid.kinds})
    metas = {n: read_metadata(grid.prompts[n]) for n in grid.prompts}
    stored = {
        t: _stored_own_score(metas[t], test_limit, data_dir) if reuse_stored else None
        for t in targets
    }
    todo = sum(v is None for v in stored.values()) + len(grid.kinds)
    done = 0
    started = time.perf_counter()

    def score(source: str, target: str, kind: str = "own") -> float:
        nonlocal done
        meta = metas[target]
        assert meta.task is not None and meta.lang is not None
        known = stored[target] if kind == "own" else None
        if known is not None:
            log(f"  own {target}: {100 * known:.1f} (its stored test evaluation)")
            return known
        result = zero_shot(
            grid.prompts[source],
            meta.task,
            meta.lang,
            # the source's label words only for the same task in another language
            label_words=label_words if kind == "cross_language" else "target",  # type: ignore[arg-type]
            limit=test_limit,
            data_dir=data_dir,
            eval_config=meta.run.eval,
            handle=handle,
            fmt=meta.run.format,
        )
        done += 1
        rate = (time.perf_counter() - started) / done
        log(
            f"  zero-shot {source} on {target}: {100 * result.score:.1f} "
            f"({done}/{todo}, ETA {rate * (todo - done):.0f}s)"
        )
        return result.score

    own = {t: score(t, t) for t in targets}
    scores: dict[Pair, float] = {}
    transfer: dict[Pair, float] = {}
    for s, t in sorted(grid.kinds):
        scores[(s, t)] = score(s, t, grid.kinds[(s, t)])
        if own[t] > 0:
            transfer[(s, t)] = scores[(s, t)] / own[t]
    return dataclasses.replace(grid, transfer=transfer, scores=scores, own=own)


def _stored_own_score(meta: Any, test_limit: int | None, data_dir: str | None) -> float | None:
    """A prompt's score on its first ``test_limit`` test examples, from the per-example
    predictions its own test evaluation stored (None when it has none, fewer examples, was
    evaluated in another mode than its settings give, or on other data or changed files)."""
    from promptatlas.evaluation.evaluate import stored_examples
    from promptatlas.tasks.registry import changed_data

    run = getattr(meta, "run", None)
    if test_limit is None or run is None or getattr(run, "data_dir", None) != data_dir:
        return None
    summary = (meta.metrics or {}).get("test") or {}
    mode = getattr(getattr(run, "eval", None), "mode", "auto")
    if summary.get("mode") != ("rank" if mode == "auto" else mode):
        return None  # only classification prompts evaluated by rank classification
    examples = stored_examples(summary)
    if examples is None or len(examples) < test_limit:
        return None
    if changed_data(meta.data_files, meta.task, meta.lang, data_dir):
        return None
    return float(examples.metric()(np.arange(test_limit)))


# -- indicators of a grid ---------------------------------------------------------------------


@dataclass
class GridIndicators:
    """Indicator values per pair, the measured transfer, and each indicator's correlation."""

    values: dict[str, dict[Pair, float]]
    transfer: dict[Pair, float]
    correlations: dict[str, IndicatorCorrelation]
    ranking: list[str]


def _predictivity(
    handle: ModelHandle,
    prompt: SoftPrompt,
    task: str,
    lang: str,
    *,
    train_limit: int,
    dev_limit: int,
    state: str,
    data_dir: str | None,
    formatter: TaskFormatter | None = None,
    log: Log | None = None,
) -> Predictivity | None:
    variant = get_task(task, lang)
    if variant.spec.kind != "classification":
        return None
    fmt = formatter or TaskFormatter(handle.tokenizer, variant)
    train = load_split(task, lang, "train", data_dir=data_dir, limit=train_limit)
    dev = load_split(task, lang, "dev", data_dir=data_dir, limit=dev_limit)
    try:
        return neuron_predictivity(
            handle, prompt, fmt, train, dev, state=state, name=f"{task}-{lang}"
        )
    except ValueError as exc:  # e.g. a class missing from a small held-out sample
        if log is not None:
            log(f"no predictivity for {task}-{lang}: {exc} (raise the train/dev limits)")
        return None


def grid_indicators(
    grid_dir: str | Path,
    out: str | Path,
    *,
    p: float = 0.01,
    state: str = "down_input",
    skill: bool = True,
    train_limit: int = 128,
    dev_limit: int = 128,
    transfer: str = "zero-shot",
    test_limit: int | None = 200,
    label_words: str = "source",
    data_dir: str | None = None,
    handle: ModelHandle | None = None,
    reuse_stored: bool = False,
    log: Log = _quiet,
) -> GridIndicators:
    """Indicators between the own prompts of a finished grid, correlated with its measured
    transfer: ``transfer`` "zero-shot" measures T(s→t) = score(P_s on t) / score(P_t on t) on
    ``test_limit`` test examples of each target (SPEC B4; :func:`zero_shot_transfer`), "init"
    reads the grid's cross-task and cross-language cells. Skill-neuron indicators (``skill``)
    read each classification task's predictivity through its own prompt
    (``train_limit``/``dev_limit`` examples). ``reuse_stored``: see
    :func:`zero_shot_transfer` (the grid's own analysis step sets it). Writes
    ``indicators.csv`` (ρ per indicator), ``indicators.png`` (bar chart), ``scatter.png``,
    ``pairs.csv`` (every indicator and T per pair), ``indicators.json`` and ``run.json``."""
    if test_limit is not None and test_limit < 1:
        raise ValueError(f"test_limit must be ≥ 1 (or None for all), got {test_limit}")
    started = time.perf_counter()
    grid = grid_transfer(grid_dir, measure=transfer)
    nodes = sorted({n for pair in grid.kinds for n in pair})
    missing = [n for n in nodes if n not in grid.prompts]
    if missing:
        raise ValueError(f"the grid's own prompts are missing for {missing}")
    metas = {n: read_metadata(grid.prompts[n]) for n in nodes}
    models = sorted({m.model for m in metas.values()})
    if len(models) > 1:
        raise ValueError(f"the grid's prompts belong to several models {models}")
    handle = handle or load_model(models[0])
    prompts = {n: load_prompt(grid.prompts[n], handle).prompt.to(handle.device) for n in nodes}
    log(f"{len(grid.kinds)} transfer pairs over {len(nodes)} prompts on {handle.name}")
    if transfer == "zero-shot":
        log(f"zero-shot transfer on {test_limit or 'all'} test examples per target")
        grid = zero_shot_transfer(
            grid, handle, test_limit=test_limit, label_words=label_words, data_dir=data_dir,
            reuse_stored=reuse_stored, log=log,
        )  # fmt: skip
    first = metas[nodes[0]]
    assert first.task is not None and first.lang is not None
    separator = TaskFormatter(handle.tokenizer, get_task(first.task, first.lang), first.run.format)
    values: dict[str, dict[Pair, float]] = {}
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(n.rsplit("/", 1)[0], []).append(n)
    for group in groups.values():
        pairs = [pair for pair in grid.transfer if pair[0] in group and pair[1] in group]
        states = prompt_states(handle, {n: prompts[n] for n in group}, separator, state=state)
        preds: dict[str, Predictivity] = {}
        if skill:
            for n in group:
                meta = metas[n]
                assert meta.task is not None and meta.lang is not None
                fmt = TaskFormatter(
                    handle.tokenizer, get_task(meta.task, meta.lang), meta.run.format
                )
                pred = (
                    _predictivity(
                        handle,
                        prompts[n],
                        meta.task,
                        meta.lang,
                        train_limit=train_limit,
                        dev_limit=dev_limit,
                        state=state,
                        data_dir=data_dir,
                        formatter=fmt,
                        log=log,
                    )
                    if fmt.task.spec.kind == "classification"
                    else None
                )
                if pred is not None:
                    preds[n] = pred
        found = pairwise_indicators(
            group,
            prompts={n: prompts[n] for n in group},
            states=states,
            predictivities=preds or None,
            p=p,
            pairs=pairs,
        )
        for name, by_pair in found.items():
            values.setdefault(name, {}).update(by_pair)
    correlations = correlate_indicators(values, grid.transfer)
    ranking = rank_indicators(correlations)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ordered = {k: correlations[k] for k in ranking}
    indicator_csv(ordered, out / "indicators.csv")
    main = [
        k
        for k in ranking
        if k in (*EMBEDDING_INDICATORS, "on_all", "on_mean", *SKILL_INDICATORS, "skill_on")
    ]
    indicator_bar_figure({k: correlations[k] for k in main} or ordered, out / "indicators.png")
    indicator_scatter_figure(correlations, out / "scatter.png", names=main or ranking[:8])
    names = sorted(values)
    with open(out / "pairs.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "kind", "transfer", "score", "own", *names])
        for pair, t in sorted(grid.transfer.items()):
            w.writerow(
                [pair[0], pair[1], grid.kinds.get(pair, ""), t]
                + [grid.scores.get(pair, ""), grid.own.get(pair[1], "")]
                + [values[n].get(pair, "") for n in names]
            )
    write_json_atomic(
        out / "indicators.json",
        {
            "grid": str(grid_dir),
            "transfer_measure": transfer,
            "ranking": ranking,
            "correlations": {k: c.to_dict() for k, c in correlations.items()},
            "transfer": {f"{s}>{t}": v for (s, t), v in grid.transfer.items()},
            "kinds": {f"{s}>{t}": v for (s, t), v in grid.kinds.items()},
            "zero_shot_scores": {f"{s}>{t}": v for (s, t), v in grid.scores.items()},
            "own_scores": grid.own,
        },
    )
    write_json_atomic(
        out / "run.json",
        {
            "kind": "indicators",
            "grid": str(grid_dir),
            "config": {
                "p": p,
                "state": state,
                "skill": skill,
                "train_limit": train_limit,
                "dev_limit": dev_limit,
                "transfer": transfer,
                "test_limit": test_limit,
                "label_words": label_words,
                "data_dir": data_dir,
            },
            "model": handle.name,
            "hardware": hardware_info(handle.device),
            "versions": versions(),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    for k in ranking[:10]:
        c = correlations[k]
        per_target = (
            f"ρ mean {c.mean:+.3f} ± {c.std:.3f}"
            if math.isfinite(c.mean)
            else "ρ per target: none (a target needs two sources)"
        )
        log(f"{k:14s} {per_target}  pooled {c.pooled:+.3f} (n={c.n_pairs})")
    return GridIndicators(values, grid.transfer, correlations, ranking)


# -- suggest sources for a new task -------------------------------------------------------------


def best_indicator(indicators_dir: str | Path, *, prompts: bool = False) -> str:
    """The best-ranked indicator of an ``indicators`` output folder (``indicators.json``) that
    a probe can compute: a skill-neuron one, or with ``prompts`` (a probe prompt) any
    embedding or ON indicator too. Indicators without a finite ρ are never chosen."""
    path = Path(indicators_dir) / "indicators.json"
    if not path.exists():
        raise FileNotFoundError(f"{indicators_dir} holds no indicators.json; run `indicators`")
    data = json.loads(path.read_text(encoding="utf-8"))
    for name in data.get("ranking", []):  # by mean per-target ρ, then pooled ρ
        c = data["correlations"].get(name, {})
        rhos = [c.get("mean"), c.get("pooled")]
        if not any(r is not None and math.isfinite(float(r)) for r in rhos):
            continue
        if name in SKILL_INDICATORS or (prompts and name != "skill_on"):
            return str(name)
    raise ValueError(
        f"no indicator in {path} with a finite ρ that this probe can compute"
        + ("" if prompts else "; give --probe-prompt to allow embedding and ON indicators")
    )


def suggest_sources(
    task: str,
    lang: str,
    bank: str | Path,
    *,
    top: int = 3,
    indicator: str = SUGGEST_INDICATOR,
    probe_prompt: str | Path | None = None,
    p: float = 0.01,
    train_limit: int = 64,
    dev_limit: int = 64,
    data_dir: str | None = None,
    model: str | None = None,
    handle: ModelHandle | None = None,
    log: Log = _quiet,
) -> tuple[list[Suggestion], dict[str, dict[str, float]]]:
    """Rank the task prompts of ``bank`` (one model) as transfer sources for ``task``/``lang``
    by ``indicator`` (a name, or an ``indicators`` output folder: its best measured indicator
    that the probe can compute, :func:`best_indicator`), before any transfer training.
    Returns the top suggestions and every computed indicator per source.

    Data needed: skill-neuron indicators (``skill_corr``, ``skill_overlap``; the default) read
    ``train_limit`` labelled training and ``dev_limit`` held-out examples of the new task
    (and as many of each source's task); embedding and ON indicators (``cos_*``, ``euc_*``,
    ``on_*``) need ``probe_prompt``, a prompt of the new task trained for a few steps."""
    target = get_task(task, lang)
    if Path(indicator).is_dir():
        indicator = best_indicator(indicator, prompts=probe_prompt is not None)
        log(f"indicator {indicator} (the best measured one that this probe can compute)")
    skill_kind = indicator in SKILL_INDICATORS
    if not skill_kind and probe_prompt is None:
        raise ValueError(
            f"indicator {indicator!r} compares prompts: give --probe-prompt (a prompt of the new "
            f"task trained for a few steps), or use one of {', '.join(SKILL_INDICATORS)}"
        )
    if skill_kind and target.spec.kind != "classification":
        raise ValueError(
            f"skill-neuron indicators need a classification task; {target.name} is "
            f"{target.spec.kind}: train a probe prompt and use e.g. --indicator on_all"
        )
    found = [
        (d, m)
        for d, m in list_prompts(bank)
        if m.task is not None
        and m.lang is not None
        and (m.task, m.lang) != (target.spec.name, target.lang)
        and (model is None or m.model == model)
    ]
    if not found:
        raise ValueError(
            f"no task prompts in {bank}"
            + (f" for model {model}" if model else "")
            + " other than the new task's own"
        )
    models = sorted({m.model for _, m in found})
    if len(models) > 1:
        raise ValueError(
            f"the bank holds prompts of several models {models}; choose one with --model"
        )
    handle = handle or load_model(models[0])
    names: dict[str, tuple[Path, Any]] = {}
    for d, m in found:
        name = d.name if d.name not in names else f"{d.parent.name}/{d.name}"
        names[name] = (d, m)
    prompts = {n: load_prompt(d, handle).prompt.to(handle.device) for n, (d, _) in names.items()}
    values: dict[str, dict[str, float]] = {}
    if skill_kind:
        fmt = TaskFormatter(handle.tokenizer, target)
        train = load_split(
            target.spec.name, target.lang, "train", data_dir=data_dir, limit=train_limit
        )
        dev = load_split(target.spec.name, target.lang, "dev", data_dir=data_dir, limit=dev_limit)
        sources: dict[str, tuple[SoftPrompt, Predictivity]] = {}
        for n, (_d, m) in names.items():
            pred = _predictivity(
                handle,
                prompts[n],
                m.task,
                m.lang,
                train_limit=train_limit,
                dev_limit=dev_limit,
                state="down_input",
                data_dir=data_dir,
                formatter=TaskFormatter(handle.tokenizer, get_task(m.task, m.lang), m.run.format),
                log=log,
            )
            if pred is None:
                log(f"skipping {n}: no predictivity on its own task {m.task}-{m.lang}")
                continue
            sources[n] = (prompts[n], pred)
        if not sources:
            raise ValueError(f"no classification task prompts in {bank} to compare neurons with")
        log(f"probing {target.name} through {len(sources)} source prompts")
        values.update(probe_skill_indicators(handle, fmt, train, dev, sources, p=p))
    if probe_prompt is not None:
        probe = load_prompt(probe_prompt, handle).prompt.to(handle.device)
        fmt = TaskFormatter(handle.tokenizer, target)
        values.update(probe_prompt_indicators(handle, probe, prompts, fmt))
    if indicator not in values:
        raise ValueError(f"unknown indicator {indicator!r}; computed: {', '.join(sorted(values))}")
    return suggest(values[indicator], indicator=indicator, top=top), values


# -- task x task perturbation ---------------------------------------------------------------


def perturbation_matrix(
    prompt_dirs: Sequence[str | Path],
    skill_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    p: float = 0.01,
    mode: str = "gaussian",
    sigma: float = 0.1,
    test_limit: int | None = None,
    data_dir: str | None = None,
    precision: str = "auto",
    handle: ModelHandle | None = None,
    log: Log = _quiet,
) -> CrossTaskPerturbation:
    """Rows: the skill neurons of each ``skill_dirs`` folder (top ``p`` per layer); columns:
    each prompt of ``prompt_dirs`` evaluated on its own test split with those neurons
    perturbed. Writes ``matrix.csv``, ``matrix.png`` (drop ×100), ``matrix_relative.png`` and
    ``run.json``. ``mode="mean"`` uses each source's training means."""
    from promptatlas.runs.neurons import is_lora_folder, load_skill, load_source

    if not prompt_dirs or not skill_dirs:
        raise ValueError("give at least one prompt and one skill folder")
    started = time.perf_counter()
    preds = {}
    for d in skill_dirs:
        pred = load_skill(d)
        preds[pred.name or Path(d).name] = pred
    setups: dict[str, EvalSetup] = {}
    sources = []
    for d in prompt_dirs:
        if is_lora_folder(d):
            raise ValueError(
                f"{d} is a LoRA folder: the matrix evaluates prompts in one shared model; give "
                "the LoRA folder to `neurons perturb --prompt` instead"
            )
        src = load_source(d, handle=handle, precision=precision)
        handle = src.handle
        if src.name in setups:
            raise ValueError(
                f"two prompts of {src.name} ({d}); the matrix takes one prompt per task and "
                "language"
            )
        sources.append(src)
        setups[src.name] = EvalSetup(
            src.plm(), src.formatter, src.split("test", test_limit, data_dir)
        )
    assert handle is not None
    for name, pred in preds.items():
        found = pred.meta.get("model_fingerprint")
        if found and found != handle.fingerprint:
            raise ValueError(f"the skill neurons {name} were found on another model ({found})")
    skills = {n: select_skill_neurons(pr, p) for n, pr in preds.items()}
    values = {n: pr.baseline() for n, pr in preds.items()} if mode == "mean" else None
    log(f"{len(skills)} × {len(setups)} perturbation matrix ({mode}, p={p:g})")
    result = cross_task_perturbation(
        skills,
        setups,
        mode=mode,  # type: ignore[arg-type]
        sigma=sigma,
        values=values,
        config=sources[0].eval_config,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cross_task_csv(result, out / "matrix.csv")
    cross_task_figure(result, out / "matrix.png")
    cross_task_figure(result, out / "matrix_relative.png", relative=True)
    write_json_atomic(
        out / "run.json",
        {
            "kind": "neurons-matrix",
            "config": {"p": p, "mode": mode, "sigma": sigma, "test_limit": test_limit},
            "prompts": [s.info() for s in sources],
            "skill_dirs": [str(d) for d in skill_dirs],
            "model": handle.name,
            "hardware": hardware_info(handle.device),
            "versions": versions(),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
    for i, a in enumerate(result.sources):
        cells = ", ".join(
            f"{t} {100 * result.drops[i, j]:+.1f}" for j, t in enumerate(result.targets)
        )
        log(f"perturb {a}: drop on {cells} (points)")
    return result
