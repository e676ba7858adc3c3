"""Training soft prompts: configuration, optimisation loop, resumable checkpoints."""

from promptatlas.training.defaults import DEFAULTS, MethodDefaults, default_lr, defaults_for
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
    resolve_training,
    train_prompt,
)

__all__ = [
    "CHECKPOINT",
    "DEFAULTS",
    "CheckpointError",
    "MethodDefaults",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingInterrupted",
    "checkpoint_dir_for",
    "default_lr",
    "defaults_for",
    "has_checkpoint",
    "remove_checkpoint",
    "resolve_training",
    "train_prompt",
]
