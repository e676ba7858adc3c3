"""``device_map`` (accelerate) loading: on one device it must change nothing, for v1 and for v2
prefixes placed per layer; the map is recorded on the handle. (Several GPUs are not available
to the test suite; the per-layer placement is what makes them work.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import FormatConfig, TaskFormatter, collate
from promptatlas.models import load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split


def _loss_and_grad(handle: Any, method: str) -> tuple[float, torch.Tensor]:
    prompt = SoftPrompt(PromptConfig(method=method, length=4, init="uniform"), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    prompt.to(handle.device)
    plm = PromptedLM(handle, prompt)
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"), FormatConfig(max_length=32))
    examples = load_split("sa", "en", "train", limit=4)
    batch = collate([fmt.encode(ex) for ex in examples], handle.tokenizer.pad_token_id)
    loss = target_loss(plm, batch)
    grads = torch.autograd.grad(loss, prompt.trainable_parameters())
    return float(loss), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("method", ["v1", "v2"])
def test_device_map_on_one_device_changes_nothing(name: str, method: str) -> None:
    pytest.importorskip("accelerate")
    plain = load_model(name)
    mapped = load_model(name, device_map={"": "cpu"})
    assert mapped.info["device_map"] == {"": "cpu"}
    assert "device_map" not in plain.info
    assert all(mapped.layer_device(i) == mapped.device for i in range(mapped.geometry.n_layers))
    a_loss, a_grad = _loss_and_grad(plain, method)
    b_loss, b_grad = _loss_and_grad(mapped, method)
    assert b_loss == pytest.approx(a_loss, abs=1e-6)
    torch.testing.assert_close(b_grad, a_grad, atol=1e-6, rtol=1e-5)
    assert a_grad.abs().sum() > 0
