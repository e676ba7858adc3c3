"""Bootstrap and paired-bootstrap intervals against hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from promptatlas.evaluation.confidence import (
    ExampleScores,
    bootstrap_ci,
    example_scores,
    paired_bootstrap,
    seed_summary,
)


def _mean(values: list[float]) -> ExampleScores:
    return example_scores("mean", values=values)


def test_constant_scores_give_a_zero_width_interval() -> None:
    est = bootstrap_ci(_mean([0.5] * 40))
    assert (est.value, est.low, est.high) == (0.5, 0.5, 0.5)


def test_constant_difference_gives_a_zero_width_paired_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(50).tolist()
    est = paired_bootstrap(_mean([b + 0.25 for b in base]), _mean(base))
    assert est.value == pytest.approx(0.25)
    assert est.low == pytest.approx(0.25) and est.high == pytest.approx(0.25)
    assert est.significant


def test_identical_systems_give_an_interval_containing_zero() -> None:
    a = example_scores("accuracy", preds=list("ab" * 30), golds=list("aabb" * 15), labels="ab")
    est = paired_bootstrap(a, a)
    assert est.value == 0 and est.low <= 0 <= est.high and not est.significant


def test_interval_covers_the_point_and_shrinks_with_n() -> None:
    small = bootstrap_ci(_mean([1.0, 0.0] * 10))
    large = bootstrap_ci(_mean([1.0, 0.0] * 500))
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert large.high - large.low < (small.high - small.low) / 4
    # Normal approximation for a proportion of 0.5: ±1.96·sqrt(.25/n)
    assert large.high - large.low == pytest.approx(2 * 1.96 * (0.25 / 1000) ** 0.5, rel=0.15)


def test_same_inputs_same_interval() -> None:
    data = _mean([0.0, 1.0, 1.0, 0.5, 0.25] * 5)
    assert bootstrap_ci(data) == bootstrap_ci(data)


def test_f1_metrics_match_hand_computation_and_sklearn() -> None:
    from sklearn.metrics import f1_score

    labels = ("a", "b", "c")
    golds = ["a", "a", "b", "b", "c", "c"]
    preds = ["a", "b", "b", "b", "a", "c"]
    macro = example_scores("macro_f1", preds=preds, golds=golds, labels=labels)
    # a: tp1 fp1 fn1 → 0.5; b: tp2 fp1 fn0 → 0.8; c: tp1 fp0 fn1 → 2/3
    assert macro.score() == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro.score() == pytest.approx(
        f1_score(golds, preds, labels=list(labels), average="macro", zero_division=0)
    )
    binary = example_scores(
        "binary_f1",
        preds=["p", "p", "n", "n"],
        golds=["p", "n", "p", "n"],
        labels=("n", "p"),
        positive="p",
    )
    assert binary.score() == pytest.approx(0.5)  # tp1 fp1 fn1
    never = example_scores("macro_f1", preds=["a"] * 4, golds=["a", "a", "b", "b"], labels="ab")
    assert never.score() == pytest.approx((2 / 3 + 0) / 2)  # b never predicted: F1 0


def test_paired_difference_needs_the_same_examples() -> None:
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(_mean([1.0] * 3), _mean([1.0] * 4))


def test_round_trip_and_format() -> None:
    scores = example_scores("macro_f1", preds=["a", "b"], golds=["a", "a"], labels="ab")
    assert ExampleScores.from_dict(scores.to_dict()) == scores
    est = paired_bootstrap(_mean([1.0] * 10), _mean([0.0] * 10))
    assert est.format(signed=True) == "+100.0* [100.0, 100.0]"


def test_seed_summary() -> None:
    s = seed_summary([0.8, 0.9, 1.0])
    assert s.mean == pytest.approx(0.9) and s.std == pytest.approx(0.1)
    assert s.values == (0.8, 0.9, 1.0) and s.format() == "90.0 ± 10.0"
    assert seed_summary([0.5]).std == 0.0
