"""Integration on the real Gemma-3-270M (first run converts the GGUF once, ~1 minute)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.bank import load_prompt, save_prompt
from promptatlas.evaluation.evaluate import evaluate
from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import TaskFormatter, collate
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig, train_prompt

pytestmark = pytest.mark.integration


def test_gemma_geometry_from_adapter(gemma: Any) -> None:
    g = gemma.geometry
    assert (g.n_layers, g.d_model, g.n_heads, g.n_kv_heads, g.head_dim, g.d_ffn) == (
        18, 640, 4, 1, 256, 2048,
    )  # fmt: skip
    assert g.vocab_size == 262_144 and g.d_kv == 256
    assert len(gemma.adapter.layers(gemma.model)) == 18


def test_gemma_v1_equals_peft(gemma: Any) -> None:
    from peft import PromptTuningConfig, get_peft_model

    prompt = SoftPrompt(PromptConfig(method="v1", length=4), gemma.geometry)
    prompt.initialise(gemma, generator=torch.Generator().manual_seed(0))
    # right padding, as in training
    tokens = [gemma.tokenizer("The movie was great").input_ids, gemma.tokenizer("Bad").input_ids]
    width = max(map(len, tokens))
    input_ids = torch.tensor([t + [0] * (width - len(t)) for t in tokens])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tokens])
    ours = PromptedLM(gemma, prompt).full_logits(input_ids, mask)
    peft_model = get_peft_model(
        copy.deepcopy(gemma.model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt.tensor())
        ref = peft_model(input_ids=input_ids, attention_mask=mask).logits[:, 4:]
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_gemma_trains_and_evaluates(gemma: Any, method: str, tmp_path: Path) -> None:
    task = get_task("sa", "en")
    fmt = TaskFormatter(gemma.tokenizer, task)
    train = load_split("sa", "en", "train", limit=8)
    prompt = SoftPrompt(PromptConfig(method=method, length=4), gemma.geometry)  # type: ignore[arg-type]
    prompt.initialise(gemma, generator=torch.Generator().manual_seed(0))
    plm = PromptedLM(gemma, prompt)
    batch = collate([fmt.encode(ex) for ex in train], gemma.tokenizer.pad_token_id)
    with torch.no_grad():
        before = float(target_loss(plm, batch))
    lr = 0.3 if method == "v1" else 0.05
    train_prompt(plm, fmt, train, TrainConfig(steps=4, batch_size=8, lr=lr, warmup=0.0),
                 progress=False)  # fmt: skip
    with torch.no_grad():
        after = float(target_loss(plm, batch))
    assert after < before
    result = evaluate(plm, fmt, load_split("sa", "en", "test", limit=6))
    assert result.n == 6 and 0.0 <= result.score <= 1.0
    saved = save_prompt(tmp_path / "p", prompt, gemma, task="sa", lang="en")
    again = load_prompt(saved, gemma)
    assert torch.equal(again.prompt.tensor(), prompt.tensor().detach().cpu())


def test_gemma_reads_korean_labels(gemma: Any) -> None:
    fmt = TaskFormatter(gemma.tokenizer, get_task("sa", "ko"))
    ids = fmt.label_token_ids()
    assert gemma.tokenizer.decode(ids["positive"]) == "긍정"
    plm = PromptedLM(gemma, None)
    result = evaluate(plm, fmt, load_split("sa", "ko", "test", limit=4))
    assert result.n == 4
