"""Prediction paths against plain full-logit reference computations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.predict import generate, rank_classify, target_loss
from promptatlas.formatting import FormatConfig, TaskFormatter, collate
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import Example, get_task, load_split


def _plm(handle: Any, method: str | None) -> PromptedLM:
    if method is None:
        return PromptedLM(handle, None)
    prompt = SoftPrompt(PromptConfig(method=method, length=3), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(3))
    return PromptedLM(handle, prompt)


def test_format_of_pair_task(tiny_handles: dict[str, Any]) -> None:
    tok = tiny_handles["tiny-gpt2"].tokenizer
    fmt = TaskFormatter(tok, get_task("nli", "en"))
    enc = fmt.encode(Example(inputs=("ab", "c"), target="neutral", label="neutral"))
    text = tok.decode(list(enc.ids))
    assert text == "<bos>ab<sep>c<sep>neutral<eos>"
    assert tok.decode(list(enc.ids[enc.n_context :])) == "neutral<eos>"
    # truncation keeps the budget and shortens the longest input first
    long = Example(inputs=("x" * 500, "y" * 20), target="neutral", label="neutral")
    short = TaskFormatter(tok, get_task("nli", "en"), FormatConfig(max_length=60)).encode(long)
    assert len(short.ids) <= 60 and tok.decode(list(short.ids)).count("y") == 20


@pytest.mark.parametrize("method", [None, "v1", "v2"])
def test_target_loss_matches_full_logits(tiny_handles: dict[str, Any], method: str | None) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _plm(handle, method)
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    batch = collate([fmt.encode(e) for e in load_split("sa", "en", "dev", limit=4)], 0)
    logits = plm.full_logits(batch.input_ids, batch.attention_mask)
    lp = torch.log_softmax(logits[:, :-1], -1)
    tgt = batch.target_mask[:, 1:]
    ref = -lp.gather(2, batch.input_ids[:, 1:, None])[..., 0][tgt].mean()
    torch.testing.assert_close(target_loss(plm, batch), ref)


@pytest.mark.parametrize("method", [None, "v1", "v2"])
@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-llama", "tiny-gpt2"])
def test_rank_classification_matches_manual_scores(
    tiny_handles: dict[str, Any], method: str | None, name: str
) -> None:
    handle = tiny_handles[name]
    plm = _plm(handle, method)
    task = get_task("nli", "en")  # byte tokenizer: multi-token label words
    fmt = TaskFormatter(handle.tokenizer, task)
    examples = load_split("nli", "en", "test", limit=5)
    preds, scores = rank_classify(plm, fmt, examples, batch_size=4)
    for i, ex in enumerate(examples):
        reserve = max(len(ids) for ids in fmt.label_token_ids().values())
        ctx = fmt.encode_context(ex, reserve=reserve)
        for j, label in enumerate(task.labels):
            ids = torch.tensor([ctx + fmt.label_token_ids()[label]])
            lp = torch.log_softmax(plm.full_logits(ids, torch.ones_like(ids))[0], -1)
            n = len(fmt.label_token_ids()[label])
            ref = sum(float(lp[len(ctx) - 1 + t, ids[0, len(ctx) + t]]) for t in range(n))
            assert abs(float(scores[i, j]) - ref) < 1e-4
        assert preds[i] == task.labels[int(scores[i].argmax())]


@pytest.mark.parametrize("method", [None, "v1", "v2"])
def test_greedy_generation_matches_uncached_reference(
    tiny_handles: dict[str, Any], method: str | None
) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _plm(handle, method)
    fmt = TaskFormatter(handle.tokenizer, get_task("cg", "en"))
    examples = load_split("cg", "en", "test", limit=3)
    out = generate(plm, fmt, examples, max_new_tokens=6, batch_size=3)  # left-padded batch
    for ex, text in zip(examples, out, strict=True):
        ids = fmt.encode_context(ex, reserve=6)
        new: list[int] = []
        for _ in range(6):
            t = torch.tensor([ids + new])
            nxt = int(plm.full_logits(t, torch.ones_like(t))[0, -1].argmax())
            if nxt == fmt.eos_id:
                break
            new.append(nxt)
        assert text == handle.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_evaluate_reports_task_metrics(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    plm = _plm(handle, "v1")
    fmt = TaskFormatter(handle.tokenizer, get_task("sts", "en"))
    examples = load_split("sts", "en", "test", limit=6)
    result = evaluate(plm, fmt, examples)
    assert result.mode == "rank" and result.n == 6
    assert {"accuracy", "binary_f1", "score"} <= set(result.metrics)
    assert result.score == result.metrics["binary_f1"]
    gen = evaluate(plm, fmt, examples, EvalConfig(mode="generate", max_new_tokens=3))
    assert "valid_label_rate" in gen.metrics
    with pytest.raises(ValueError, match="no examples"):
        evaluate(plm, fmt, [])
