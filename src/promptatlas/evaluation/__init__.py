"""Evaluation: LM loss, rank classification, greedy generation and the task metrics."""

from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from promptatlas.evaluation.metrics import (
    accuracy,
    binary_f1,
    compute_metrics,
    coverage,
    macro_f1,
    squad_em_f1,
)
from promptatlas.evaluation.predict import generate, rank_classify, target_logprobs, target_loss

__all__ = [
    "EvalConfig",
    "EvalResult",
    "accuracy",
    "binary_f1",
    "compute_metrics",
    "coverage",
    "evaluate",
    "generate",
    "macro_f1",
    "rank_classify",
    "squad_em_f1",
    "target_logprobs",
    "target_loss",
]
