"""Packed (padding-free) rank scoring in training equals the padded path: scores, loss and
the prompt's gradient, on a tiny model of each family and for v1, v2, a v2 layer subset and
no prompt; and the fallbacks (a subclass's own forward, rows too long for one pack)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.evaluation import predict
from promptatlas.evaluation.predict import _packs, _score_suffixes, label_suffixes, rank_loss
from promptatlas.formatting import TaskFormatter, collate
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split

PROMPTS = {
    "v1": PromptConfig(method="v1", length=5),
    "v2": PromptConfig(method="v2", length=3),
    "v2-subset": PromptConfig(method="v2", length=3, layers=[0]),
    "none": None,
}


def _setup(handle: Any, kind: str, task: str = "sa") -> tuple[PromptedLM, Any, Any, Any]:
    config = PROMPTS[kind]
    prompt = None
    if config is not None:
        prompt = SoftPrompt(config, handle.geometry)
        prompt.initialise(handle, generator=torch.Generator().manual_seed(5))
    plm = PromptedLM(handle, prompt)
    fmt = TaskFormatter(handle.tokenizer, get_task(task, "en"))
    suffixes = label_suffixes(fmt)
    reserve = max(len(s) for s in suffixes)
    # Rows short enough that each fits tiny-gemma3's 64-token sliding window with the prompt.
    pool = load_split(task, "en", "train", limit=300)
    examples = [ex for ex in pool if len(fmt.encode_context(ex, reserve=reserve)) <= 40][:7]
    items = [fmt.encode_context(ex, reserve=reserve) for ex in examples]
    from promptatlas.formatting import EncodedExample

    batch = collate(
        [EncodedExample(tuple(c), len(c)) for c in items], handle.tokenizer.pad_token_id
    )
    golds = torch.tensor([fmt.task.labels.index(ex.label) for ex in examples])
    return plm, batch, suffixes, golds


def _one_row_per_pack(monkeypatch: pytest.MonkeyPatch, batch: Any, suffixes: Any) -> int:
    """Shrink the pack to the longest row (with its fed label tokens): about a row per pack."""
    longest = int(batch.lengths.max()) + sum(len(s) - 1 for s in suffixes)
    monkeypatch.setattr(predict, "PACK_TOKENS", longest)
    return longest


def _assert_packed_equals_padded(
    plm: PromptedLM, batch: Any, suffixes: Any, normalise: bool, packs: Any
) -> None:
    padded = _score_suffixes(plm, batch, suffixes, normalise)
    packed = predict._score_suffixes_packed(plm, batch, suffixes, normalise, packs)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", list(PROMPTS))
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_packed_scores_loss_and_gradient_equal_the_padded_path(
    tiny_handles: dict[str, Any], name: str, kind: str
) -> None:
    handle = tiny_handles[name]
    plm, batch, suffixes, golds = _setup(handle, kind)
    assert plm.can_pack()
    assert any(len(s) > 1 for s in suffixes), "the case needs multi-token label words"
    lengths = batch.lengths.tolist()
    assert len(set(lengths)) > 1, "the case needs rows of different lengths (padding)"
    packs = _packs(plm, lengths, suffixes)
    assert packs is not None and sorted(r for p in packs for r in p) == list(range(len(lengths)))
    _assert_packed_equals_padded(plm, batch, suffixes, False, packs)
    if plm.prompt is None:
        return
    params = plm.prompt.trainable_parameters()
    grads = {}
    for use in (True, False):
        plm.can_pack = lambda use=use: use  # type: ignore[method-assign]
        loss = rank_loss(plm, batch, golds, suffixes)
        grads[use] = (loss.detach(), torch.autograd.grad(loss, params))
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(grads[True][1], grads[False][1], strict=True):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_several_packs_and_length_normalised_scores(
    tiny_handles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = tiny_handles["tiny-llama"]
    plm, batch, suffixes, _ = _setup(handle, "v1")
    longest = _one_row_per_pack(monkeypatch, batch, suffixes)
    packs = _packs(plm, batch.lengths.tolist(), suffixes)
    assert packs is not None and len(packs) >= 4
    _assert_packed_equals_padded(plm, batch, suffixes, True, packs)
    monkeypatch.setattr(predict, "PACK_TOKENS", longest - 1)  # the longest row fits nowhere
    assert _packs(plm, batch.lengths.tolist(), suffixes) is None


def test_packing_is_off_for_a_subclass_with_its_own_forward(
    tiny_handles: dict[str, Any],
) -> None:
    class PerInput(PromptedLM):
        def forward(self, *args: Any, **kwargs: Any) -> Any:  # e.g. instance-dependent prompts
            return super().forward(*args, **kwargs)

    handle = tiny_handles["tiny-llama"]
    plm, *_ = _setup(handle, "v1")
    assert PerInput(handle, plm.prompt).can_pack() is False


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_packed_equals_padded_under_sdpa_and_with_several_rows_per_pack(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptatlas.models import load_model

    handle = load_model(name, attn_implementation="sdpa")  # a boolean 4-D mask
    if name == "tiny-gemma3":
        # A window wide enough for several rows per pack (neither path reaches it).
        monkeypatch.setattr(handle.model.config, "sliding_window", 512)
    plm, batch, suffixes, _ = _setup(handle, "v1")
    packs = _packs(plm, batch.lengths.tolist(), suffixes)
    assert packs is not None and max(len(p) for p in packs) >= 3
    _assert_packed_equals_padded(plm, batch, suffixes, False, packs)


def test_the_prompt_is_produced_once_for_all_packs(
    tiny_handles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A produced prompt (e.g. a projection with dropout) must be the same in every pack.
    handle = tiny_handles["tiny-llama"]
    plm, batch, suffixes, golds = _setup(handle, "v1")
    _one_row_per_pack(monkeypatch, batch, suffixes)
    assert plm.prompt is not None
    calls = []
    original = type(plm.prompt).tensor

    def counted(self: Any) -> torch.Tensor:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(type(plm.prompt), "tensor", counted)
    packs = _packs(plm, batch.lengths.tolist(), suffixes)
    assert packs is not None and len(packs) >= 4
    rank_loss(plm, batch, golds, suffixes)
    assert len(calls) == 1
