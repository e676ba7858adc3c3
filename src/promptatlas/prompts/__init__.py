"""Soft prompts: configuration, segments, initialisation and injection into a forward pass."""

from promptatlas.prompts.config import (
    Init,
    Method,
    PromptConfig,
    PromptConfigError,
    SegmentConfig,
)
from promptatlas.prompts.injection import PromptedForward, PromptedLM, token_key_values
from promptatlas.prompts.soft_prompt import (
    PromptSizeWarning,
    SoftPrompt,
    check_context,
    expected_num_parameters,
)

__all__ = [
    "Init",
    "Method",
    "PromptConfig",
    "PromptConfigError",
    "PromptSizeWarning",
    "PromptedForward",
    "PromptedLM",
    "SegmentConfig",
    "SoftPrompt",
    "check_context",
    "expected_num_parameters",
    "token_key_values",
]
