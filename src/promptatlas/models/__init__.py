"""Models: registry of offline loaders and per-architecture adapters."""

from promptatlas.models.adapters import (
    ADAPTERS,
    ArchitectureAdapter,
    ModelGeometry,
    UnsupportedArchitectureError,
    adapter_for,
)
from promptatlas.models.registry import (
    DEFAULT_MODEL,
    MODELS,
    DeviceError,
    ModelEntry,
    ModelHandle,
    ModelNotAvailableError,
    cache_root,
    list_models,
    load_model,
    load_tokenizer,
    resolve_device,
    weights_fingerprint,
)

__all__ = [
    "ADAPTERS",
    "DEFAULT_MODEL",
    "MODELS",
    "ArchitectureAdapter",
    "DeviceError",
    "ModelEntry",
    "ModelGeometry",
    "ModelHandle",
    "ModelNotAvailableError",
    "UnsupportedArchitectureError",
    "adapter_for",
    "cache_root",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "weights_fingerprint",
]
