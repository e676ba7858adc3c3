"""Evaluation: predictions and task metrics."""
