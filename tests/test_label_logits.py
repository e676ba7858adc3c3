"""Rank scoring without the full LM head where it cancels, and the head's cheaper forms.

* ``token_logits`` / ``token_log_probs`` / the tall-product head equal the plain head;
* ``rank_loss`` (first tokens' logits, no vocabulary normaliser) equals the cross-entropy of the
  exact log-probability scores, loss and prompt gradient, on each tiny family, padded and
  packed; with length-normalised scores (where the normaliser does not cancel) it is exact;
* ``rank_classify(log_probs=False)`` predicts the same labels, its scores off by one constant
  per row."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from promptatlas.evaluation.predict import (
    _score_suffixes,
    label_suffixes,
    rank_classify,
    rank_loss,
)
from promptatlas.formatting import EncodedExample, TaskFormatter, collate
from promptatlas.models import adapters
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split

FAMILIES = ["tiny-gpt2", "tiny-llama", "tiny-gemma3"]


def _plm(handle: Any, method: str | None, seed: int = 3) -> PromptedLM:
    if method is None:
        return PromptedLM(handle)
    length = 5 if method == "v1" else 3
    prompt = SoftPrompt(PromptConfig(method=method, length=length), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    return PromptedLM(handle, prompt)


def _batch(
    handle: Any, task: str = "sa", n: int = 6, longest: int = 40
) -> tuple[Any, Any, Any, Any]:
    """A few training rows short enough for tiny-gemma3's 64-token window with the prompt."""
    fmt = TaskFormatter(handle.tokenizer, get_task(task, "en"))
    suffixes = label_suffixes(fmt)
    reserve = max(len(s) for s in suffixes)
    pool = load_split(task, "en", "train", limit=300)
    examples = [ex for ex in pool if len(fmt.encode_context(ex, reserve=reserve)) <= longest][:n]
    items = [fmt.encode_context(ex, reserve=reserve) for ex in examples]
    batch = collate(
        [EncodedExample(tuple(c), len(c)) for c in items], handle.tokenizer.pad_token_id
    )
    golds = torch.tensor([fmt.task.labels.index(ex.label) for ex in examples])
    return fmt, batch, suffixes, golds


def _short_test_examples(handle: Any, n: int) -> tuple[TaskFormatter, list[Any]]:
    """SA-en formatter and ``n`` test examples inside tiny-gemma3's window: the cached-suffix
    path of rank_classify, not the whole-sequence fallback."""
    fmt, *_ = _batch(handle)
    reserve = max(len(s) for s in label_suffixes(fmt))
    pool = load_split("sa", "en", "test")
    examples = [ex for ex in pool if len(fmt.encode_context(ex, reserve=reserve)) <= 40][:n]
    assert len(examples) == n
    return fmt, examples


