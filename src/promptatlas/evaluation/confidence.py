"""Confidence intervals for scores and paired differences (percentile bootstrap, scipy).

Every reported metric carries a 95% bootstrap interval over test examples; every difference
between two systems scored on the *same* examples (trained − untrained, transfer − baseline,
peak − trough) carries a *paired* bootstrap interval: each resample draws one set of example
indices and scores both systems on it, so example difficulty cancels out. A difference is
called significant when its interval excludes zero.

Metrics are recomputed on each resample from per-example data, so corpus-level metrics
(macro-F1, binary F1) get correct intervals, not a mean of per-example numbers:

* ``"mean"``: the mean of per-example scores (accuracy as 0/1, SQuAD EM/F1, CG coverage);
* ``"macro_f1"``, ``"binary_f1"``, ``"mcc"``: from predicted and gold label indices.

The resampling is seeded, so the same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Estimate",
    "ExampleScores",
    "bootstrap_ci",
    "example_scores",
    "paired_bootstrap",
    "seed_summary",
]

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point value with its confidence interval (``low``, ``high``) at ``level``."""

    value: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL

    @property
    def significant(self) -> bool:
        """For a difference: the interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}

    def format(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        """``"72.3 [68.1, 76.4]"`` (×100 by default); ``signed`` adds +/− and a ``*`` when the
        interval excludes zero."""
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        star = "*" if signed and self.significant else ""
        return (
            f"{f.format(self.value * scale)}{star} "
            f"[{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        )


@dataclass(frozen=True)
class ExampleScores:
    """What a metric needs per example, so it can be recomputed on resamples.

    kind "mean": ``values`` holds one score per example. kind "macro_f1"/"binary_f1":
    ``preds`` and ``golds`` hold label indices (-1 = an invalid prediction), ``n_labels`` the
    number of labels and ``positive`` the index of the positive label (binary F1)."""

    kind: str
    values: tuple[float, ...] = ()
    preds: tuple[int, ...] = ()
    golds: tuple[int, ...] = ()
    n_labels: int = 0
    positive: int | None = None

    def __len__(self) -> int:
        return len(self.values) if self.kind == "mean" else len(self.golds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExampleScores:
        return cls(
            kind=str(data["kind"]),
            values=tuple(float(v) for v in data.get("values", ())),
            preds=tuple(int(v) for v in data.get("preds", ())),
            golds=tuple(int(v) for v in data.get("golds", ())),
            n_labels=int(data.get("n_labels", 0)),
            positive=None if data.get("positive") is None else int(data["positive"]),
        )

    def metric(self) -> Callable[[np.ndarray], np.ndarray]:
        """idx (..., n) → metric (...,) on the examples ``idx`` (vectorised over resamples)."""
        if self.kind == "mean":
            values = np.asarray(self.values, dtype=np.float64)
            return lambda idx: values[idx].mean(axis=-1)
        preds = np.asarray(self.preds, dtype=np.int64)
        golds = np.asarray(self.golds, dtype=np.int64)
        if self.kind == "macro_f1":
            labels = range(self.n_labels)
        elif self.kind == "binary_f1":
            if self.positive is None:
                raise ValueError("binary_f1 needs the positive label's index")
            labels = range(self.positive, self.positive + 1)
        elif self.kind == "accuracy":
            return lambda idx: (preds[idx] == golds[idx]).mean(axis=-1)
        elif self.kind == "mcc":
            return _mcc(preds, golds, self.n_labels)
        else:
            raise ValueError(f"unknown metric kind {self.kind!r}")

        def f1(idx: np.ndarray) -> np.ndarray:
            p, g = preds[idx], golds[idx]
            per_label = []
            for c in labels:
                tp = ((p == c) & (g == c)).sum(axis=-1)
                fp = ((p == c) & (g != c)).sum(axis=-1)
                fn = ((p != c) & (g == c)).sum(axis=-1)
                denom = 2 * tp + fp + fn
                per_label.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
            return np.mean(per_label, axis=0)

        return f1

    def score(self) -> float:
        return float(self.metric()(np.arange(len(self))))


def _mcc(preds: np.ndarray, golds: np.ndarray, n_labels: int) -> Callable[[np.ndarray], np.ndarray]:
    """Multi-class Matthews correlation on resamples (as scikit-learn's ``matthews_corrcoef``;
    an invalid prediction, index -1, is one more class)."""
    pred_cls = np.where(preds < 0, n_labels, preds)

    def fn(idx: np.ndarray) -> np.ndarray:
        p, g = pred_cls[idx], golds[idx]
        n = p.shape[-1]
        correct = (p == g).sum(axis=-1).astype(np.float64)
        t = np.stack([(g == c).sum(axis=-1) for c in range(n_labels + 1)], -1).astype(np.float64)
        q = np.stack([(p == c).sum(axis=-1) for c in range(n_labels + 1)], -1).astype(np.float64)
        cov_pt = correct * n - (q * t).sum(axis=-1)
        cov_pp = n * n - (q * q).sum(axis=-1)
        cov_tt = n * n - (t * t).sum(axis=-1)
        denom = np.sqrt(cov_pp * cov_tt)
        return np.where(denom > 0, cov_pt / np.where(denom > 0, denom, 1.0), 0.0)

    return fn


def example_scores(
    metric: str,
    *,
    values: Sequence[float] | None = None,
    preds: Sequence[str] | None = None,
    golds: Sequence[str] | None = None,
    labels: Sequence[str] = (),
    positive: str | None = None,
) -> ExampleScores:
    """Build :class:`ExampleScores` for a task metric: per-example ``values`` for mean-type
    metrics, or label-key ``preds``/``golds`` with the task's ``labels`` for F1 metrics."""
    if metric in ("macro_f1", "binary_f1", "accuracy", "mcc") and preds is not None:
        if golds is None or len(golds) != len(preds):
            raise ValueError("preds and golds must have the same length")
        index = {lab: i for i, lab in enumerate(labels)}
        return ExampleScores(
            kind=metric,
            preds=tuple(index.get(p, -1) for p in preds),
            golds=tuple(index[g] for g in golds),
            n_labels=len(labels),
            positive=None if positive is None else index[positive],
        )
    if values is None:
        raise ValueError(f"metric {metric!r} needs per-example values")
    return ExampleScores(kind="mean", values=tuple(float(v) for v in values))


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval(point: float, stats: np.ndarray, level: float, n: int) -> Estimate:
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    # Percentile intervals can miss the point by a rounding hair on degenerate data.
    return Estimate(float(point), float(min(low, point)), float(max(high, point)), n, level)


