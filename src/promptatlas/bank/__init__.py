"""The prompt bank: stored prompts (safetensors + JSON), PEFT export and the results database."""

from promptatlas.bank.peft_export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ExportError,
    export_peft,
    peft_weights,
)
from promptatlas.bank.results import (
    DEFAULT_COLUMNS,
    SCORE_KEYS,
    ResultsDB,
    RunRecord,
    default_db_path,
    format_runs_table,
)
from promptatlas.bank.store import (
    FORMAT_VERSION,
    METADATA_FILE,
    TENSORS_FILE,
    PromptLoadError,
    PromptMetadata,
    StoredPrompt,
    check_compatible,
    list_prompts,
    load_prompt,
    read_metadata,
    save_prompt,
    update_metrics,
    versions,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_COLUMNS",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "SCORE_KEYS",
    "TENSORS_FILE",
    "ExportError",
    "PromptLoadError",
    "PromptMetadata",
    "ResultsDB",
    "RunRecord",
    "StoredPrompt",
    "check_compatible",
    "default_db_path",
    "export_peft",
    "format_runs_table",
    "list_prompts",
    "load_prompt",
    "peft_weights",
    "read_metadata",
    "save_prompt",
    "update_metrics",
    "versions",
]
