"""Task metrics (SPEC §2, thesis §4.5.1). Every metric returns a float in [0, 1] (MCC: [-1, 1]).

* classification: :func:`accuracy`, :func:`binary_f1` (F1 of the positive class),
  :func:`macro_f1` (scikit-learn ``average="macro"`` over the task's labels; a label never
  predicted scores F1 = 0 and still counts in the mean), :func:`mcc` (Matthews correlation,
  multi-class; 0 when all predictions or all gold labels are one class). Every classification
  result also holds ``majority``: the main metric of always answering the most frequent gold
  label of the scored examples (:func:`majority_baseline`), the score of doing nothing.
* QA: :func:`squad_em_f1`. English = the official SQuAD v1.1 script (lower-case, drop ASCII
  punctuation and the articles a/an/the, squeeze whitespace; token-level F1). Korean = the
  official KorQuAD 1.0 script: its ``normalize_answer`` first replaces
  ``' " 《 》 < > 〈 〉 ( ) ‘ ’`` with spaces, then lower-cases, drops ASCII punctuation and
  squeezes whitespace; EM compares the normalised strings, F1 counts common characters
  (syllables) of the normalised strings with spaces removed. Other brackets (「」『』【】) and
  ``·`` are *not* removed, exactly as in the official script, so scores stay comparable with
  published KorQuAD numbers.
* CG: :func:`coverage`, the fraction of input concepts whose lemma occurs in the output.
  English uses lemminflect; Korean uses Kiwi morphological analysis (see the function).
"""

from __future__ import annotations

import re
import string
import threading
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptatlas.evaluation.confidence import ExampleScores
    from promptatlas.tasks import Example, TaskVariant


def _check_pairs(preds: Sequence[Any], golds: Sequence[Any]) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold labels")
    if not preds:
        raise ValueError("no predictions to score")


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of predictions equal to the gold label."""
    _check_pairs(preds, golds)
    return sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)


def binary_f1(preds: Sequence[str], golds: Sequence[str], positive: str) -> float:
    """F1 of the ``positive`` class (0 when it is never both predicted and gold)."""
    _check_pairs(preds, golds)
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds, strict=True))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds, strict=True))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds, strict=True))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def macro_f1(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (never-predicted labels count as 0)."""
    _check_pairs(preds, golds)
    from sklearn.metrics import f1_score  # lazy: sklearn is slow to import

    return float(
        f1_score(list(golds), list(preds), labels=list(labels), average="macro", zero_division=0)
    )


