"""Transfer: factorised language/task sub-prompts, cross-task and cross-language transfer,
zero-shot evaluation, transfer grids and cross-model projectors (SPEC §4)."""

from promptatlas.transfer.grid import (
    Cell,
    GridConfig,
    TransferSpec,
    load_grid,
    parse_shard,
    run_grid,
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
from promptatlas.transfer.transfer import (
    TransferResult,
    source_label_variant,
    steps_to_reach,
    transfer_kind,
    transfer_prompt,
    transfer_run,
    zero_shot,
)

__all__ = [
    "LANG_SEGMENT",
    "TASK_SEGMENT",
    "Cell",
    "GridConfig",
    "LanguagePromptConfig",
    "LanguagePromptResult",
    "TransferResult",
    "TransferSpec",
    "factorised_config",
    "is_factorised",
    "load_grid",
    "parse_shard",
    "run_grid",
    "source_label_variant",
    "steps_to_reach",
    "task_prompt_from_language",
    "train_language_prompt",
    "transfer_kind",
    "transfer_prompt",
    "transfer_run",
    "zero_shot",
]
