"""Precision resolution (auto / fp32 / bf16) and the chunked LM-head loss."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from promptatlas.formatting import TextLMFormatter, collate
from promptatlas.models import precision as prec
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import Example


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, capability: str, flags: set[str]) -> None:
    monkeypatch.setattr(prec, "_proc_cpuinfo", lambda: ("Fake CPU", frozenset(flags)))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(prec, "_warned", set())


@pytest.mark.parametrize(
    ("capability", "flags", "expected"),
    [
        ("AVX2", {"avx2"}, "fp32"),  # AVX2-only EPYC: bf16 emulated
        ("AVX512", {"avx2", "avx512f"}, "fp32"),  # AVX-512 without bf16 instructions
        ("AVX512", {"avx2", "avx512f", "avx512_bf16"}, "bf16"),
        ("AVX512", {"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bf16"),
        # An AVX512-BF16 CPU forced to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): fp32.
        ("AVX2", {"avx2", "avx512f", "avx512_bf16"}, "fp32"),
    ],
)
def test_auto_follows_the_cpu_capability(
    monkeypatch: pytest.MonkeyPatch, capability: str, flags: set[str], expected: str
) -> None:
    _fake_cpu(monkeypatch, capability, flags)
    assert prec.resolve_precision("auto", "cpu") == expected
    assert prec.resolve_precision("fp32", "cpu") == "fp32"
    want = torch.bfloat16 if expected == "bf16" else None
    assert prec.autocast_dtype("auto", "cpu") == want


def test_onednn_isa_below_avx512_rules_bf16_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cpu(monkeypatch, "AVX512", {"avx512f", "avx512_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert prec.resolve_precision("auto", "cpu") == "fp32"


def test_auto_on_cuda_follows_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert prec.resolve_precision("auto", "cuda") == "fp32"


def test_explicit_bf16_without_native_support_warns_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_cpu(monkeypatch, "AVX2", {"avx2"})
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert prec.resolve_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prec.resolve_precision("bf16", "cpu")  # second time: silent
    _fake_cpu(monkeypatch, "AVX512", {"avx512f", "avx512_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prec.resolve_precision("bf16", "cpu") == "bf16"  # native: no warning


def test_invalid_precision_names_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        prec.check_precision("fp16")
    from promptatlas.runs.train import RunConfig

    with pytest.raises(ValueError, match="precision"):
        RunConfig(task="sa", lang="en", model="tiny-gpt2", precision="half")
    assert RunConfig(task="sa", lang="en", model="tiny-gpt2").precision == "auto"


def test_run_metadata_records_resolved_precision_and_cpu(
    tiny_handles: dict[str, Any], tmp_path: Any
) -> None:
    from promptatlas.bank import ResultsDB, read_metadata
    from promptatlas.runs.train import RunConfig, train_run

    cfg = RunConfig(
        task="sa",
        lang="en",
        model="tiny-gpt2",
        train={"steps": 1, "batch_size": 2},
        train_limit=4,
        test_limit=4,
    )
    db = ResultsDB(tmp_path / "db.sqlite")
    train_run(cfg, tmp_path / "p", handle=tiny_handles["tiny-gpt2"], db=db, progress=False)
    meta = read_metadata(tmp_path / "p")
    assert meta.config["precision"] == "auto"
    assert meta.config["resolved_precision"] == prec.resolve_precision("auto", "cpu")
    assert meta.versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    rows = db.find()
    assert rows and all(r.config["resolved_precision"] in ("fp32", "bf16") for r in rows)
    assert all("cpu_capability" in r.versions for r in rows)


# -- chunked LM-head loss ------------------------------------------------------------------


def _lm_batch(handle: Any) -> Any:
    fmt = TextLMFormatter(handle.tokenizer, 24)
    texts = ["the cat sat on the mat and looked around", "a b c d e f g h i j k", "hello there"]
    return collate([fmt.encode(Example((t,), "")) for t in texts], handle.tokenizer.pad_token_id)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("method", ["v1", "v2"])
def test_chunked_lm_loss_equals_unchunked(
    tiny_handles: dict[str, Any], name: str, method: str
) -> None:
    from promptatlas.evaluation.predict import target_loss

    handle = tiny_handles[name]
    prompt = SoftPrompt(PromptConfig(method=method, length=3), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    plm = PromptedLM(handle, prompt)
    batch = _lm_batch(handle)

    def reference() -> torch.Tensor:
        out = plm.forward(batch.input_ids, batch.attention_mask)
        select = batch.target_mask[:, 1:]
        logits = plm.logits(out.hidden[:, :-1][select])
        return F.cross_entropy(logits.float(), batch.input_ids[:, 1:][select])

    params = prompt.trainable_parameters()
    ref = reference()
    ref_grads = torch.autograd.grad(ref, params)
    n_targets = int(batch.target_mask[:, 1:].sum())
    assert n_targets > 8
    for chunk in (1, 3, 7, n_targets, 10_000):
        loss = target_loss(plm, batch, chunk=chunk)
        grads = torch.autograd.grad(loss, params)
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # scoring only: same value, no gradient work
        torch.testing.assert_close(
            target_loss(plm, batch, chunk=2), ref.detach(), atol=1e-5, rtol=0
        )


def test_chunked_loss_never_holds_more_than_one_chunk_of_logits(
    tiny_handles: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptatlas.evaluation.predict import target_loss

    handle = tiny_handles["tiny-llama"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=2), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(1))
    plm = PromptedLM(handle, prompt)
    seen: list[int] = []
    original = PromptedLM.logits

    def spy(self: PromptedLM, hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden.shape[0])
        return original(self, hidden)

    monkeypatch.setattr(PromptedLM, "logits", spy)
    loss = target_loss(plm, _lm_batch(handle), chunk=4)
    loss.backward()
    assert seen and max(seen) <= 4 and sum(seen) == int(_lm_batch(handle).target_mask[:, 1:].sum())


# -- v1 prompt computed once per batch ------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_shared_prompt_pass_equals_the_concatenated_forward(
    tiny_handles: dict[str, Any], name: str
) -> None:
    from promptatlas.evaluation.predict import rank_classify
    from promptatlas.formatting import TaskFormatter
    from promptatlas.tasks import get_task, load_split

    handle = tiny_handles[name]
    prompt = SoftPrompt(PromptConfig(method="v1", length=5), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(3))
    plm = PromptedLM(handle, prompt)
    batch = _lm_batch(handle)  # right-padded rows of different lengths
    params = prompt.trainable_parameters()
    outs = {}
    for shared in (False, True):
        out = plm.forward(batch.input_ids, batch.attention_mask, share_prompt=shared)
        real = batch.attention_mask.bool()
        loss = out.hidden[real].pow(2).mean()
        outs[shared] = (out.hidden[real], torch.autograd.grad(loss, params))
    torch.testing.assert_close(outs[True][0], outs[False][0], atol=1e-5, rtol=1e-4)
    for g, r in zip(outs[True][1], outs[False][1], strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    # Rank classification (shared) gives the scores of full sequences (never shared).
    fmt = TaskFormatter(handle.tokenizer, get_task("nli", "en"))
    examples = load_split("nli", "en", "test", limit=6)
    _, scores = rank_classify(plm, fmt, examples, batch_size=3)
    from promptatlas.evaluation.predict import _score_full, label_suffixes
    from promptatlas.formatting import EncodedExample

    suffixes = label_suffixes(fmt)
    items = [
        EncodedExample(tuple(c), len(c))
        for c in (fmt.encode_context(ex, reserve=max(map(len, suffixes))) for ex in examples)
    ]
    with torch.no_grad():
        full = _score_full(plm, items, suffixes, handle.tokenizer.pad_token_id, False)
    torch.testing.assert_close(scores, full, atol=1e-4, rtol=1e-4)
