"""Evaluate a prompt on a task split: predictions + the task's metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.evaluation.confidence import (
    Estimate,
    ExampleScores,
    bootstrap_ci,
    paired_bootstrap,
)
from promptatlas.evaluation.metrics import score_predictions
from promptatlas.evaluation.predict import generate, rank_classify
from promptatlas.evaluation.scoring import check_label_words, resolve_length_normalise
from promptatlas.formatting import TaskFormatter
from promptatlas.prompts.injection import PromptedLM
from promptatlas.tasks import Example

__all__ = ["EvalConfig", "EvalResult", "evaluate", "paired_gain", "stored_examples"]


@dataclass(frozen=True)
class EvalConfig(ConfigBase):
    """How to predict. ``mode`` "rank" (classification default) scores each label's words;
    "generate" decodes greedily and maps the text to a label (reported separately).

    Rank scoring (:mod:`promptatlas.evaluation.scoring`): the summed log-probability of a label
    word's tokens (default; chosen by measurement, README "Your own task"), their mean with
    ``length_normalise``, or the first token's only with ``first_token``."""

    mode: Literal["auto", "rank", "generate"] = "auto"
    batch_size: int = 16
    length_normalise: bool = False
    first_token: bool = False
    score_eos: bool = False
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("auto", "rank", "generate"):
            raise ConfigError(f"mode must be auto, rank or generate, got {self.mode!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("batch_size and max_new_tokens must be ≥ 1")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[str]
    n: int
    mode: str
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-example data of the main metric, for bootstrap and paired intervals.
    examples: ExampleScores | None = None

    @property
    def score(self) -> float:
        return float(self.metrics["score"])

    def ci(self, *, seed: int = 0) -> Estimate | None:
        """The main score with its 95% bootstrap interval over the evaluated examples."""
        return None if self.examples is None else bootstrap_ci(self.examples, seed=seed)

    def summary(self) -> dict[str, Any]:
        """Metrics, count and mode, the main score's 95% interval (``ci``: [low, high]) and
        the per-example data (``examples``) that later paired intervals are computed from."""
        out: dict[str, Any] = {**self.metrics, "n": self.n, "mode": self.mode}
        est = self.ci()
        if est is not None and self.examples is not None:
            out["ci"] = [est.low, est.high]
            out["examples"] = self.examples.to_dict()
        return out


def stored_examples(summary: Mapping[str, Any] | None) -> ExampleScores | None:
    """The per-example data of a stored :meth:`EvalResult.summary` (None for older runs)."""
    data = (summary or {}).get("examples")
    return ExampleScores.from_dict(data) if isinstance(data, Mapping) else None


def paired_gain(
    a: ExampleScores | None, b: ExampleScores | None, *, seed: int = 0
) -> dict[str, Any] | None:
    """a − b with its paired 95% bootstrap interval, as a dict (None when either side lacks
    per-example data or they were scored on different numbers of examples)."""
    if a is None or b is None or len(a) != len(b):
        return None
    return paired_bootstrap(a, b, seed=seed).to_dict()


def rank_predict(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    cfg: EvalConfig,
    *,
    log_probs: bool = True,
) -> tuple[list[str], torch.Tensor]:
    """Rank classification with ``cfg``'s scoring (warning on uneven label words under summed
    scores): the predicted label keys and the (N, n_labels) scores (``log_probs`` False:
    where only the predictions are used; see :func:`rank_classify`)."""
    check_label_words(formatter, cfg)
    return rank_classify(
        plm,
        formatter,
        examples,
        batch_size=cfg.batch_size,
        length_normalise=resolve_length_normalise(cfg, formatter),
        score_eos=cfg.score_eos,
        first_token=cfg.first_token,
        log_probs=log_probs,
    )


def evaluate(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    config: EvalConfig | None = None,
) -> EvalResult:
    """Predict every example and compute the task's metrics (fractions in [0, 1])."""
    cfg = config or EvalConfig()
    if not examples:
        raise ValueError(f"no examples to evaluate for {formatter.task.name}")
    task = formatter.task
    mode = cfg.mode
    if mode == "auto":
        mode = "rank" if task.spec.kind == "classification" else "generate"
    if mode == "rank":
        if task.spec.kind != "classification":
            raise ValueError(f"rank classification needs a classification task, not {task.name}")
        preds, _ = rank_predict(plm, formatter, examples, cfg, log_probs=False)
        metrics, scores = score_predictions(task, preds, examples)
        return EvalResult(metrics, preds, len(examples), mode, examples=scores)
    texts = generate(
        plm, formatter, examples, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size
    )
    if task.spec.kind == "classification":
        # Generated label words → label keys; anything else counts as wrong ("<invalid>").
        words = {task.verbalizers[lab]: lab for lab in task.labels}
        preds = [words.get(t.strip(), "<invalid>") for t in texts]
        valid = sum(p != "<invalid>" for p in preds) / len(preds)
        metrics, scores = score_predictions(task, preds, examples)
        metrics["valid_label_rate"] = valid
        return EvalResult(metrics, texts, len(examples), mode, examples=scores)
    metrics, scores = score_predictions(task, texts, examples)
    return EvalResult(metrics, texts, len(examples), mode, examples=scores)