def mcc(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Matthews correlation coefficient (multi-class, scikit-learn), in [-1, 1]."""
    _check_pairs(preds, golds)
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(list(golds), list(preds)))


def _classification(
    task: TaskVariant, preds: Sequence[str], golds: Sequence[str]
) -> dict[str, float]:
    out = {"accuracy": accuracy(preds, golds), "macro_f1": macro_f1(preds, golds, task.labels)}
    if len(task.labels) == 2 and task.positive_label is not None:
        out["binary_f1"] = binary_f1(preds, golds, task.positive_label)
    if task.spec.metric == "mcc":
        out["mcc"] = mcc(preds, golds)
    out["score"] = out[task.spec.metric]
    return out


def majority_baseline(task: TaskVariant, golds: Sequence[str]) -> tuple[str, float]:
    """The most frequent gold label (ties: the first in the task's label order) and the main
    metric of predicting it for every example."""
    if not golds:
        raise ValueError("no gold labels")
    counts = Counter(golds)
    label = max(task.labels, key=lambda lab: counts[lab])
    return label, _classification(task, [label] * len(golds), golds)["score"]


# --- QA ------------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_KORQUAD_SYMBOLS = re.compile(r"['\"《》<>〈〉()‘’]")


def normalize_answer_en(s: str) -> str:
    """Official SQuAD v1.1 normalisation."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_answer_ko(s: str) -> str:
    """Official KorQuAD 1.0 normalisation (``remove_`` -> lower -> punctuation -> spaces)."""
    s = _KORQUAD_SYMBOLS.sub(" ", s).lower()
    return " ".join("".join(ch for ch in s if ch not in _PUNCT).split())


def _overlap_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(pred: str, references: Sequence[str], lang: str) -> tuple[float, float]:
    """(exact match, F1) of one prediction, each the max over ``references``."""
    if not references:
        raise ValueError("squad_em_f1 needs at least one reference answer")
    if lang == "en":
        norm = normalize_answer_en

        def units(s: str) -> list[str]:
            return norm(s).split()
    elif lang == "ko":
        norm = normalize_answer_ko

        def units(s: str) -> list[str]:
            return list(norm(s).replace(" ", ""))  # syllables, spaces dropped
    else:
        raise ValueError(f"squad_em_f1 supports lang 'en' and 'ko', got {lang!r}")
    p_norm, p_units = norm(pred), units(pred)
    em = max(float(p_norm == norm(r)) for r in references)
    f1 = max(_overlap_f1(p_units, units(r)) for r in references)
    return em, f1


# --- coverage -------------------------------------------------------------------------------

_EN_WORD = re.compile(r"[^\W_]+")


@lru_cache(maxsize=65536)
def _en_lemmas(word: str, output: bool) -> frozenset[str]:
    """The word and all its dictionary lemmas under every POS (lemminflect).

    Output words also get lemminflect's rule-based noun/verb guesses (jeans -> jean, singing ->
    singe): CommonGen's own concept lemmas were made by a rule-based lemmatiser and contain such
    forms, which the dictionary alone would never match.
    """
    from lemminflect import getAllLemmas, getAllLemmasOOV

    w = word.lower()
    found = {lemma.lower() for lemmas in getAllLemmas(w).values() for lemma in lemmas}
    if output or not found:
        for upos in ("NOUN", "VERB"):
            found.update(lemma.lower() for ls in getAllLemmasOOV(w, upos).values() for lemma in ls)
    return frozenset(found | {w})


def _coverage_en(output: str, concepts: Sequence[str]) -> float:
    out_lemmas: set[str] = set()
    for tok in _EN_WORD.findall(output):
        out_lemmas |= _en_lemmas(tok, True)
    hit = 0
    for concept in concepts:
        # A concept is covered if each of its words shares a lemma with some output word.
        words = _EN_WORD.findall(concept) or [concept.strip()]
        hit += all(_en_lemmas(w, False) & out_lemmas for w in words)
    return hit / len(concepts)


_KIWI: Any = None
_KIWI_LOCK = threading.Lock()
# Morpheme tags that carry content: nouns (N*), predicates incl. the copula, modifiers, roots,
# foreign words, numbers.
_KO_PREDICATE = {"VV", "VA", "VX", "VCP", "VCN"}
_KO_CONTENT = _KO_PREDICATE | {"MAG", "MM", "XR", "SL", "SH", "SN"}
# Derivational 하다 (가득하다 = 가득 + XSA 하): counted on the output side only, so a concept
# "하다" is found in 가득하다 while a concept 연주한다 (연주 + XSV) still needs only 연주.
_KO_DERIVED_PREDICATE = {"XSV", "XSA"}
_KO_MARGIN = 5.0  # keep alternative analyses of a concept within this log-prob of the best


def _kiwi() -> Any:
    """Shared Kiwi analyser (constructing one takes about a second, so build it once)."""
    global _KIWI
    if _KIWI is None:
        with _KIWI_LOCK:
            if _KIWI is None:
                from kiwipiepy import Kiwi

                _KIWI = Kiwi()
    return _KIWI


def _ko_lemmas(tokens: Sequence[Any], *, output: bool) -> frozenset[str]:
    """Base forms of the content morphemes (predicates as dictionary forms ending in 다)."""
    out = set()
    for i, t in enumerate(tokens):
        tag = str(t.tag).split("-")[0]  # "VV-I" (irregular) -> "VV"
        predicate = tag in _KO_PREDICATE or (output and tag in _KO_DERIVED_PREDICATE)
        if not (tag.startswith("N") or tag in _KO_CONTENT or predicate):
            continue
        if (
            not output
            and tag == "NP"
            and t.form == "이"
            and i + 1 < len(tokens)
            and str(tokens[i + 1].tag) == "VCP"
        ):
            continue  # a bare copula concept (이다, 입니다) is read as pronoun 이 + 이다: drop 이
        lemma = str(getattr(t, "lemma", "") or t.form)
        if predicate and not lemma.endswith("다"):
            lemma = t.form + "다"
        out.add(lemma.lower())
    return frozenset(out)


@lru_cache(maxsize=16384)
def _ko_concept_readings(concept: str) -> tuple[frozenset[str], ...]:
    """Content-lemma sets of the plausible analyses of a concept word on its own.

    A bare word is ambiguous without context (들었다 = 듣다 or 들다), so every analysis within
    ``_KO_MARGIN`` of the best one is kept; the concept counts as covered if any reading does.
    """
    results = _kiwi().analyze(concept, top_n=4)
    best = results[0][1]
    readings = []
    for tokens, score in results:
        lemmas = _ko_lemmas(tokens, output=False)
        if lemmas and score >= best - _KO_MARGIN and lemmas not in readings:
            readings.append(lemmas)
    return tuple(readings)


def _coverage_ko(output: str, concepts: Sequence[str]) -> float:
    out_lemmas = (
        _ko_lemmas(_kiwi().tokenize(output), output=True) if output.strip() else frozenset()
    )
    hit = 0
    for concept in concepts:
        readings = _ko_concept_readings(concept.strip())
        if readings:
            hit += any(r <= out_lemmas for r in readings)
        else:  # no content morpheme at all (rare): fall back to the surface form
            hit += concept.strip() in output
    return hit / len(concepts)


def coverage(output: str, concepts: Sequence[str], lang: str) -> float:
    """Fraction of ``concepts`` whose lemma occurs among the lemmas of ``output``.

    English: every output word and every concept is lemmatised with lemminflect under all POS
    (plus the word itself; output words also with rule-based guesses); a concept is covered
    when the two lemma sets intersect ("dogs ran" covers dog and run). Korean: the output is
    analysed with Kiwi and the base forms of its content morphemes collected (빛난다 -> 빛나다);
    a concept is covered when all content morphemes of one of its plausible analyses occur
    there.
    """
    if not concepts:
        raise ValueError("coverage needs at least one concept")
    if lang == "en":
        return _coverage_en(output, concepts)
    if lang == "ko":
        return _coverage_ko(output, concepts)
    raise ValueError(f"coverage supports lang 'en' and 'ko', got {lang!r}")


# --- per task -------------------------------------------------------------------------------


def compute_metrics(
    task: TaskVariant, predictions: Sequence[str], examples: Sequence[Example]
) -> dict[str, float]:
    """All metrics of ``task`` plus ``"score"``, its main metric.

    Classification: ``predictions`` are label keys; returns accuracy and macro_f1, plus
    binary_f1 for binary tasks with a positive label, mcc when it is the task's metric, and
    ``majority`` (:func:`majority_baseline`). QA: mean em and f1 (score = f1). CG: mean
    coverage (score = coverage).
    """
    return score_predictions(task, predictions, examples)[0]


def score_predictions(
    task: TaskVariant, predictions: Sequence[str], examples: Sequence[Example]
) -> tuple[dict[str, float], ExampleScores]:
    """:func:`compute_metrics` and, from the same per-example work, what the main metric needs
    per example for bootstrap intervals (:mod:`promptatlas.evaluation.confidence`): label
    indices for classification metrics, per-example F1 (QA) or coverage (CG)."""
    from promptatlas.evaluation.confidence import example_scores

    _check_pairs(predictions, examples)
    spec = task.spec
    if spec.kind == "classification":
        golds = [str(ex.label) for ex in examples]
        out = _classification(task, predictions, golds)
        out["majority"] = majority_baseline(task, golds)[1]
        scores = example_scores(
            spec.metric,
            preds=list(predictions),
            golds=golds,
            labels=task.labels,
            positive=task.positive_label,
        )
        return out, scores
    if spec.metric == "squad":
        pairs = [
            squad_em_f1(p, ex.references or (ex.target,), task.lang)
            for p, ex in zip(predictions, examples, strict=True)
        ]
        f1s = [f for _, f in pairs]
        em = sum(e for e, _ in pairs) / len(pairs)
        f1 = sum(f1s) / len(f1s)
        return {"em": em, "f1": f1, "score": f1}, example_scores("mean", values=f1s)
    if spec.metric == "coverage":
        cov = [
            coverage(p, ex.concepts or tuple(ex.inputs[0].split()), task.lang)
            for p, ex in zip(predictions, examples, strict=True)
        ]
        mean = sum(cov) / len(cov)
        return {"coverage": mean, "score": mean}, example_scores("mean", values=cov)
    raise ValueError(f"no metric implementation for {spec.metric!r} (task {task.name})")
