"""Composition: AMP (DAM), SPoT-s/-m, ATTEMPT and IPT on tiny random models."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.compose import (
    AMPConfig,
    AttemptConfig,
    AttemptLM,
    AttemptMixer,
    ComposeError,
    IPTConfig,
    ISTConfig,
    PromptAttention,
    Source,
    SpotConfig,
    TaskData,
    attention_weights,
    cos_tok,
    dam_scores,
    dam_scores_blockwise,
    decoded_init,
    evaluate_attempt,
    fit_ipt,
    masked_max_pool,
    maxpool_scores,
    mixing_rates,
    random_decoder,
    recovery,
    run_prompt_tuning,
    run_spot,
    spot_s_weights,
    train_amp,
    train_attempt,
    tune_intrinsic,
)
from promptatlas.compose.common import group_view, snapshot, ungroup
from promptatlas.evaluation import EvalConfig
from promptatlas.evaluation.predict import label_suffixes, rank_classify
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SegmentConfig, SoftPrompt
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig

FMT = FormatConfig(max_length=24)


def _prompt(handle: Any, seed: int, method: str = "v1", kv: str = "shared") -> SoftPrompt:
    config = PromptConfig(
        method=method,  # type: ignore[arg-type]
        kv=kv,  # type: ignore[arg-type]
        init="uniform",
        segments=(SegmentConfig("lang", 2, trainable=False), SegmentConfig("task", 3)),
    )
    prompt = SoftPrompt(config, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    prompt.requires_grad_(False)
    return prompt


def _sources(handle: Any, tasks: tuple[str, ...] = ("sa", "nli", "sts"), **kw: Any) -> list[Source]:
    out = []
    lang_seg = _prompt(handle, 99, **kw).segments["lang"].detach().clone()
    for i, task in enumerate(tasks):
        p = _prompt(handle, i, **kw)
        p.set_segment("lang", lang_seg)  # one shared language segment
        out.append(Source(p, task, "en", seed=i))
    return out


def _data(handle: Any, task: str, n_train: int = 16, n_test: int = 8) -> TaskData:
    fmt = TaskFormatter(handle.tokenizer, get_task(task, "en"), FMT)
    return TaskData(
        fmt,
        load_split(task, "en", "train", limit=n_train),
        dev=load_split(task, "en", "dev", limit=4),
        test=load_split(task, "en", "test", limit=n_test),
    )


def _model_bytes(handle: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in handle.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- DAM and the attention maths -------------------------------------------------------------


def test_dam_spec_case_two_by_two() -> None:
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one prompt, l = 2
    k = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    assert float(dam_scores(q, k)) == pytest.approx(1.0)
    assert float(dam_scores_blockwise(q, k)) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(3, 4, 5), (5, 1, 7), (2, 6, 3)])
def test_dam_mean_form_equals_blockwise(shape: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(*shape, generator=gen, dtype=torch.float64)
    k = torch.randn(*shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(dam_scores(q, k), dam_scores_blockwise(q, k))
    naive = torch.einsum("iak,jbk->ij", q, k) / shape[1] ** 2
    torch.testing.assert_close(dam_scores(q, k), naive)


def test_maxpool_scores() -> None:
    q = torch.tensor([[[1.0, -1.0], [0.0, 2.0]]])
    k = torch.tensor([[[3.0, 0.0], [-1.0, 1.0]]])
    assert float(maxpool_scores(q, k)) == pytest.approx(1.0 * 3.0 + 2.0 * 1.0)


def _attention(n: int = 4, groups: int = 2, **kw: Any) -> PromptAttention:
    sources = torch.randn(n, groups, 3, 6, generator=torch.Generator().manual_seed(0))
    return PromptAttention(sources, generator=torch.Generator().manual_seed(1), **kw)


def test_attention_rows_sum_to_one_and_target_is_weighted_values() -> None:
    att = _attention(k=4)
    with torch.no_grad():
        a = att.attention()
        out = att()
        v = att.values()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4))
    assert torch.all(a > 0)
    expected = torch.stack(
        [
            torch.stack([torch.einsum("j,jle->le", a[g, i], v[g]) for g in range(2)])
            for i in range(4)
        ]
    )
    torch.testing.assert_close(out, expected)
    assert att.w_v is not None
    assert torch.allclose(att.w_v, torch.eye(6).repeat(2, 1, 1))  # W_V starts as I
    assert att.num_parameters() == 2 * (2 * 6 * 4 + 6 * 6)  # per group 2dk + d²


def test_equal_scores_give_the_mean_of_values() -> None:
    att = _attention()
    with torch.no_grad():
        att.w_q.zero_()  # every score 0
        out = att()
        v = att.values()
    torch.testing.assert_close(att.attention(), torch.full((2, 4, 4), 0.25))
    for i in range(4):
        torch.testing.assert_close(out[i], v.mean(dim=1))


def test_value_identity_and_scale_and_maxpool_options() -> None:
    raw = _attention(value="identity")
    assert raw.w_v is None
    torch.testing.assert_close(raw.values(), raw.sources.transpose(0, 1))
    plain, scaled = _attention(k=4), _attention(k=4, scale=True)
    torch.testing.assert_close(scaled.scores(), plain.scores() / 2.0)
    pooled = _attention(pooling="max")
    assert not torch.allclose(pooled.scores(), _attention().scores())
    torch.testing.assert_close(attention_weights(torch.zeros(3, 3)).sum(-1), torch.ones(3))


@pytest.mark.parametrize(("method", "kv"), [("v1", "shared"), ("v2", "shared"), ("v2", "separate")])
def test_group_layout_round_trip(tiny_handles: dict[str, Any], method: str, kv: str) -> None:
    p = _prompt(tiny_handles["tiny-llama"], 0, method, kv)
    seg = p.segments["task"].detach()
    groups = group_view(seg, method, kv)
    assert groups.dim() == 3 and groups.shape[1] == 3
    torch.testing.assert_close(ungroup(groups, method, kv), seg)


def test_mixing_rates_are_examples_proportional_with_cap() -> None:
    rates = mixing_rates({"a": 100, "b": 300, "c": 1000}, cap=300)
    assert rates == pytest.approx({"a": 100 / 700, "b": 300 / 700, "c": 300 / 700})
    assert mixing_rates({"a": 1, "b": 3}, None) == pytest.approx({"a": 0.25, "b": 0.75})


# -- AMP training ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), [("tiny-llama", "v1"), ("tiny-gpt2", "v2")])
def test_amp_trains_only_psi(tiny_handles: dict[str, Any], name: str, method: str) -> None:
    handle = tiny_handles[name]
    sources = _sources(handle, method=method)
    src_before = [snapshot(s.prompt) for s in sources]
    model_before = _model_bytes(handle)
    data = {"sa-en": _data(handle, "sa"), "nli-en": _data(handle, "nli")}
    cfg = AMPConfig(steps=4, batch_size=4, lr=0.05, warmup_steps=0, seed=3)
    result = train_amp(handle, sources, data, cfg)
    assert result.keys == ["sa-en", "nli-en", "sts-en"]
    assert result.attention.shape == (3, 3)
    torch.testing.assert_close(result.attention.sum(-1), torch.ones(3))
    assert set(result.scores) == {"sa-en", "nli-en"}
    assert all(0 <= s.score <= 1 and s.low is not None for s in result.scores.values())
    # Sources and model byte-identical; ψ moved.
    assert all(_same(b, snapshot(s.prompt)) for b, s in zip(src_before, sources, strict=True))
    assert _same(model_before, _model_bytes(handle))
    fresh = AMPConfig(seed=3)
    from promptatlas.compose import build_attention

    _, init = build_attention(sources, fresh)
    assert not torch.equal(init.w_q, result.module.w_q.detach().cpu())
    # Composed target prompts are plain SoftPrompts with the source's language segment.
    out = result.prompts["sa-en"]
    assert type(out) is SoftPrompt
    torch.testing.assert_close(out.segments["lang"].detach(), sources[0].prompt.segments["lang"])
    groups = group_view(
        torch.stack([s.prompt.segments["task"].detach() for s in sources]), method, "shared"
    )
    with torch.no_grad():
        a = result.module.attention().cpu()
        v = result.module.values().cpu()
    expected = torch.einsum("gj,gjle->gle", a[:, 0], v)
    torch.testing.assert_close(out.segments["task"].detach(), ungroup(expected, method, "shared"))
    assert groups.shape[0] == 3


def test_amp_only_psi_receives_gradients(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose.amp import _Target, build_attention
    from promptatlas.compose.common import ComputedPrompt, EncodedTask

    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle)
    _, module = build_attention(sources, AMPConfig())
    prompt = ComputedPrompt(sources[0].prompt, _Target(module, 0, "v1", "shared"))
    enc = EncodedTask(_data(handle, "sa"), "auto", "v1")
    enc.loss(PromptedLM(handle, prompt), [0, 1, 2]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for s in sources for p in s.prompt.parameters())
    assert all(p.grad is None for p in handle.model.parameters())
    assert prompt.trainable_parameters() == list(module.parameters())


def test_amp_loss_goes_down(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle, ("sa", "nli"))
    data = {"sa-en": _data(handle, "sa", n_train=8)}
    cfg = AMPConfig(steps=30, batch_size=8, lr=0.05, warmup_steps=0, objective="lm", seed=0)
    result = train_amp(handle, sources, data, cfg, score=False)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) < sum(losses[:5]) - 0.05, losses


def test_amp_refuses_data_without_source(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    with pytest.raises(ComposeError, match="no source prompt"):
        train_amp(handle, _sources(handle, ("sa",)), {"nli-en": _data(handle, "nli")})
    with pytest.raises(ComposeError, match="pooling"):
        AMPConfig(pooling="mean")  # type: ignore[arg-type]


# -- SPoT and PT -------------------------------------------------------------------------------


def test_cos_tok_and_spot_s_weights() -> None:
    eye = torch.eye(2)
    assert cos_tok(eye, eye) == pytest.approx(0.5)  # spec: identical prompts score < 1
    a = torch.tensor([[1.0, 0.0]])
    w = spot_s_weights(a, [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), -a])
    s = 1 / 2**0.5
    assert w.tolist() == pytest.approx([1 / (1 + s), s / (1 + s), 0.0])
    assert float(spot_s_weights(a, [-a, -a]).sum()) == pytest.approx(1.0)


def test_spot_s_init_is_weighted_average(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import spot_s_init
    from promptatlas.compose.common import to_tokens

    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle)
    value, weights = spot_s_init(sources[1].prompt, sources)
    tokens = [to_tokens(s.prompt.segments["task"].detach(), "v1", "shared") for s in sources]
    assert weights.tolist() == pytest.approx(spot_s_weights(tokens[1], tokens).tolist())
    expected = sum(
        float(w) * s.prompt.segments["task"].detach() for w, s in zip(weights, sources, strict=True)
    )
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("mode", ["s", "m"])
def test_spot_runs_and_keeps_sources(tiny_handles: dict[str, Any], mode: str) -> None:
    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle)
    before = [snapshot(s.prompt) for s in sources]
    train = TrainConfig(steps=2, batch_size=4, lr=0.1, warmup=0.0, checkpoint_every=0)
    result = run_spot(handle, sources, _data(handle, "sts"), SpotConfig(mode=mode, train=train))  # type: ignore[arg-type]
    assert result.method == f"spot-{mode}" and 0 <= result.score.score <= 1
    if mode == "m":
        assert result.init == {"source": "nli-en"}
    else:
        assert sum(result.init["weights"].values()) == pytest.approx(1.0)
    torch.testing.assert_close(
        result.prompt.segments["lang"].detach(), sources[2].prompt.segments["lang"]
    )
    assert all(_same(b, snapshot(s.prompt)) for b, s in zip(before, sources, strict=True))


def test_spot_m_starts_from_the_chosen_source(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle)
    train = TrainConfig(
        steps=1, batch_size=2, lr=1e-9, warmup=0.0, checkpoint_every=0, max_grad_norm=None
    )
    result = run_spot(
        handle, sources, _data(handle, "sa"), SpotConfig(mode="m", source="sts", train=train)
    )
    torch.testing.assert_close(
        result.prompt.segments["task"].detach(),
        sources[2].prompt.segments["task"],
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(ComposeError, match="qa-en"):
        run_spot(
            handle, sources, _data(handle, "sa"), SpotConfig(mode="m", source="qa", train=train)
        )


def test_plain_prompt_tuning_keeps_language_segment(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    template = _sources(handle)[0].prompt
    train = TrainConfig(steps=2, batch_size=4, lr=0.1, warmup=0.0, checkpoint_every=0)
    result = run_prompt_tuning(handle, template, _data(handle, "sa"), train)
    assert result.method == "pt"
    torch.testing.assert_close(result.prompt.segments["lang"].detach(), template.segments["lang"])
    assert (
        result.prompt.segments["task"].requires_grad
        and not result.prompt.segments["lang"].requires_grad
    )


# -- ATTEMPT ---------------------------------------------------------------------------------------


def test_masked_max_pool_ignores_masked_positions() -> None:
    x = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_max_pool(x, mask).tolist() == [[3.0, 5.0]]
    assert masked_max_pool(x, torch.zeros(1, 3)).tolist() == [[0.0, 0.0]]


def _attempt_lm(handle: Any) -> AttemptLM:
    sources = _sources(handle)
    stacked = torch.stack([s.prompt.segments["task"].detach() for s in sources])
    mixer = AttemptMixer(stacked, stacked[0] * 0.5, generator=torch.Generator().manual_seed(0))
    return AttemptLM(handle, sources[0].prompt, mixer)


def test_attempt_output_does_not_depend_on_padding(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _attempt_lm(handle)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    other = ids.clone()
    other[1, 3:] = torch.tensor([200, 201])  # different tokens under the padding
    with torch.no_grad():
        a = plm.forward(ids, mask).hidden
        b = plm.forward(other, mask).hidden
        alone = plm.forward(ids[1:, :3], mask[1:, :3]).hidden
        pa = plm.row_prompts(ids, mask)
        pb = plm.row_prompts(other, mask)
        longer = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
        longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
        pc = plm.row_prompts(longer, longer_mask)
    torch.testing.assert_close(pa, pb)
    torch.testing.assert_close(pa, pc)  # more padding: same prompts
    torch.testing.assert_close(a[1, :3], b[1, :3])
    torch.testing.assert_close(a[1, :3], alone[0], atol=1e-5, rtol=1e-4)


def test_attempt_weights_and_prompt_formula(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    plm = _attempt_lm(handle)
    mixer = plm.mixer
    assert mixer.temperature == pytest.approx(handle.geometry.d_model * torch.e)
    pooled = torch.randn(3, handle.geometry.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alpha = mixer.weights(pooled)
        prompts = mixer(pooled)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3))
    assert alpha.shape == (3, 4)  # 3 sources + the target
    allp = torch.cat([mixer.sources, mixer.target[None]])
    expected = mixer.target + torch.einsum("j,jld->ld", alpha[1], allp)
    torch.testing.assert_close(prompts[1], expected)


def test_attempt_batched_scores_equal_per_example_prompts(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _attempt_lm(handle)
    data = _data(handle, "nli", n_test=5)
    fmt = data.formatter
    with torch.no_grad():
        _, batched = rank_classify(plm, fmt, data.test, batch_size=5)
        reserve = max(len(s) for s in label_suffixes(fmt))
        single = [
            rank_classify(
                PromptedLM(handle, plm.prompt_for(fmt.encode_context(ex, reserve=reserve))),
                fmt,
                [ex],
            )[1]
            for ex in data.test
        ]
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-4, rtol=1e-4)
    result = evaluate_attempt(plm, data, data.test, EvalConfig())
    assert result.n == 5 and result.examples is not None


@pytest.mark.parametrize("objective", ["rank", "lm"])
def test_attempt_trains_only_its_own_parameters(
    tiny_handles: dict[str, Any], objective: str
) -> None:
    handle = tiny_handles["tiny-gemma3"]
    sources = _sources(handle)
    before = [snapshot(s.prompt) for s in sources]
    model_before = _model_bytes(handle)
    cfg = AttemptConfig(steps=3, batch_size=4, lr=0.05, warmup_steps=0, objective=objective)  # type: ignore[arg-type]
    result = train_attempt(handle, sources, _data(handle, "sts", n_test=4), cfg)
    assert result.keys == ["sa-en", "nli-en"]  # the target's own source left out
    assert result.score is not None and 0 <= result.score.score <= 1
    assert len(result.weights) == 3 and sum(result.weights) == pytest.approx(1.0, abs=1e-5)
    assert all(_same(b, snapshot(s.prompt)) for b, s in zip(before, sources, strict=True))
    assert _same(model_before, _model_bytes(handle))
    assert not result.plm.prompt.segments["task"].requires_grad  # type: ignore[union-attr]
    trainable = {n for n, p in result.plm.mixer.named_parameters() if p.requires_grad}
    assert trainable == {
        "target",
        "down.weight",
        "down.bias",
        "up.weight",
        "up.bias",
        "norm.weight",
        "norm.bias",
    }


def test_attempt_refuses_v2(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    with pytest.raises(ComposeError, match="v1"):
        train_attempt(
            handle, _sources(handle, method="v2"), _data(handle, "sa"), AttemptConfig(steps=1)
        )


# -- IPT -------------------------------------------------------------------------------------------


def test_recovery_spec_case() -> None:
    out = recovery([0.8, 0.5], [1.0, 0.5])
    assert out["mean_ratio"] == pytest.approx(0.9)
    assert out["ratio_of_means"] == pytest.approx(1.3 / 1.5)
    with pytest.raises(ComposeError):
        recovery([0.5], [0.0])


def test_gain_recovery_hand_case() -> None:
    from promptatlas.compose import RecoveryRow, gain_recovery

    assert gain_recovery(0.7, 0.9, 0.5) == pytest.approx(0.5)
    assert gain_recovery(0.4, 0.9, 0.5) == pytest.approx(-0.25)  # IST below untrained
    assert gain_recovery(0.7, 0.5, 0.5) is None  # full tuning gained nothing
    row = RecoveryRow("sa-en", "sa", "en", True, 0.7, 0.9, untrained=0.5)
    assert row.recovery == pytest.approx(0.7 / 0.9) and row.gain_recovery == pytest.approx(0.5)
    assert row.to_dict()["gain_recovery"] == pytest.approx(0.5)
    assert RecoveryRow("sa-en", "sa", "en", True, 0.7, 0.9).gain_recovery is None


def test_ipt_reconstruction_falls_and_reaches_tiny_error(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle, ("sa", "nli"))
    cfg = IPTConfig(
        intrinsic_dim=2, task_loss=False, steps=600, lr=1e-2, weight_decay=0.0, max_grad_norm=None
    )
    subspace = fit_ipt(handle, sources, {}, cfg)
    losses = [h["loss"] for h in subspace.history]
    assert losses[-1] < losses[0] / 100
    assert subspace.reconstruction_error(sources) < 1e-6
    assert subspace.vectors.shape == (2, 2)
    assert subspace.keys == ["sa-en", "nli-en"]


def test_ipt_fit_with_task_loss_leaves_sources_and_model(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle, ("sa", "nli"))
    before = [snapshot(s.prompt) for s in sources]
    model_before = _model_bytes(handle)
    cfg = IPTConfig(intrinsic_dim=3, steps=4, batch_size=4, lr=1e-3)
    subspace = fit_ipt(handle, sources, {"sa-en": _data(handle, "sa")}, cfg)
    assert len(subspace.history) == 4
    assert all(_same(b, snapshot(s.prompt)) for b, s in zip(before, sources, strict=True))
    assert _same(model_before, _model_bytes(handle))
    assert subspace.autoencoder.hidden == handle.geometry.d_model


def test_ist_trains_z_only_and_leaves_decoder(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle, ("sa", "nli"))
    subspace = fit_ipt(
        handle, sources, {}, IPTConfig(intrinsic_dim=2, task_loss=False, steps=5, lr=1e-2)
    )
    ae_before = snapshot(subspace.autoencoder)
    model_before = _model_bytes(handle)
    cfg = ISTConfig(steps=6, batch_size=4, lr=0.05, objective="lm", seed=1)
    result = tune_intrinsic(handle, subspace, _data(handle, "sts"), cfg)
    assert _same(ae_before, snapshot(subspace.autoencoder))
    assert _same(model_before, _model_bytes(handle))
    assert all(p.requires_grad for p in subspace.autoencoder.parameters())  # restored after IST
    z0 = torch.randn(2, generator=torch.Generator().manual_seed(1)) * 0.02
    assert not torch.equal(result.z, z0)  # z moved
    decoded = decoded_init(subspace, result.z)
    torch.testing.assert_close(result.prompt.segments["task"].detach(), decoded)
    assert result.score is not None and 0 <= result.score.score <= 1
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 6


def test_ist_step_gives_gradient_to_z_only(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose.common import ComputedPrompt, EncodedTask
    from promptatlas.compose.ipt import _Intrinsic

    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle, ("sa", "nli"))
    subspace = fit_ipt(handle, sources, {}, IPTConfig(intrinsic_dim=2, task_loss=False, steps=2))
    decoder = subspace.autoencoder.decoder
    decoder.requires_grad_(False)
    producer = _Intrinsic(decoder, torch.zeros(2), subspace.shape)
    prompt = ComputedPrompt(sources[0].prompt, producer)
    assert prompt.trainable_parameters() == [producer.z]
    EncodedTask(_data(handle, "sa"), "lm", "v1").loss(PromptedLM(handle, prompt), [0, 1]).backward()
    assert producer.z.grad is not None and producer.z.grad.abs().sum() > 0
    assert all(p.grad is None for p in subspace.autoencoder.parameters())
    assert all(p.grad is None for p in handle.model.parameters())
    decoder.requires_grad_(True)


def test_ipt_controls(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle, ("sa", "nli"))
    subspace = fit_ipt(handle, sources, {}, IPTConfig(intrinsic_dim=2, task_loss=False, steps=2))
    rand = random_decoder(subspace, seed=5)
    assert rand.autoencoder is not subspace.autoencoder
    assert not torch.equal(
        rand.autoencoder.decoder[0].weight,  # type: ignore[arg-type]
        subspace.autoencoder.decoder[0].weight,  # type: ignore[arg-type]
    )
    init = decoded_init(subspace, torch.zeros(2))
    train = TrainConfig(steps=1, batch_size=2, lr=0.1, warmup=0.0, checkpoint_every=0)
    result = run_prompt_tuning(
        handle, sources[0].prompt, _data(handle, "sa"), train, init=init, method="ipt-init"
    )
    assert result.method == "ipt-init" and result.prompt.segments["task"].shape == init.shape


# -- runners, bank and recovery ---------------------------------------------------------------


def test_amp_prompts_store_in_the_bank_and_load_as_sources(
    tiny_handles: dict[str, Any], tmp_path: Any
) -> None:
    from promptatlas.bank import load_prompt, save_prompt
    from promptatlas.compose import sources_from_bank

    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle, ("sa", "nli"))
    for s in sources:
        save_prompt(tmp_path / "bank" / s.key, s.prompt, handle, task=s.task, lang=s.lang, seed=0)
    loaded = sources_from_bank(tmp_path / "bank", handle)
    assert [s.key for s in loaded] == ["nli-en", "sa-en"]
    assert all(not p.requires_grad for s in loaded for p in s.prompt.parameters())
    assert [s.key for s in sources_from_bank(tmp_path / "bank", handle, tasks=["SA"])] == ["sa-en"]
    assert sources_from_bank(tmp_path / "bank", handle, method="v2") == []
    cfg = AMPConfig(steps=1, batch_size=2, lr=0.01, warmup_steps=0)
    result = train_amp(handle, loaded, {"sa-en": _data(handle, "sa", n_test=4)}, cfg)
    out = save_prompt(
        tmp_path / "amp-sa", result.prompts["sa-en"], handle, task="sa", lang="en",
        extra={"kind": "amp", "attention": result.attention.tolist()},
    )  # fmt: skip
    back = load_prompt(out, handle).prompt
    torch.testing.assert_close(back.tensor(), result.prompts["sa-en"].tensor())


def test_amp_v2_separate_and_ablation_configs(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import amp_ablations

    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle, ("sa", "nli"), method="v2", kv="separate")
    d_kv = handle.geometry.d_kv
    ablations = amp_ablations(AMPConfig(steps=1, batch_size=2, lr=0.01, warmup_steps=0), d=None)
    assert set(ablations) == {"dam", "max-pool", "k64", "k256", "k=d", "value-identity"}
    result = train_amp(handle, sources, {"nli-en": _data(handle, "nli")}, ablations["k64"])
    groups = 2 * handle.geometry.n_layers  # keys and values of every layer
    assert result.attention_groups.shape == (groups, 2, 2)
    assert result.n_parameters == groups * (2 * d_kv * 64 + d_kv * d_kv)
    raw = train_amp(
        handle, sources, {"nli-en": _data(handle, "nli")}, ablations["value-identity"], score=False
    )
    assert raw.module.w_v is None


def test_compare_methods_one_seed_gives_the_table(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import CompareConfig, compare_methods
    from promptatlas.report.compose import comparison_table

    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle)
    data = {"sa-en": _data(handle, "sa", n_train=8, n_test=4)}
    cfg = CompareConfig(
        pt=TrainConfig(steps=1, batch_size=4, lr=0.1, warmup=0.0, checkpoint_every=0),
        attempt=AttemptConfig(steps=1, batch_size=4, warmup_steps=0),
        amp=AMPConfig(steps=1, batch_size=4, lr=0.01, warmup_steps=0),
        seed=7,
    )
    run = compare_methods(handle, sources, data, cfg)
    assert sorted(s.method for s in run.scores) == sorted(
        ["pt", "spot-s", "spot-m", "attempt", "amp"]
    )
    assert all(s.seed == 7 and s.task == "sa" and s.lang == "en" for s in run.scores)
    table = comparison_table(run.scores, lang="en")
    assert table.tasks == ["sa"] and all(table.mean_row[m] is not None for m in table.methods)
    with pytest.raises(ComposeError, match="unknown method"):
        CompareConfig(methods=("pt", "lora"))


def test_ipt_recovery_runner(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import ipt_recovery

    handle = tiny_handles["tiny-gpt2"]
    sources = _sources(handle, ("sa", "nli"))
    subspace = fit_ipt(handle, sources, {}, IPTConfig(intrinsic_dim=2, task_loss=False, steps=3))
    targets = {"sa-en": _data(handle, "sa", n_test=4), "sts-en": _data(handle, "sts", n_test=4)}
    ist = ISTConfig(steps=2, batch_size=2, lr=0.05)
    pt = TrainConfig(steps=1, batch_size=2, lr=0.1, warmup=0.0, checkpoint_every=0)
    result = ipt_recovery(
        handle, subspace, targets, {"sa-en": 0.5, "sts-en": 0.5}, ist, pt_train=pt,
        untrained_scores={"sa-en": 0.25},
    )  # fmt: skip
    by_key = {r.key: r for r in result.rows}
    # Gain recovery where the untrained score is known (SA), not where it is not (STS).
    assert by_key["sa-en"].gain_recovery == pytest.approx((by_key["sa-en"].ist - 0.25) / 0.25)
    assert result.seen is not None and result.seen["gain_recovery"] == pytest.approx(
        by_key["sa-en"].gain_recovery
    )
    assert result.unseen is not None and "gain_recovery" not in result.unseen
    assert by_key["sa-en"].seen and not by_key["sts-en"].seen
    assert result.seen is not None and result.unseen is not None
    assert result.seen["mean_ratio"] == pytest.approx(by_key["sa-en"].ist / 0.5)
    assert by_key["sts-en"].random_decoder is not None
    assert by_key["sts-en"].decoded_init_pt is not None
    assert result.to_dict()["intrinsic_dim"] == 2
    with pytest.raises(ComposeError, match="full prompt-tuning"):
        ipt_recovery(handle, subspace, targets, {"sa-en": 0.5}, ist)


def test_subspace_round_trip(tiny_handles: dict[str, Any], tmp_path: Any) -> None:
    from promptatlas.compose import load_subspace, save_subspace

    handle = tiny_handles["tiny-gemma3"]
    sources = _sources(handle, ("sa", "nli"), method="v2")
    subspace = fit_ipt(handle, sources, {}, IPTConfig(intrinsic_dim=3, task_loss=False, steps=3))
    out = save_subspace(subspace, tmp_path / "ipt-3")
    back = load_subspace(out, handle)
    z = torch.randn(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decoded_init(back, z), decoded_init(subspace, z))
    torch.testing.assert_close(back.vectors, subspace.vectors)
    assert back.keys == subspace.keys and back.config == subspace.config
    torch.testing.assert_close(back.template.tensor(), subspace.template.tensor())
    with pytest.raises(ComposeError, match="geometry"):
        load_subspace(out, tiny_handles["tiny-gpt2"])
    ist = tune_intrinsic(handle, back, _data(handle, "sa"), ISTConfig(steps=1, batch_size=2))
    assert ist.prompt.method == "v2"


def test_amp_warm_start_with_an_added_task(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gemma3"]
    cfg = AMPConfig(steps=2, batch_size=2, lr=0.05, warmup_steps=0)
    first = train_amp(handle, _sources(handle, ("sa", "nli")), {"sa-en": _data(handle, "sa")}, cfg)
    more = _sources(handle, ("sa", "nli", "sts"))
    zero = AMPConfig(steps=1, batch_size=2, lr=1e-12, warmup_steps=0, weight_decay=0.0)
    second = train_amp(
        handle, more, {"sts-en": _data(handle, "sts")}, zero, warm_start=first.module
    )
    torch.testing.assert_close(second.module.w_q, first.module.w_q, atol=1e-6, rtol=0)
    assert second.attention.shape == (3, 3)


def test_module_scores_equal_the_blockwise_oracle(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import build_attention

    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle, method="v2")
    _, module = build_attention(sources, AMPConfig(k=5))
    p = module.sources.transpose(0, 1)
    with torch.no_grad():
        scores = module.scores()
        for g in range(p.shape[0]):
            q = p[g] @ module.w_q[g]
            k = p[g] @ module.w_k[g]
            torch.testing.assert_close(scores[g], dam_scores_blockwise(q, k), atol=1e-5, rtol=1e-5)


def test_attempt_gradients_reach_only_the_mixer(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose.common import EncodedTask

    handle = tiny_handles["tiny-gpt2"]
    plm = _attempt_lm(handle)
    enc = EncodedTask(_data(handle, "sa"), "rank", "v1")
    enc.loss(plm, [0, 1, 2]).backward()
    assert all(p.grad is not None for p in plm.mixer.parameters())
    assert all(p.grad is None for p in handle.model.parameters())
    assert plm.prompt is not None and all(p.grad is None for p in plm.prompt.parameters())
    plm.mixer.zero_grad(set_to_none=True)


def test_attempt_pooling_mask_hides_target_tokens(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = _attempt_lm(handle)
    ids = torch.tensor([[5, 6, 7, 250, 251]])
    other = torch.tensor([[5, 6, 7, 100, 101]])  # another "answer"
    mask = torch.ones_like(ids)
    context = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        a, b = plm.row_prompts(ids, context), plm.row_prompts(other, context)
        with plm.pooling(context):
            ha = plm.forward(ids, mask).hidden
            hb = plm.forward(other, mask).hidden
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ha[:, :3], hb[:, :3])  # causal: same until the answer starts
    with torch.no_grad():  # pooling over the whole row would let the answer in
        leaky = plm.forward(ids, mask).hidden
    assert not torch.allclose(leaky[:, :3], ha[:, :3])


def test_computed_prompt_trains_with_the_standard_trainer(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.compose import ComputedPrompt, build_attention
    from promptatlas.compose.amp import _Target
    from promptatlas.training import train_prompt

    handle = tiny_handles["tiny-llama"]
    sources = _sources(handle)
    _, module = build_attention(sources, AMPConfig(k=4))
    prompt = ComputedPrompt(sources[0].prompt, _Target(module, 0, "v1", "shared"))
    assert prompt.num_parameters(trainable_only=True) == module.num_parameters()
    state = prompt.state_tensors()
    assert "producer.attention.w_q" in state and "producer.attention.sources" in state
    data = _data(handle, "sa")
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.05, warmup=0.0, eval_every=1, checkpoint_every=0)
    result = train_prompt(
        PromptedLM(handle, prompt), data.formatter, list(data.train), cfg,
        dev=list(data.dev), progress=False,
    )  # fmt: skip
    assert result.best_step is not None
    best = prompt.state_tensors()
    assert not torch.equal(best["producer.attention.w_q"], state["producer.attention.w_q"])
    prompt.load_state_tensors(state)  # back to the start
    torch.testing.assert_close(module.w_q.detach(), state["producer.attention.w_q"])


def test_save_subspace_never_replaces_a_foreign_directory(
    tiny_handles: dict[str, Any], tmp_path: Any
) -> None:
    from promptatlas.compose import save_subspace
    from promptatlas.outputs import OutputPathError

    handle = tiny_handles["tiny-gpt2"]
    subspace = fit_ipt(
        handle, _sources(handle, ("sa",)), {}, IPTConfig(intrinsic_dim=1, task_loss=False, steps=1)
    )
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputPathError):
        save_subspace(subspace, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    out = save_subspace(subspace, tmp_path / "ipt")
    assert save_subspace(subspace, out) == out  # its own directory is replaced
