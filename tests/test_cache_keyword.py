"""v2 prefixes and cached decoding go to transformers under the cache keyword it asks for, so no
deprecation warning about ``past_key_values`` is raised (and the results stay the same)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest
import torch

from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.prompts.kv import cache_keyword, output_cache

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


class _Forward:
    def forward(self, input_ids: Any, past_key_values: Any = None) -> None: ...


class _Output:
    past_key_values = "old"


def test_keyword_follows_the_signature() -> None:
    assert cache_keyword(_Forward()) == "past_key_values"
    assert output_cache(_Output()) == "old"


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", ["v1", "v2"])
def test_no_past_key_values_warning(
    tiny_handles: dict[str, Any], name: str, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = tiny_handles[name]
    prompt = SoftPrompt(PromptConfig(method=method, length=3), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    plm = PromptedLM(handle, prompt)
    ids = torch.randint(5, 200, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        first = plm.forward(ids, mask, use_cache=True, share_prompt=True)
        assert first.past_key_values is not None
        step = ids[:, -1:]
        full_mask = torch.ones(2, plm.n_prompt + 6, dtype=mask.dtype)
        positions = torch.full((2, 1), 5 + (prompt.length if method == "v2" else 0))
        if method == "v1":
            positions = positions + prompt.length
        nxt = plm.forward(
            step, full_mask, position_ids=positions, past_key_values=first.past_key_values,
            use_cache=True,
        )  # fmt: skip
        assert nxt.past_key_values is not None
    assert not [r for r in caplog.records if "past_key_values" in r.getMessage()]
