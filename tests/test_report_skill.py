"""Skill-neuron and indicator figures and tables from hand-made result objects."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from promptatlas.analysis.indicators import indicator_correlation
from promptatlas.analysis.skill import (
    CrossTaskPerturbation,
    NeuronActivations,
    PerturbationCurve,
    PerturbationResult,
    Predictivity,
    SkillSimilarity,
    select_skill_neurons,
)
from promptatlas.evaluation.confidence import Estimate
from promptatlas.report.skill import (
    activation_histogram,
    activations_csv,
    cross_task_csv,
    cross_task_figure,
    indicator_bar_figure,
    indicator_csv,
    indicator_scatter_figure,
    perturbation_csv,
    perturbation_figure,
    predictivity_csv,
    predictivity_figure,
    pruning_csv,
    read_predictivity,
    similarity_csv,
    similarity_figure,
    skill_neurons_csv,
    write_predictivity,
    write_skill_report,
)


def _pred(seed: int = 0, name: str = "sa-en") -> Predictivity:
    rng = np.random.default_rng(seed)
    values = 0.5 + 0.5 * rng.random((4, 20))
    return Predictivity(
        values=values,
        per_seed=values[None],
        per_subtask=values[None, None],
        train_mean=rng.normal(size=(1, 1, 4, 20)),
        token_mean=rng.normal(size=(1, 4, 20)),
        layers=(0, 1, 2, 3),
        labels=("negative", "positive"),
        subtasks=("positive-vs-negative",),
        n_train=10,
        n_dev=8,
        name=name,
    )


def _est(v: float) -> Estimate:
    return Estimate(v, v - 0.05, v + 0.05, 20)


def _curve() -> PerturbationCurve:
    results = []
    for p, drop in ((0.01, 0.1), (0.05, 0.3)):
        results.append(
            PerturbationResult(
                p=p,
                mode="gaussian",
                sigma=0.1,
                counts={0: 1, 1: 1},
                baseline=_est(0.9),
                skill=_est(0.9 - drop),
                skill_drop=_est(drop),
                random=[_est(0.88), _est(0.86)],
                random_drop=[_est(0.02), _est(0.04)],
                random_seeds=[0, 1],
                least=_est(0.9),
                least_drop=_est(0.0),
            )
        )
    return PerturbationCurve(results, name="sa-en")


def _nonempty(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predictivity_files_round_trip(tmp_path: Path) -> None:
    pred = _pred()
    write_predictivity(pred, tmp_path / "skill")
    back = read_predictivity(tmp_path / "skill")
    np.testing.assert_array_equal(back.values, pred.values)
    np.testing.assert_array_equal(back.token_mean, pred.token_mean)
    assert back.layers == pred.layers and back.labels == pred.labels
    out = predictivity_csv(pred, tmp_path / "by_layer.csv")
    rows = _rows(out)
    assert rows[0] == ["layer", "best_index", "top1", "top1pct", "mean"] and len(rows) == 5
    assert float(rows[1][2]) == pytest.approx(pred.values[0].max(), abs=1e-6)
    _nonempty(predictivity_figure({"a": pred, "b": _pred(1)}, tmp_path / "by_layer.png"))
    _nonempty(predictivity_figure(pred, tmp_path / "one.png"))
    skill = select_skill_neurons(pred, 0.1)
    rows = _rows(skill_neurons_csv(skill, tmp_path / "skill.csv", pred))
    assert len(rows) == 1 + 4 * 2


def test_activation_histogram(tmp_path: Path) -> None:
    acts = NeuronActivations(
        2, 7, np.array([0.1, 0.5, -0.2, 0.9]), ["a", "b", "a", "b"], 0.3, "sa-en"
    )
    _nonempty(activation_histogram(acts, tmp_path / "hist.png"))
    assert len(_rows(activations_csv(acts, tmp_path / "acts.csv"))) == 5


def test_similarity_perturbation_cross_task(tmp_path: Path) -> None:
    sim = SkillSimilarity(
        ["sa-en", "sa-ko"],
        np.array([[1.0, 0.3], [0.25, 1.0]]),
        np.array([[1.0, 0.6], [0.6, 1.0]]),
        0.01,
        "layer",
    )
    _nonempty(similarity_figure(sim, tmp_path / "sim.png"))
    assert len(_rows(similarity_csv(sim, tmp_path / "sim.csv"))) == 5
    curve = _curve()
    _nonempty(perturbation_figure(curve, tmp_path / "curve.png"))
    _nonempty(perturbation_figure({"sa-en": curve, "nli-en": curve}, tmp_path / "curves.png"))
    rows = _rows(perturbation_csv(curve, tmp_path / "curve.csv"))
    assert len(rows) == 3 and "random_std" in rows[0]
    cross = CrossTaskPerturbation(
        ["sa", "nli"],
        ["sa", "nli"],
        np.array([[0.6, 0.7], [0.85, 0.5]]),
        np.array([[0.3, 0.0], [0.05, 0.2]]),
        np.array([0.9, 0.7]),
        "gaussian",
        0.1,
        0.01,
    )
    _nonempty(cross_task_figure(cross, tmp_path / "cross.png"))
    _nonempty(cross_task_figure(cross, tmp_path / "cross_rel.png", relative=True))
    assert len(_rows(cross_task_csv(cross, tmp_path / "cross.csv"))) == 5
    rows = _rows(
        pruning_csv([{"keep": 0.02, "score": 0.8}, {"keep": 1.0, "time": 1.3}], tmp_path / "p.csv")
    )
    assert rows[0] == ["keep", "score", "time"] and rows[2] == ["1.0", "", "1.3"]


def test_indicator_figures(tmp_path: Path) -> None:
    transfer = {
        ("a", "c"): 0.5,
        ("b", "c"): 0.9,
        ("d", "c"): 0.1,
        ("a", "d"): 0.2,
        ("b", "d"): 0.4,
        ("c", "d"): 0.3,
    }
    good = {k: v + 0.01 for k, v in transfer.items()}
    flat = dict.fromkeys(transfer, 1.0)
    corr = {
        "on_all": indicator_correlation(good, transfer, name="on_all"),
        "cos_flat": indicator_correlation(flat, transfer, name="cos_flat"),
    }
    _nonempty(indicator_bar_figure(corr, tmp_path / "bar.png"))
    _nonempty(indicator_scatter_figure(corr, tmp_path / "scatter.png"))
    rows = _rows(indicator_csv(corr, tmp_path / "ind.csv"))
    assert rows[1][0] == "on_all" and float(rows[1][1]) == pytest.approx(1.0)
    assert rows[2][1] == "nan"  # a constant indicator has no ρ


def test_write_skill_report(tmp_path: Path) -> None:
    pred = _pred()
    acts = NeuronActivations(0, 1, np.array([0.1, 0.5]), ["a", "b"], 0.3, "sa-en")
    files = write_skill_report(pred, tmp_path / "r", ps=(0.05, 0.1), activations=acts)
    names = {f.name for f in files}
    assert {"predictivity.npz", "by_layer.png", "skill_5pct.json", "best_neuron.png"} <= names
    for f in files:
        _nonempty(f)
    import json

    from promptatlas.analysis.skill import SkillNeurons

    skill = SkillNeurons.from_dict(json.loads((tmp_path / "r" / "skill_10pct.json").read_text()))
    assert skill.total == 4 * 2
