"""Soft prompts: equivalence with PEFT, parameter counts, segments, layer subsets."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from promptatlas.models import ModelGeometry
from promptatlas.prompts import (
    PromptConfig,
    PromptConfigError,
    PromptedLM,
    SegmentConfig,
    SoftPrompt,
    expected_num_parameters,
)

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as in training
    mask[2, 4:] = 0
    return ids, mask


def _prompt(handle: Any, **kw: Any) -> SoftPrompt:
    prompt = SoftPrompt(PromptConfig(**kw), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    return prompt


@pytest.mark.parametrize("name", TINY)
def test_v1_logits_equal_peft_prompt_tuning(tiny_handles: dict[str, Any], name: str) -> None:
    handle = tiny_handles[name]
    prompt = _prompt(handle, method="v1", length=5)
    ids, mask = _batch()
    ours = PromptedLM(handle, prompt).full_logits(ids, mask)
    peft_model = get_peft_model(
        copy.deepcopy(handle.model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt.tensor())
        ref = peft_model(input_ids=ids, attention_mask=mask).logits[:, 5:]
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)
    # and the prompt really matters: the base model differs
    base = PromptedLM(handle, None).full_logits(ids, mask)
    assert (base[real] - ours[real]).abs().max() > 1e-3


@pytest.mark.parametrize("name", TINY)
def test_v2_separate_logits_equal_peft_prefix_tuning(
    tiny_handles: dict[str, Any], name: str
) -> None:
    handle = tiny_handles[name]
    prompt = _prompt(handle, method="v2", length=4, kv="separate")
    ids, mask = _batch()
    ours = PromptedLM(handle, prompt).full_logits(ids, mask)
    peft_model = get_peft_model(
        copy.deepcopy(handle.model), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    # PEFT rows are laid out [layer, key/value, kv-head, head_dim]
    weight = prompt.tensor().permute(2, 0, 1, 3).reshape(4, -1)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(weight)
        ref = peft_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)


def test_shared_kv_equals_separate_with_equal_keys_and_values(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    shared = _prompt(handle, method="v2", length=3, kv="shared")
    separate = SoftPrompt(PromptConfig(method="v2", length=3, kv="separate"), handle.geometry)
    t = shared.tensor().detach()
    separate.set_segment("task", torch.stack([t, t], dim=1))
    ids, mask = _batch()
    torch.testing.assert_close(
        PromptedLM(handle, shared).full_logits(ids, mask),
        PromptedLM(handle, separate).full_logits(ids, mask),
    )


def test_parameter_counts_match_formulas() -> None:
    mgpt = ModelGeometry(
        n_layers=24,
        d_model=2048,
        n_heads=16,
        n_kv_heads=16,
        head_dim=128,
        d_ffn=8192,
        vocab_size=100_000,
    )
    # thesis §5.1: v1 = 20 × 2048, v2 = 24 × 20 × 2048
    assert SoftPrompt(PromptConfig(method="v1", length=20), mgpt).num_parameters() == 40_960
    assert SoftPrompt(PromptConfig(method="v2", length=20), mgpt).num_parameters() == 983_040
    gemma = ModelGeometry(
        n_layers=18,
        d_model=640,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ffn=2048,
        vocab_size=262_144,
    )
    for cfg, expected in [
        (PromptConfig(method="v1", length=20), 20 * 640),
        (PromptConfig(method="v2", length=20), 18 * 20 * 256),
        (PromptConfig(method="v2", length=20, kv="separate"), 18 * 2 * 20 * 256),
        (PromptConfig(method="v2", length=10, layers=(0, 1, 16, 17)), 4 * 10 * 256),
    ]:
        assert SoftPrompt(cfg, gemma).num_parameters() == expected
        assert expected_num_parameters(cfg, gemma) == expected


def test_segments_concatenate_and_freeze(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    cfg = PromptConfig(
        method="v1", segments=(SegmentConfig("lang", 3, trainable=False), SegmentConfig("task", 2))
    )
    prompt = SoftPrompt(cfg, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    assert prompt.length == 5
    assert prompt.num_parameters(trainable_only=True) == 2 * handle.geometry.d_model
    torch.testing.assert_close(prompt.tensor()[:3], prompt.segments["lang"])
    torch.testing.assert_close(prompt.tensor()[3:], prompt.segments["task"])
    assert [p.shape[0] for p in prompt.trainable_parameters()] == [2]


def test_layer_subset_ignores_other_layers_prefix(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gemma3"]
    ids, mask = _batch()
    sub = _prompt(handle, method="v2", length=3, layers=(0, 2))
    full = SoftPrompt(PromptConfig(method="v2", length=3), handle.geometry)
    # A full-depth prompt equal on layers 0 and 2 but different elsewhere gives other logits…
    values = torch.randn(full.segment_shape(3))
    values[[0, 2]] = sub.tensor().detach()
    full.set_segment("task", values)
    sub_logits = PromptedLM(handle, sub).full_logits(ids, mask)
    assert (PromptedLM(handle, full).full_logits(ids, mask) - sub_logits).abs().max() > 1e-4
    # …and the unselected layers really see no prefix: filling their (masked) cache slots with
    # random keys/values must not change anything.
    plm = PromptedLM(handle, sub)
    original = plm.prefix_cache

    def noisy_cache(batch: int) -> Any:
        cache = original(batch)
        for layer in (1, 3):
            cache.layers[layer].keys = torch.randn_like(cache.layers[layer].keys) * 10
            cache.layers[layer].values = torch.randn_like(cache.layers[layer].values) * 10
        return cache

    plm.prefix_cache = noisy_cache  # type: ignore[method-assign]
    torch.testing.assert_close(plm.full_logits(ids, mask), sub_logits)


def test_prompt_config_validation() -> None:
    with pytest.raises(PromptConfigError, match="method"):
        PromptConfig(method="v3")  # type: ignore[arg-type]
    with pytest.raises(PromptConfigError, match="v2 prompts only"):
        PromptConfig(method="v1", layers=(0,))
    with pytest.raises(PromptConfigError, match="unique"):
        PromptConfig(segments=(SegmentConfig("a", 1), SegmentConfig("a", 2)))
    with pytest.raises(PromptConfigError, match="do not exist"):
        PromptConfig(method="v2", layers=(0, 30)).layer_indices(18)


@pytest.mark.parametrize("init", ["vocab", "labels"])
def test_token_inits_use_model_states(tiny_handles: dict[str, Any], init: str) -> None:
    handle = tiny_handles["tiny-llama"]
    gen = torch.Generator().manual_seed(0)
    v1 = SoftPrompt(PromptConfig(method="v1", length=4, init=init), handle.geometry)  # type: ignore[arg-type]
    v1.initialise(handle, generator=gen, label_token_ids=[70, 71])
    emb = handle.adapter.input_embeddings(handle.model).weight
    rows = [int((emb - row).abs().sum(1).argmin()) for row in v1.tensor()]
    if init == "labels":
        assert rows == [70, 71, 70, 71]
    else:
        assert all(torch.allclose(v1.tensor()[i], emb[r]) for i, r in enumerate(rows))


def test_bf16_autocast_stays_close_and_float32(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    prompt = _prompt(handle, method="v2", length=3)
    ids, mask = _batch()
    exact = PromptedLM(handle, prompt).full_logits(ids, mask)
    fast = PromptedLM(handle, prompt, autocast_dtype=torch.bfloat16).full_logits(ids, mask)
    assert fast.dtype == torch.float32
    real = mask.bool()
    diff = (fast[real] - exact[real]).abs().max()
    assert 0 < diff < 0.05 * exact[real].abs().max()
