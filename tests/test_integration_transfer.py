"""Integration on the real models: cross-model projection SmolLM2-135M → Gemma-3-270M (different
width, depth, kv heads and tokenizer), a Gemma language prompt, and the capture engine on Gemma.
Few steps and short inputs: this checks the plumbing on real weights, not accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.bank import load_prompt, save_prompt
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from promptatlas.models import load_model

    return load_model("smollm2-135m")


def test_project_smollm2_prompt_onto_gemma(smollm2: Any, gemma: Any, tmp_path: Path) -> None:
    from promptatlas.transfer import project_prompt, train_projector

    src = SoftPrompt(PromptConfig(method="v2", length=4), smollm2.geometry)
    src.initialise(smollm2, generator=torch.Generator().manual_seed(0))
    assert (smollm2.geometry.n_layers, smollm2.geometry.d_kv) == (30, 192)
    fmt = TaskFormatter(gemma.tokenizer, get_task("sa", "en"), FormatConfig(max_length=32))
    train = load_split("sa", "en", "train", limit=8)
    projector, result = train_projector(
        src, gemma, fmt, train, TrainConfig(steps=2, batch_size=4, lr=1e-3, warmup=0.0),
        progress=False,
    )  # fmt: skip
    assert len(result.history) == 2
    projected = project_prompt(projector, src, gemma.geometry)
    assert projected.tensor().shape == (18, 4, 256)  # Gemma: 18 layers, d_kv 256
    save_prompt(tmp_path / "p", projected, gemma, task="sa", lang="en")
    loaded = load_prompt(tmp_path / "p", gemma).prompt
    ids = torch.tensor([gemma.tokenizer("Great film").input_ids])
    out = PromptedLM(gemma, loaded).forward(ids, torch.ones_like(ids))
    assert out.hidden.shape == (1, ids.shape[1], 640) and torch.isfinite(out.hidden).all()


def test_gemma_language_prompt_keeps_task_segment(gemma: Any, tmp_path: Path) -> None:
    from promptatlas.transfer import LanguagePromptConfig, train_language_prompt

    cfg = LanguagePromptConfig(
        lang="ko", model="gemma-3-270m", prompt=PromptConfig(method="v1"), lang_length=2,
        task_length=2, train=TrainConfig(steps=2, batch_size=2, lr=0.1, warmup=0.0),
        text_limit=12, max_length=16, heldout=0.25,
    )  # fmt: skip
    train_language_prompt(cfg, tmp_path / "lang", handle=gemma, progress=False)
    tensors = load_prompt(tmp_path / "lang", gemma).prompt.state_tensors()
    init = SoftPrompt(cfg.prompt_config, gemma.geometry)
    init.initialise(gemma, generator=torch.Generator().manual_seed(cfg.train.seed))
    assert torch.equal(tensors["task"], init.state_tensors()["task"])
    assert not torch.equal(tensors["lang"], init.state_tensors()["lang"])


def test_gemma_capture_matches_output_attentions(gemma: Any) -> None:
    from promptatlas.analysis.attention import attention_change
    from promptatlas.analysis.capture import CaptureRequest, capture_batch, context_batches

    fmt = TaskFormatter(gemma.tokenizer, get_task("sa", "en"), FormatConfig(max_length=24))
    batches = context_batches(fmt, load_split("sa", "en", "test", limit=2), batch_size=2)
    prompt = SoftPrompt(PromptConfig(method="v2", length=3), gemma.geometry)
    prompt.initialise(gemma, generator=torch.Generator().manual_seed(0))
    plm = PromptedLM(gemma, prompt)
    batch = batches[0]
    got = capture_batch(plm, batch, CaptureRequest.of(attention=[0, 17]))
    ref = plm.forward(batch.input_ids, batch.attention_mask, output_attentions=True).attentions
    assert ref is not None
    for layer in (0, 17):
        assert torch.allclose(got[("attention", layer)].tensor, ref[layer].float(), atol=1e-5)
    same = attention_change(gemma, None, batches, layers=[0, 9])
    assert float(same.kl.abs().max()) < 1e-6  # the base model against itself
    moved = attention_change(gemma, prompt, batches, layers=[0, 9])
    assert float(moved.kl.min()) > 0
