"""Training soft prompts: configuration, optimisation loop, resumable checkpoints."""

from promptatlas.training.trainer import (
    CHECKPOINT,
    CheckpointError,
    TrainConfig,
    TrainConfigError,
    TrainingInterrupted,
    TrainResult,
    checkpoint_dir_for,
    has_checkpoint,
    remove_checkpoint,
    train_prompt,
)

__all__ = [
    "CHECKPOINT",
    "CheckpointError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingInterrupted",
    "checkpoint_dir_for",
    "has_checkpoint",
    "remove_checkpoint",
    "train_prompt",
]
