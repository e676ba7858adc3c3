"""Transfer maths: factorised language/task sub-prompts and cross-model projectors (SPEC §4).

The runs that use them (transfer, zero-shot, cross-model) live in :mod:`promptatlas.runs`, the
transfer grid in :mod:`promptatlas.studies.grid`. Their old names here are kept for one release
and resolve on first use (module ``__getattr__``), so this package never loads the layers above
it.
"""

import importlib
from typing import Any

from promptatlas.transfer.projector import (
    ProjectedPrompt,
    ProjectorConfig,
    ProjectorError,
    PromptProjector,
    load_projector,
    project_prompt,
    save_projector,
    train_projector,
)
from promptatlas.transfer.subprompts import (
    LANG_SEGMENT,
    TASK_SEGMENT,
    LanguagePromptConfig,
    LanguagePromptResult,
    factorised_config,
    is_factorised,
    task_prompt_from_language,
    train_language_prompt,
)

__all__ = [
    "LANG_SEGMENT",
    "TASK_SEGMENT",
    "LanguagePromptConfig",
    "LanguagePromptResult",
    "ProjectedPrompt",
    "ProjectorConfig",
    "ProjectorError",
    "PromptProjector",
    "factorised_config",
    "is_factorised",
    "load_projector",
    "project_prompt",
    "save_projector",
    "task_prompt_from_language",
    "train_language_prompt",
    "train_projector",
]

# Old names of this package -> the module that now holds them (kept for one release).
_MOVED = {
    **dict.fromkeys(
        ("ProjectConfig", "check_project_target", "project_across_models"),
        "promptatlas.runs.crossmodel",
    ),
    **dict.fromkeys(
        ("Cell", "GridConfig", "TransferSpec", "load_grid", "parse_shard", "run_grid"),
        "promptatlas.studies.grid",
    ),
    **dict.fromkeys(
        (
            "TransferResult",
            "source_label_variant",
            "steps_to_reach",
            "transfer_kind",
            "transfer_prompt",
            "transfer_run",
            "zero_shot",
        ),
        "promptatlas.runs.transfer",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
