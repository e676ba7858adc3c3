"""The key/value cache a model computes for a token sequence (v2 prompt states)."""

from __future__ import annotations

from typing import Any

import torch

from promptatlas.models.registry import ModelHandle

__all__ = ["cache_for", "token_key_values"]


def cache_for(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.no_grad()
def token_key_values(handle: ModelHandle, ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per layer (keys, values) as (T, d_kv) that the model computes for one token sequence."""
    cache = cache_for(handle.model)
    handle.adapter.backbone(handle.model)(input_ids=ids, past_key_values=cache, use_cache=True)
    out: list[tuple[torch.Tensor, ...]] = []
    for layer in cache.layers:
        k = layer.keys[0].permute(1, 0, 2).reshape(ids.shape[1], -1)
        v = layer.values[0].permute(1, 0, 2).reshape(ids.shape[1], -1)
        out.append((k, v))
    return out
