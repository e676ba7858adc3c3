"""Metrics against values computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import pytest

from promptatlas.evaluation.metrics import (
    accuracy,
    binary_f1,
    compute_metrics,
    coverage,
    macro_f1,
    normalize_answer_ko,
    squad_em_f1,
)
from promptatlas.tasks import Example, get_task


def test_accuracy() -> None:
    # 3 of 4 equal
    assert accuracy(["a", "b", "a", "a"], ["a", "b", "b", "a"]) == pytest.approx(0.75)


def test_binary_f1_2x2() -> None:
    preds = ["similar", "similar", "similar", "different", "different"]
    golds = ["similar", "different", "different", "similar", "different"]
    # tp = 1 (item 0), fp = 2 (items 1, 2), fn = 1 (item 3)
    # P = 1/3, R = 1/2, F1 = 2PR/(P+R) = (1/3)/(5/6) = 0.4
    assert binary_f1(preds, golds, "similar") == pytest.approx(0.4)
    # positive class never predicted -> 0
    assert binary_f1(["different"] * 2, ["similar", "different"], "similar") == 0.0


def test_macro_f1_with_never_predicted_class() -> None:
    golds = ["a", "a", "b", "c"]
    preds = ["a", "b", "b", "a"]
    # a: tp 1, fp 1 (item 3), fn 1 (item 1) -> P 1/2, R 1/2, F1 1/2
    # b: tp 1, fp 1 (item 1), fn 0 -> P 1/2, R 1, F1 2/3
    # c: never predicted -> F1 0, still in the mean
    # macro = (1/2 + 2/3 + 0) / 3 = 7/18
    assert macro_f1(preds, golds, ["a", "b", "c"]) == pytest.approx(7 / 18)
    # a label absent from both preds and golds also counts as 0: (1/2 + 2/3 + 0 + 0) / 4
    assert macro_f1(preds, golds, ["a", "b", "c", "d"]) == pytest.approx(7 / 24)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_squad_en_normalisation() -> None:
    # lower-case, punctuation and the article "The" removed -> "eiffel tower" both sides
    assert squad_em_f1("The Eiffel Tower!", ["Eiffel tower"], "en") == (1.0, 1.0)
    # pred "in eiffel tower in paris" (5 tokens; "the" removed) vs "eiffel tower" (2):
    # common 2 -> P 2/5, R 1, F1 = 2*(2/5)/(7/5) = 4/7; vs "paris": P 1/5, R 1, F1 = 1/3
    em, f1 = squad_em_f1("in the Eiffel Tower in Paris", ["Eiffel Tower", "Paris"], "en")
    assert em == 0.0
    assert f1 == pytest.approx(4 / 7)
    # an answer made only of an article normalises to nothing -> F1 0
    assert squad_em_f1("the", ["Paris"], "en") == (0.0, 0.0)


def test_korquad_syllable_f1() -> None:
    # chars 세 종 대 왕 은 (5) vs 세 종 대 왕 (4): common 4 -> P 4/5, R 1,
    # F1 = 2*(4/5)/(9/5) = 8/9; EM 0
    em, f1 = squad_em_f1("세종대왕은", ["세종대왕"], "ko")
    assert em == 0.0
    assert f1 == pytest.approx(8 / 9)
    # spaces do not count for F1 but do for EM
    assert squad_em_f1("세종 대왕", ["세종대왕"], "ko") == (0.0, 1.0)
    # the official remove_() drops 《 》 and quotes -> exact match
    assert squad_em_f1("《훈민정음》", ["훈민정음"], "ko") == (1.0, 1.0)
    assert normalize_answer_ko("'A' (B)") == "a b"


def test_coverage_en() -> None:
    # dogs -> dog, ran -> run, field -> field
    assert coverage("dogs ran in the field", ["dog", "run", "field"], "en") == 1.0
    # "run" missing -> 2/3
    assert coverage("dogs sat in the field", ["dog", "run", "field"], "en") == pytest.approx(2 / 3)


def test_coverage_ko_inflected_verb() -> None:
    concepts = ["대형", "시계", "빛난다"]
    # 빛났다 (past) and 빛난다 share the stem 빛나(다)
    assert coverage("대형 시계가 밤에 탑에서 빛났다.", concepts, "ko") == 1.0
    # 대형 missing -> 2/3
    assert coverage("시계가 밤에 빛났다.", concepts, "ko") == pytest.approx(2 / 3)
    # nothing matches
    assert coverage("고양이가 잔다.", concepts, "ko") == 0.0


def test_compute_metrics_classification() -> None:
    task = get_task("sts", "en")
    exs = [
        Example(("a", "b"), task.verbalizers[g], g)
        for g in ["similar", "different", "different", "similar", "different"]
    ]
    preds = ["similar", "similar", "similar", "different", "different"]
    m = compute_metrics(task, preds, exs)
    # accuracy 2/5 (items 0 and 4); binary F1 0.4 as in test_binary_f1_2x2
    # macro: similar F1 0.4; different tp 1, fp 1, fn 2 -> P 1/2, R 1/3, F1 0.4 -> 0.4
    assert m["accuracy"] == pytest.approx(0.4)
    assert m["binary_f1"] == pytest.approx(0.4)
    assert m["macro_f1"] == pytest.approx(0.4)
    assert m["score"] == m["binary_f1"]
    assert "binary_f1" not in compute_metrics(
        get_task("nli", "en"), ["neutral"], [Example(("a", "b"), "neutral", "neutral")]
    )


def test_compute_metrics_generation() -> None:
    qa = get_task("qa", "ko")
    exs = [
        Example(("ctx", "q1"), "세종대왕", references=("세종대왕",)),
        Example(("ctx", "q2"), "1443년", references=("1443년",)),
    ]
    m = compute_metrics(qa, ["세종대왕은", "1443년"], exs)
    # EM (0 + 1)/2; F1 (8/9 + 1)/2
    assert m["em"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx((8 / 9 + 1) / 2)
    assert m["score"] == m["f1"]
    cg = get_task("cg", "en")
    ex = Example(("dog run field",), "x", references=("x",), concepts=("dog", "run", "field"))
    m = compute_metrics(cg, ["dogs sat in the field"], [ex])
    assert m == {"coverage": pytest.approx(2 / 3), "score": pytest.approx(2 / 3)}
