"""The key/value cache a model computes for a token sequence (v2 prompt states)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from promptatlas.models.registry import ModelHandle

__all__ = ["cache_for", "cache_keyword", "output_cache", "token_key_values", "with_cache"]


_KEYWORDS: dict[type, str] = {}


def _keyword_of(cls: type) -> str:
    if cls not in _KEYWORDS:
        try:
            parameters = inspect.signature(getattr(cls, "forward")).parameters  # noqa: B009
        except (TypeError, ValueError, AttributeError):
            parameters = {}  # type: ignore[assignment]
        _KEYWORDS[cls] = "cache" if "cache" in parameters else "past_key_values"
    return _KEYWORDS[cls]


def cache_keyword(module: Any) -> str:
    """The keyword a transformers module's ``forward`` takes the key/value cache under:
    ``cache`` where transformers has it (``past_key_values`` is deprecated there and warns,
    to be removed in 5.40), else ``past_key_values`` (the transformers 5 releases before the
    rename)."""
    return _keyword_of(type(module))


def with_cache(module: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (see :func:`cache_keyword`)."""
    return {cache_keyword(module): cache}


def output_cache(out: Any) -> Any:
    """The key/value cache of a transformers model output: ``out.cache`` where the field has
    the new name (reading ``past_key_values`` there warns), else ``out.past_key_values``."""
    if "cache" in getattr(type(out), "__dataclass_fields__", {}):
        return out.cache
    return getattr(out, "past_key_values", None)


def cache_for(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.no_grad()
def token_key_values(handle: ModelHandle, ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (keys, values) as (T, d_kv) that the model computes for one token sequence."""
    cache = cache_for(handle.model)
    backbone = handle.adapter.backbone(handle.model)
    backbone(input_ids=ids, use_cache=True, **with_cache(backbone, cache))
    out: list[tuple[torch.Tensor, ...]] = []
    for layer in cache.layers:
        k = layer.keys[0].permute(1, 0, 2).reshape(ids.shape[1], -1)
        v = layer.values[0].permute(1, 0, 2).reshape(ids.shape[1], -1)
        out.append((k, v))
    return out
