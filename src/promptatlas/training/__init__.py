"""Training soft prompts: configuration, optimisation loop, resumable checkpoints."""

from promptatlas.training.trainer import TrainConfig, TrainConfigError, TrainResult, train_prompt

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "train_prompt"]