@pytest.mark.parametrize("name", FAMILIES)
def test_token_logits_tall_head_and_token_log_probs_equal_the_plain_head(
    tiny_handles: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = tiny_handles[name]
    plm = PromptedLM(handle)
    head = handle.adapter.lm_head(handle.model)
    vocab = handle.geometry.vocab_size
    ids = torch.tensor([0, 7, vocab - 1, 7])
    for rows in (3, adapters.TALL_HEAD_ROWS + 5):  # the tall product, then the plain one
        hidden = torch.randn(
            rows, handle.geometry.d_model, generator=torch.Generator().manual_seed(1)
        )
        plain = head(hidden).float()
        full = plm.logits(hidden)
        torch.testing.assert_close(full, plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            plm.token_logits(hidden, ids), plain[:, ids], atol=1e-5, rtol=1e-5
        )
        per_row = torch.randint(0, vocab, (rows, 2), generator=torch.Generator().manual_seed(2))
        monkeypatch.setattr(PromptedLM, "head_rows", property(lambda self: 4))  # several blocks
        torch.testing.assert_close(
            plm.token_log_probs(hidden, per_row),
            torch.log_softmax(plain, -1).gather(1, per_row),
            atol=1e-5,
            rtol=1e-5,
        )
        monkeypatch.undo()
    # A soft-capped head (Gemma 2's final_logit_softcapping) caps the chosen logits too.
    monkeypatch.setattr(handle.model.config, "final_logit_softcapping", 0.5, raising=False)
    hidden = (
        torch.randn(4, handle.geometry.d_model, generator=torch.Generator().manual_seed(4)) * 30
    )
    capped = plm.logits(hidden)
    assert capped.abs().max() <= 0.5 + 1e-6
    torch.testing.assert_close(plm.token_logits(hidden, ids), capped[:, ids], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["v1", "v2", None])
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("packed", [True, False])
def test_rank_loss_equals_the_cross_entropy_of_exact_log_probs(
    tiny_handles: dict[str, Any], name: str, method: str | None, packed: bool
) -> None:
    handle = tiny_handles[name]
    plm = _plm(handle, method)
    _, batch, suffixes, golds = _batch(handle)
    assert any(len(s) > 1 for s in suffixes) and len({s[0] for s in suffixes}) > 1
    plm.can_pack = lambda: packed  # type: ignore[method-assign]
    params = [] if plm.prompt is None else list(plm.prompt.trainable_parameters())
    fast = rank_loss(plm, batch, golds, suffixes)
    exact_scores = _score_suffixes(plm, batch, suffixes, False, log_probs=True)
    exact = F.cross_entropy(exact_scores, golds)
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=1e-5)
    assert exact.item() > 0.05  # not a degenerate, already-solved case
    if not params:
        return
    for a, b in zip(
        torch.autograd.grad(fast, params), torch.autograd.grad(exact, params), strict=True
    ):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rank_loss_keeps_the_normaliser_for_length_normalised_scores(
    tiny_handles: dict[str, Any],
) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _plm(handle, "v1")
    _, batch, suffixes, golds = _batch(handle, "nli", longest=10_000)
    assert len({len(s) for s in suffixes}) > 1  # labels of different lengths: no cancelling
    loss = rank_loss(plm, batch, golds, suffixes, length_normalise=True)
    exact = F.cross_entropy(_score_suffixes(plm, batch, suffixes, True), golds)
    shifted = F.cross_entropy(_score_suffixes(plm, batch, suffixes, True, log_probs=False), golds)
    torch.testing.assert_close(loss, exact, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(shifted, exact, atol=1e-6, rtol=1e-6)  # log_probs is ignored there


@pytest.mark.parametrize("name", FAMILIES)
def test_rank_classify_without_log_probs_predicts_the_same_labels(
    tiny_handles: dict[str, Any], name: str
) -> None:
    handle = tiny_handles[name]
    plm = _plm(handle, "v1")
    fmt, examples = _short_test_examples(handle, 24)
    preds, exact = rank_classify(plm, fmt, examples, batch_size=8)
    preds_fast, fast = rank_classify(plm, fmt, examples, batch_size=8, log_probs=False)
    assert preds_fast == preds
    shift = exact - fast  # one constant per row: minus the log-normaliser at the decoding token
    assert (shift < -1e-3).all()
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-4, rtol=1e-5)
    # Length-normalised scores cannot drop the normaliser: they stay log-probabilities.
    _, normed = rank_classify(plm, fmt, examples, batch_size=8, length_normalise=True)
    _, normed_fast = rank_classify(
        plm, fmt, examples, batch_size=8, length_normalise=True, log_probs=False
    )
    torch.testing.assert_close(normed_fast, normed, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_runs_the_v1_prompt_once_with_the_same_scores(
    tiny_handles: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    handle = tiny_handles[name]
    plm = _plm(handle, "v1")
    fmt, examples = _short_test_examples(handle, 20)
    passes = []
    real = PromptedLM._v1_prompt_cache

    def counted(self: PromptedLM, *args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PromptedLM, "_v1_prompt_cache", counted)
    _, once = rank_classify(plm, fmt, examples, batch_size=4)  # 5 batches
    assert len(passes) == 1
    monkeypatch.setattr(PromptedLM, "fixed_prompt", lambda self: contextlib.nullcontext())
    passes.clear()
    _, per_batch = rank_classify(plm, fmt, examples, batch_size=4)
    assert len(passes) == 5
    torch.testing.assert_close(once, per_batch, atol=1e-5, rtol=1e-5)
    # Outside an evaluation (and with gradients) every forward runs its own prompt pass.
    monkeypatch.undo()
    assert plm._fixed is None