def bootstrap_ci(
    scores: ExampleScores,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Estimate:
    """The metric with its percentile-bootstrap interval over examples."""
    n = len(scores)
    if n == 0:
        raise ValueError("no examples to bootstrap")
    fn = scores.metric()
    point = float(fn(np.arange(n)))
    stats = np.concatenate(
        [fn(chunk) for chunk in np.array_split(_resample_indices(n, n_resamples, seed), 8)]
    )
    return _interval(point, stats, level, n)


def paired_bootstrap(
    a: ExampleScores,
    b: ExampleScores,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Estimate:
    """metric(a) − metric(b) on the same examples, with a paired percentile-bootstrap interval
    (one set of resampled example indices per replicate, applied to both systems)."""
    n = len(a)
    if n != len(b):
        raise ValueError(
            f"a paired difference needs the same examples: {n} vs {len(b)} scored examples"
        )
    if n == 0:
        raise ValueError("no examples to bootstrap")
    fa, fb = a.metric(), b.metric()
    full = np.arange(n)
    point = float(fa(full) - fb(full))
    stats = np.concatenate(
        [
            fa(chunk) - fb(chunk)
            for chunk in np.array_split(_resample_indices(n, n_resamples, seed), 8)
        ]
    )
    return _interval(point, stats, level, n)


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def seed_summary(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample standard deviation over seeds (std 0 for one seed), values kept."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise ValueError("no seeds to summarise")
    mean = math.fsum(vals) / len(vals)
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return SeedSummary(mean, std, vals)
