"""The capture engine against plain forwards and manual hooks; position bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.analysis.capture import (
    INPUT,
    PAD,
    SPECIAL,
    TARGET,
    AnalysisBatch,
    AttentionImplementationError,
    CaptureRequest,
    LayerCapture,
    Reducer,
    capture_batch,
    context_batches,
    context_row,
    label_word_batches,
    prompt_only_batch,
    run_reducers,
)
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import Example, get_task, load_split

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")
METHODS = (None, "v1", "v2", "v2-separate", "v2-subset")


def _prompt(handle: Any, method: str | None, length: int = 3, seed: int = 0) -> SoftPrompt | None:
    if method is None:
        return None
    kw: dict[str, Any] = {"method": method.split("-")[0], "length": length}
    if method == "v2-separate":
        kw["kv"] = "separate"
    if method == "v2-subset":
        kw["layers"] = (0, handle.geometry.n_layers - 1)
    prompt = SoftPrompt(PromptConfig(**kw), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    return prompt


def _batch(handle: Any, n: int = 4) -> AnalysisBatch:
    fmt = TaskFormatter(handle.tokenizer, get_task("nli", "en"))
    batches = context_batches(fmt, load_split("nli", "en", "dev", limit=n), batch_size=n)
    assert len(batches) == 1
    return batches[0]


def _everything(handle: Any) -> CaptureRequest:
    n = handle.geometry.n_layers
    return CaptureRequest.of(attention=range(n), ffn=range(n), hidden=range(n + 1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", TINY)
def test_capture_equals_plain_forward_and_manual_hooks(
    tiny_handles: dict[str, Any], name: str, method: str | None
) -> None:
    handle = tiny_handles[name]
    plm = PromptedLM(handle, _prompt(handle, method))
    batch = _batch(handle)
    assert bool((batch.attention_mask == 0).any())  # padding is exercised
    got = capture_batch(plm, batch, _everything(handle))

    # manual hooks: FFN down-projection input and FFN output
    adapter = handle.adapter
    layers = adapter.layers(handle.model)
    down_in: dict[int, torch.Tensor] = {}
    ffn_out: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(
            adapter.ffn_down(layer).register_forward_pre_hook(
                lambda _m, args, i=i: down_in.__setitem__(i, args[0].detach())
            )
        )
        hooks.append(
            adapter.ffn(layer).register_forward_hook(
                lambda _m, _a, out, i=i: ffn_out.__setitem__(i, out.detach())
            )
        )
    try:
        with torch.no_grad():
            ref = plm.forward(
                batch.input_ids,
                batch.attention_mask,
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:
        for h in hooks:
            h.remove()

    n = handle.geometry.n_layers
    assert ref.attentions is not None and ref.hidden_states is not None
    assert len(ref.hidden_states) == n + 1
    for i in range(n):
        torch.testing.assert_close(got[("attention", i)].tensor, ref.attentions[i].float())
        torch.testing.assert_close(got[("ffn", i)].tensor, down_in[i].float())
        # the captured activation really is what the down-projection turns into the FFN output
        with torch.no_grad():
            projected = adapter.ffn_down(layers[i])(got[("ffn", i)].tensor)
        torch.testing.assert_close(projected, ffn_out[i].float(), atol=1e-5, rtol=1e-5)
    for i in range(n + 1):
        torch.testing.assert_close(got[("hidden", i)].tensor, ref.hidden_states[i].float())
    # input-aligned views: the final hidden states at input positions are PromptedLM's output
    torch.testing.assert_close(got[("hidden", n)].inputs(), ref.hidden.float())
    k = plm.n_prompt
    width = batch.input_ids.shape[1]
    att = got[("attention", 0)]
    assert att.inputs().shape[-2:] == (width, width)
    assert att.prompt_part().shape[-1] == k
    assert got[("hidden", 0)].inputs().shape[1] == width


def test_layer_capture_at_selects_decoding_token(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = PromptedLM(handle, _prompt(handle, "v1"))
    batch = _batch(handle)
    n = handle.geometry.n_layers
    got = capture_batch(plm, batch, CaptureRequest.of(hidden=[n], attention=[1]))
    with torch.no_grad():
        hidden = plm.forward(batch.input_ids, batch.attention_mask).hidden
    rows = torch.arange(batch.size)
    torch.testing.assert_close(got[("hidden", n)].at(batch.decoding), hidden[rows, batch.decoding])
    # the decoding token is the last context token, the final separator
    sep = TaskFormatter(handle.tokenizer, get_task("nli", "en")).sep[-1]
    assert bool((batch.input_ids[rows, batch.decoding] == sep).all())
    assert bool((batch.decoding == batch.lengths - 1).all())
    assert got[("attention", 1)].at(batch.decoding).shape == (
        batch.size,
        4,
        batch.input_ids.shape[1],
    )


def test_forward_stops_after_the_last_needed_layer(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gemma3"]
    plm = PromptedLM(handle, _prompt(handle, "v2"))
    batch = _batch(handle)
    layers = handle.adapter.layers(handle.model)
    ran: list[int] = []
    hooks = [
        layer.register_forward_hook(lambda *_a, i=i: ran.append(i))
        for i, layer in enumerate(layers)
    ]
    try:
        got = capture_batch(plm, batch, CaptureRequest.of(ffn=[1], hidden=[1]))
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0, 1]  # layers 2 and 3 never ran
    full = capture_batch(plm, batch, _everything(handle))
    torch.testing.assert_close(got[("ffn", 1)].tensor, full[("ffn", 1)].tensor)
    torch.testing.assert_close(got[("hidden", 1)].tensor, full[("hidden", 1)].tensor)


def test_attention_needs_eager(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.models import load_model

    handle = load_model("tiny-llama", attn_implementation="sdpa")
    plm = PromptedLM(handle)
    batch = _batch(tiny_handles["tiny-llama"], n=2)
    with pytest.raises(AttentionImplementationError, match="eager"):
        capture_batch(plm, batch, CaptureRequest.of(attention=[0]))
    # hidden states and FFN activations do not need eager attention
    assert capture_batch(plm, batch, CaptureRequest.of(ffn=[0], hidden=[1]))


def test_invalid_layers_are_reported(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    with pytest.raises(ValueError, match="do not exist"):
        capture_batch(PromptedLM(handle), _batch(handle, 2), CaptureRequest.of(ffn=[3]))
    # hidden index L (the final output) exists
    assert capture_batch(PromptedLM(handle), _batch(handle, 2), CaptureRequest.of(hidden=[3]))


def test_position_kinds_single_pair_and_truncation(tiny_handles: dict[str, Any]) -> None:
    tok = tiny_handles["tiny-gpt2"].tokenizer
    pair = TaskFormatter(tok, get_task("nli", "en"))
    row = context_row(pair, Example(inputs=("ab", "c"), target="neutral", label="neutral"))
    assert tok.decode(list(row.ids)) == "<bos>ab<sep>c<sep>"
    assert row.kinds == (SPECIAL, INPUT, INPUT, SPECIAL, INPUT, SPECIAL)
    assert row.n_context == 6
    single = TaskFormatter(tok, get_task("sa", "en"))
    row = context_row(single, Example(inputs=("xyz",), target="positive"), suffix=[40, 41])
    assert row.kinds == (SPECIAL, INPUT, INPUT, INPUT, SPECIAL, TARGET, TARGET)
    assert row.n_context == 5
    # truncated inputs: still exactly one bos and two separators, at the right places
    short = TaskFormatter(tok, get_task("nli", "en"), FormatConfig(max_length=30))
    row = context_row(short, Example(inputs=("x" * 50, "yy"), target="neutral"))
    assert len(row.ids) < 30
    assert row.kinds[0] == SPECIAL and row.kinds[-1] == SPECIAL and row.kinds.count(SPECIAL) == 3
    assert row.kinds[-4] == SPECIAL  # "<sep>yy<sep>"


def test_position_kinds_literal_separator_inside_the_text(tiny_handles: dict[str, Any]) -> None:
    tok = tiny_handles["tiny-gpt2"].tokenizer
    fmt = TaskFormatter(tok, get_task("nli", "en"), FormatConfig(separator=" | "))
    row = context_row(fmt, Example(inputs=("a | b", "c"), target="neutral"))
    assert tok.decode(list(row.ids)) == "<bos>a | b | c | "
    n_sep = len(fmt.sep)
    expected = [SPECIAL] + [INPUT] * 5 + [SPECIAL] * n_sep + [INPUT] + [SPECIAL] * n_sep
    assert list(row.kinds) == expected


def test_label_word_rows(tiny_handles: dict[str, Any]) -> None:
    tok = tiny_handles["tiny-gpt2"].tokenizer
    fmt = TaskFormatter(tok, get_task("nli", "en"))
    examples = load_split("nli", "en", "dev", limit=5)
    batches = label_word_batches(fmt, examples, batch_size=4, seed=1)
    label_ids = fmt.label_token_ids()
    seen: dict[int, dict[str, int]] = {}
    for b in batches:
        for r in range(b.size):
            d = int(b.decoding[r])
            assert int(b.kinds[r, d + 1]) == TARGET and int(b.kinds[r, d]) == SPECIAL
            assert int(b.attention_mask[r].sum()) == d + 2
            seen.setdefault(int(b.example_ids[r]), {})[b.tags[r]] = int(b.input_ids[r, d + 1])
    assert sorted(seen) == list(range(5))
    for i, ex in enumerate(examples):
        assert seen[i]["gold"] == label_ids[ex.label or ""][0]
        others = {label_ids[lab][0] for lab in fmt.task.labels if lab != ex.label}
        assert seen[i]["non-gold"] in others
    with pytest.raises(ValueError, match="classification"):
        label_word_batches(TaskFormatter(tok, get_task("cg", "en")), [], batch_size=2)


def test_prompt_only_batch(tiny_handles: dict[str, Any]) -> None:
    fmt = TaskFormatter(tiny_handles["tiny-gpt2"].tokenizer, get_task("sa", "en"))
    batch = prompt_only_batch(fmt)
    assert batch.input_ids.tolist() == [fmt.sep]
    assert int(batch.decoding[0]) == len(fmt.sep) - 1
    assert bool((batch.kinds == SPECIAL).all())
    assert PAD not in batch.kinds.tolist()[0]


class _Recorder(Reducer):
    n_passes = 2

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, int]] = []
        self.pass_index = 0

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        if pass_index == 1 and model == "prompted":
            return CaptureRequest()
        return CaptureRequest.of(hidden=[0], attention=[1])

    def start_pass(self, pass_index: int) -> None:
        self.pass_index = pass_index

    def update(self, capture: LayerCapture) -> None:
        self.calls.append((self.pass_index, capture.model, capture.kind, capture.layer))


def test_run_reducers_dispatch_and_passes(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    batches = [_batch(handle, 2)]
    models = {"base": PromptedLM(handle), "prompted": PromptedLM(handle, _prompt(handle, "v1"))}
    rec = _Recorder()
    run_reducers(models, batches, [rec])
    assert rec.calls == [
        (0, "base", "hidden", 0),
        (0, "base", "attention", 1),
        (0, "prompted", "hidden", 0),
        (0, "prompted", "attention", 1),
        (1, "base", "hidden", 0),
        (1, "base", "attention", 1),
    ]
    with pytest.raises(TypeError, match="twice"):
        run_reducers(models, iter(batches), [_Recorder()])
    # a callable source gives a fresh iterator per pass
    rec = _Recorder()
    run_reducers(models, lambda: iter(batches), [rec])
    assert len(rec.calls) == 6
