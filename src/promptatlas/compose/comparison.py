"""A composed prompt against the prompts it stands in for: the target's own prompt (full prompt
tuning) and the untrained prompt, on the same test examples, with paired 95% intervals.

Composition is worth something only where it keeps what training gave: AMP's composed target
prompt should score near the target's own prompt and above the untrained one; an IST prompt
(IPT) recovers a part of the own prompt's gain. :func:`compare_to_own` puts those three scores
side by side; the paired differences come from the per-example data each evaluation stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from promptatlas.compose.common import MethodScore
from promptatlas.compose.ipt import gain_recovery
from promptatlas.evaluation.evaluate import paired_gain, stored_examples

__all__ = ["OwnComposition", "ScoreComparison", "compare_to_own"]


@dataclass(frozen=True)
class ScoreComparison:
    """One composed prompt's test score beside its target's own and untrained prompts.

    score / low / high / n: the composed prompt's score and 95% bootstrap interval.
    own, untrained: the own prompt's and the untrained prompt's scores (None when unknown).
    minus_own, minus_untrained: paired differences (``value``, ``low``, ``high``, ``n``,
    ``level``, ``significant``), None where the two were not scored on the same examples.
    recovery = score / own (IPT's); gain_recovery = (score − untrained) / (own − untrained)."""

    method: str
    key: str
    score: float
    low: float | None
    high: float | None
    n: int
    own: float | None
    untrained: float | None
    minus_own: dict[str, Any] | None
    minus_untrained: dict[str, Any] | None

    @property
    def recovery(self) -> float | None:
        return None if not self.own else self.score / self.own

    @property
    def gain_recovery(self) -> float | None:
        if self.own is None or self.untrained is None:
            return None
        return gain_recovery(self.score, self.own, self.untrained)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recovery": self.recovery, "gain_recovery": self.gain_recovery}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreComparison:
        return cls(**{k: v for k, v in data.items() if k not in ("recovery", "gain_recovery")})


def _score(summary: Mapping[str, Any] | None) -> float | None:
    value = (summary or {}).get("score")
    return None if value is None else float(value)


def compare_to_own(
    score: MethodScore,
    own: Mapping[str, Any] | None,
    untrained: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> ScoreComparison:
    """``score`` (a composed prompt's) against ``own`` and ``untrained``: the stored test
    summaries of the target's own prompt and of the untrained prompt (``metrics["test"]`` and
    ``metrics["untrained_test"]`` of the own prompt; :meth:`EvalResult.summary`)."""
    mine = stored_examples(score.summary)
    return ScoreComparison(
        method=score.method,
        key=score.key,
        score=score.score,
        low=score.low,
        high=score.high,
        n=score.n,
        own=_score(own),
        untrained=_score(untrained),
        minus_own=paired_gain(mine, stored_examples(own), seed=seed),
        minus_untrained=paired_gain(mine, stored_examples(untrained), seed=seed),
    )


@dataclass
class OwnComposition:
    """What a grid's composition step measured: AMP's composed prompts and one IST prompt, each
    against its target's own prompt (rendered by
    :func:`promptatlas.report.compose.own_composition_markdown`)."""

    model: str
    amp_lang: str | None = None
    amp: list[ScoreComparison] = field(default_factory=list)
    attention: list[list[float]] | None = None
    attention_keys: list[str] = field(default_factory=list)
    ipt: ScoreComparison | None = None
    ipt_dim: int | None = None
    ipt_fitted: list[str] = field(default_factory=list)
    ipt_seen: bool | None = None
    ipt_reconstruction_mse: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["amp"] = [c.to_dict() for c in self.amp]
        out["ipt"] = None if self.ipt is None else self.ipt.to_dict()
        return out
