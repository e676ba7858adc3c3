"""Analysis statistics: hand-computed values, invariants, streaming vs all-in-memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from promptatlas.analysis.attention import (
    AttentionChange,
    AttentionVariability,
    attention_analysis,
    attention_change,
    attention_kl,
    attention_variability,
    correlate_heads,
    kl_divergence,
    layer_groups,
    pearson,
    variability_from_maps,
    variability_window,
)
from promptatlas.analysis.capture import (
    INPUT,
    SPECIAL,
    AnalysisBatch,
    CaptureRequest,
    capture_batch,
    context_batches,
    context_row,
    label_word_batches,
    make_batches,
    run_reducers,
)
from promptatlas.analysis.geometry import (
    Isotropy,
    isotropy,
    isotropy_analysis,
    label_space,
    random_pairs,
)
from promptatlas.analysis.layers import default_kept_last, local_extrema, select_layers
from promptatlas.analysis.neurons import activation_states, on_matrix, on_score, on_scores
from promptatlas.analysis.pca import pca_points, prompt_pca, prompt_points
from promptatlas.formatting import TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SegmentConfig, SoftPrompt
from promptatlas.tasks import Example, get_task, load_split

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


def _prompt(handle: Any, method: str, length: int = 3, seed: int = 0, **kw: Any) -> SoftPrompt:
    prompt = SoftPrompt(PromptConfig(method=method, length=length, **kw), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    return prompt


def _formatter(handle: Any, task: str = "nli") -> TaskFormatter:
    return TaskFormatter(handle.tokenizer, get_task(task, "en"))


def _batches(
    handle: Any, n: int = 6, batch_size: int = 2, task: str = "nli"
) -> list[AnalysisBatch]:
    fmt = _formatter(handle, task)
    return context_batches(fmt, load_split(task, "en", "dev", limit=n), batch_size=batch_size)


# -- variability ------------------------------------------------------------------------------


def test_variability_hand_computed() -> None:
    # upper-triangle entries must be ignored: fill them with junk
    w1 = torch.tensor([[[0.2, 9.0], [0.3, 0.4]]])
    w2 = torch.tensor([[[0.6, 9.0], [0.1, 0.2]]])
    # means 0.4, 0.2, 0.3; |dev| = 0.4 per example; mass = 0.9 + 0.9
    assert variability_from_maps([w1, w2]).item() == pytest.approx(0.8 / 3.6)
    # a shorter input contributes only the pairs it has: mean of (0,0) becomes 0.3
    w3 = torch.tensor([[[0.1]]])
    # deviations (0,0): |.2-.3|+|.6-.3|+|.1-.3| = .6; (1,0),(1,1): .2+.2 → 1.0 / (2·1.9)
    assert variability_from_maps([w1, w2, w3]).item() == pytest.approx(1.0 / 3.8)


def test_variability_window_positions() -> None:
    attn = torch.arange(36.0).reshape(1, 6, 6)
    w = variability_window(attn, length=6, n_tokens=3)
    assert w.shape == (1, 3, 3) and w[0, 0, 0] == attn[0, 1, 1] and w[0, 2, 2] == attn[0, 3, 3]
    assert variability_window(attn, length=3, n_tokens=10).shape == (1, 2, 2)


def test_variability_zero_for_identical_attention() -> None:
    w = torch.rand(2, 4, 4)
    assert variability_from_maps([w, w.clone(), w.clone()]).abs().max() < 1e-12


def test_variability_zero_when_every_input_is_the_same(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    one = _batches(handle, n=1, batch_size=1)[0]
    repeated = AnalysisBatch(
        one.input_ids.repeat(3, 1),
        one.attention_mask.repeat(3, 1),
        one.kinds.repeat(3, 1),
        one.decoding.repeat(3),
        torch.arange(3),
        ("",) * 3,
    )
    result = attention_variability(handle, [repeated, repeated])
    assert result.variability.abs().max() < 1e-6
    # and different inputs do vary
    assert attention_variability(handle, _batches(handle)).variability.min() > 1e-3


@pytest.mark.parametrize("name", TINY)
def test_variability_streaming_equals_all_in_memory(
    tiny_handles: dict[str, Any], name: str
) -> None:
    handle = tiny_handles[name]
    n_tokens = 6
    streamed = attention_variability(handle, _batches(handle, n=7, batch_size=3), n_tokens=n_tokens)
    one_batch = attention_variability(
        handle, _batches(handle, n=7, batch_size=7), n_tokens=n_tokens
    )
    # all in memory: every example's full attention map from a plain output_attentions forward
    plm = PromptedLM(handle)
    per_layer: dict[int, list[torch.Tensor]] = {}
    for batch in _batches(handle, n=7, batch_size=7):
        with torch.no_grad():
            out = plm.forward(batch.input_ids, batch.attention_mask, output_attentions=True)
        assert out.attentions is not None
        for layer, attn in enumerate(out.attentions):
            for r in range(batch.size):
                length = int(batch.lengths[r])
                per_layer.setdefault(layer, []).append(
                    variability_window(attn[r].double(), length, n_tokens)
                )
    reference = torch.stack([variability_from_maps(per_layer[i]) for i in sorted(per_layer)])
    torch.testing.assert_close(streamed.variability, reference)
    torch.testing.assert_close(one_batch.variability, reference)
    assert streamed.n_examples == 7


# -- attention change (KL) --------------------------------------------------------------------


def test_kl_hand_computed() -> None:
    kinds = torch.tensor([SPECIAL, INPUT, INPUT, SPECIAL])
    base = torch.tensor([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.5, 0], [0.1, 0.2, 0.3, 0.4]])[
        None
    ]
    prompted = torch.tensor(
        [[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0.4, 0.1, 0.5, 0], [0.1, 0.1, 0.7, 0.1]]
    )[None]
    # received by the two input tokens: base (1.0, 0.8) → (5/9, 4/9); prompted (0.3, 1.2)
    expected = 0.2 * math.log(0.2 / (5 / 9)) + 0.8 * math.log(0.8 / (4 / 9))
    assert attention_kl(prompted, base, kinds).item() == pytest.approx(expected)
    assert attention_kl(base, base, kinds).item() == 0
    # zeros are replaced by 1e-20 (no infinities)
    p, q = torch.tensor([1.0, 0.0]).double(), torch.tensor([0.5, 0.5]).double()
    assert kl_divergence(p, q).item() == pytest.approx(math.log(2) + 1e-20 * math.log(2e-20))
    assert math.isfinite(kl_divergence(q, p).item())


@pytest.mark.parametrize("method", ["v1", "v2"])
@pytest.mark.parametrize("name", TINY)
def test_kl_zero_for_base_and_positive_for_a_prompt(
    tiny_handles: dict[str, Any], name: str, method: str
) -> None:
    handle = tiny_handles[name]
    batches = _batches(handle, n=4)
    same = attention_change(handle, None, batches)
    assert same.kl.shape == (handle.geometry.n_layers, handle.geometry.n_heads)
    assert same.kl.abs().max() == 0
    changed = attention_change(handle, _prompt(handle, method), batches)
    assert bool((changed.kl > 0).all())
    assert changed.n_examples == 4
    assert changed.per_layer.shape == (handle.geometry.n_layers,)


def test_kl_skips_inputs_without_ordinary_tokens(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    fmt = _formatter(handle, "sa")
    examples = load_split("sa", "en", "dev", limit=3)
    empty = Example(inputs=("",), target="positive", label="positive")
    prompt = _prompt(handle, "v1")
    with_empty = context_batches(fmt, [*examples, empty], batch_size=4)
    assert bool(((with_empty[0].kinds == INPUT).sum(1) == 0).any())
    result = attention_change(handle, prompt, with_empty)
    reference = attention_change(handle, prompt, context_batches(fmt, examples, batch_size=4))
    assert result.n_examples == 3
    torch.testing.assert_close(result.kl, reference.kl)


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_kl_streaming_equals_all_in_memory(tiny_handles: dict[str, Any], method: str) -> None:
    handle = tiny_handles["tiny-gemma3"]
    prompt = _prompt(handle, method)
    batches = _batches(handle, n=5, batch_size=2)
    streamed = attention_change(handle, prompt, batches)
    base, prompted = PromptedLM(handle), PromptedLM(handle, prompt)
    k = prompt.length
    rows = []
    for batch in batches:
        with torch.no_grad():
            b = base.forward(batch.input_ids, batch.attention_mask, output_attentions=True)
            p = prompted.forward(batch.input_ids, batch.attention_mask, output_attentions=True)
        assert b.attentions is not None and p.attentions is not None
        for r in range(batch.size):
            n = int(batch.lengths[r])
            per_layer = []
            for la, lb in zip(p.attentions, b.attentions, strict=True):
                q0 = k if method == "v1" else 0
                pa = la[r, :, q0 : q0 + n, k : k + n]  # drop prompt rows/columns and padding
                per_layer.append(attention_kl(pa, lb[r, :, :n, :n], batch.kinds[r, :n]))
            rows.append(torch.stack(per_layer))
    reference = torch.stack(rows).mean(0)
    torch.testing.assert_close(streamed.kl, reference)


def test_attention_analysis_shares_passes(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    prompt = _prompt(handle, "v2")
    batches = _batches(handle, n=4)
    var, change = attention_analysis(handle, prompt, batches, n_tokens=5)
    torch.testing.assert_close(
        var.variability, attention_variability(handle, batches, n_tokens=5).variability
    )
    torch.testing.assert_close(change.kl, attention_change(handle, prompt, batches).kl)


def test_reducers_reject_inconsistent_use() -> None:
    with pytest.raises(ValueError):
        AttentionChange([0], base="x", prompted="x")
    with pytest.raises(ValueError):
        AttentionVariability([0], n_tokens=0)
    with pytest.raises(RuntimeError, match="no data"):
        AttentionChange([0]).result()


# -- correlation -------------------------------------------------------------------------------


def test_pearson_and_groups() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [2.0, 1.0, 4.0, 3.0, 6.0]
    c = pearson(x, y)
    assert c.r == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert 0 < c.p < 1 and c.n == 5
    assert pearson(x, [2 * v for v in x]).r == pytest.approx(1.0)
    assert math.isnan(pearson(x, [1.0] * 5).r)  # constant: undefined, no warning
    assert math.isnan(pearson([1.0, math.nan], [1.0, 2.0]).r)  # one finite point left
    assert layer_groups(24) == [
        list(range(0, 6)),
        list(range(6, 12)),
        list(range(12, 18)),
        list(range(18, 24)),
    ]
    assert [len(g) for g in layer_groups(18)] == [5, 5, 4, 4]
    assert layer_groups(3) == [[0], [1], [2]]


def test_correlate_heads() -> None:
    gen = torch.Generator().manual_seed(0)
    var = torch.rand(8, 4, generator=gen)
    kl = 2 * var + 0.01 * torch.rand(8, 4, generator=gen)
    kl[6:] = -var[6:]  # last group anti-correlated
    rep = correlate_heads(var, kl, groups=4)
    assert rep.groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(c.r > 0.99 for c in rep.per_layer[:6])
    assert rep.per_group[3].r == pytest.approx(-1.0)
    assert rep.per_group[0].n == 8 and rep.overall.n == 32
    rep = correlate_heads(var[2:5], kl[2:5], layers=[2, 3, 4], groups=[[2, 3], [4]])
    assert rep.per_group[0].r == pytest.approx(pearson(var[2:4].flatten(), kl[2:4].flatten()).r)


# -- ON score ---------------------------------------------------------------------------------


def test_on_score_hand_computed() -> None:
    a = torch.tensor([[2.0, 0.5, -1.0, -3.0]])
    b = torch.tensor([[1.0, -0.5, 4.0, -1.0]])
    assert on_score(a, b).item() == pytest.approx(0.5)  # on-sets {0,1} and {0,2}
    raw = float(a @ b.T) / float(a.norm() * b.norm())
    assert on_score(a, b, kind="raw").item() == pytest.approx(raw)
    assert on_score(a, a).item() == pytest.approx(1.0)
    states = {"a": a, "b": b, "c": -a}
    scores = on_scores(states)
    assert scores.binary.shape == (1, 3, 3)
    # pairs: (a,b)=0.5, (a,c)=0 (disjoint on-sets), (b,c): {0,2} vs {2,3} = 0.5
    assert scores.mean_over_pairs().item() == pytest.approx(1 / 3)
    assert scores.pair("a", "c", kind="raw").item() == pytest.approx(-1.0)
    assert on_matrix({"a": a}, {"b": b, "c": -a}).shape == (1, 1, 2)


@pytest.mark.parametrize("method", ["v1", "v2"])
@pytest.mark.parametrize("name", TINY)
def test_on_score_of_real_prompts(tiny_handles: dict[str, Any], name: str, method: str) -> None:
    handle = tiny_handles[name]
    fmt = _formatter(handle)
    p1, p2 = _prompt(handle, method, seed=1), _prompt(handle, method, seed=2)
    twin = _prompt(handle, method, seed=1)  # same values, another object
    states = activation_states(handle, {"p1": p1, "twin": twin, "p2": p2}, fmt)
    n, d = handle.geometry.n_layers, handle.geometry.d_ffn
    assert states["p1"].shape == (n, d)
    torch.testing.assert_close(on_score(states["p1"], states["twin"]), torch.ones(n).double())
    assert on_score(states["p1"], states["p2"], kind="raw").min() < 1 - 1e-4
    # manual reference: forward on [P, <sep>] with a hook on the down-projection
    layers = handle.adapter.layers(handle.model)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        handle.adapter.ffn_down(layer).register_forward_pre_hook(
            lambda _m, args, i=i: seen.__setitem__(i, args[0][0, -1].detach())
        )
        for i, layer in enumerate(layers)
    ]
    try:
        ids = torch.tensor([fmt.sep])
        with torch.no_grad():
            PromptedLM(handle, p2).forward(ids, torch.ones_like(ids))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(states["p2"], torch.stack([seen[i] for i in range(n)]))


# -- isotropy ----------------------------------------------------------------------------------


def test_isotropy_hand_computed() -> None:
    same = torch.tensor([[1.0, 2.0, 3.0]]).repeat(5, 1)
    assert isotropy(same) == pytest.approx(1.0)
    assert isotropy(same, n_pairs=50) == pytest.approx(1.0)
    assert isotropy(torch.eye(4)) == pytest.approx(0.0)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: cos(e1,e2)=0, cos(e1,d)=cos(e2,d)=1/√2; mean over the 3 unordered pairs
    assert isotropy(x) == pytest.approx(2 / math.sqrt(2) / 3)
    i, j = random_pairs(3, 200, seed=0)
    assert bool((i != j).all()) and set(i.tolist()) == {0, 1, 2}


def test_isotropy_identical_inputs_give_one(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    one = _batches(handle, n=1, batch_size=1)[0]
    kinds = one.kinds.clone()
    # a single ordinary token per input: every input gives the same representations
    first = int(torch.nonzero(kinds[0] == INPUT)[0])
    kinds[0, first + 1 :][kinds[0, first + 1 :] == INPUT] = SPECIAL
    batch = AnalysisBatch(
        one.input_ids.repeat(4, 1),
        one.attention_mask.repeat(4, 1),
        kinds.repeat(4, 1),
        one.decoding.repeat(4),
        torch.arange(4),
        ("",) * 4,
    )
    result = isotropy_analysis(handle, None, [batch], n_pairs=20)
    torch.testing.assert_close(result.random["base"], torch.ones(4).double())
    torch.testing.assert_close(result.random_all_pairs["base"], torch.ones(4).double())


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_isotropy_streaming_equals_all_in_memory(tiny_handles: dict[str, Any], method: str) -> None:
    handle = tiny_handles["tiny-llama"]
    prompt = _prompt(handle, method)
    batches = _batches(handle, n=7, batch_size=3)
    n = handle.geometry.n_layers
    models = {"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}
    reducer = Isotropy(range(n + 1), models, n_pairs=40, reservoir=16, seed=3)
    run_reducers(models, batches, [reducer])
    result = reducer.result()
    assert result.n_inputs == 7
    # all in memory: replay the reducer's token choice, collect every vector
    gen = torch.Generator().manual_seed(3)
    chosen: list[tuple[int, int, int]] = []
    for b, batch in enumerate(batches):
        for r in range(batch.size):
            candidates = torch.nonzero(batch.kinds[r] == INPUT, as_tuple=True)[0]
            pick = candidates[int(torch.randint(len(candidates), (1,), generator=gen))]
            chosen.append((b, r, int(pick)))  # reservoir not full: no extra draws
    for name, plm in models.items():
        rand: list[list[torch.Tensor]] = [[] for _ in range(n + 1)]
        dec: list[list[torch.Tensor]] = [[] for _ in range(n + 1)]
        for b, r, pos in chosen:
            batch = batches[b]
            with torch.no_grad():
                out = plm.forward(batch.input_ids, batch.attention_mask, output_hidden_states=True)
            assert out.hidden_states is not None
            off = plm.n_prompt if method == "v1" and name == "prompted" else 0
            for layer in range(n + 1):
                h = out.hidden_states[layer][r]
                rand[layer].append(h[off + pos])
                dec[layer].append(h[off + int(batch.decoding[r])])
        x = [torch.stack(v) for v in rand]
        d = [torch.stack(v) for v in dec]
        all_pairs = torch.tensor([isotropy(x[i]) for i in range(n + 1)]).double()
        dec_pairs = torch.tensor([isotropy(d[i], x[i]) for i in range(n + 1)]).double()
        sampled = torch.tensor([isotropy(x[i], n_pairs=40, seed=4) for i in range(n + 1)])
        torch.testing.assert_close(result.random_all_pairs[name], all_pairs)
        torch.testing.assert_close(result.decoding_all_pairs[name], dec_pairs)
        torch.testing.assert_close(result.random[name], sampled.double())


def test_isotropy_reservoir_keeps_memory_bounded(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    batches = _batches(handle, n=9, batch_size=3)
    models = {"base": PromptedLM(handle)}
    reducer = Isotropy([1, 3], models, n_pairs=30, reservoir=4, seed=0)
    run_reducers(models, batches, [reducer])
    state = reducer._state[("base", 1)]
    assert state.res_r.shape[0] == 4
    result = reducer.result()
    assert result.n_inputs == 9 and result.random["base"].shape == (2,)
    assert bool((result.random["base"].abs() <= 1).all())


# -- label space -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_label_space_matches_manual_hidden_states(tiny_handles: dict[str, Any], name: str) -> None:
    handle = tiny_handles[name]
    prompt = _prompt(handle, "v2")
    fmt = _formatter(handle)
    examples = load_split("nli", "en", "dev", limit=4)
    batches = label_word_batches(fmt, examples, batch_size=3, seed=0)
    result = label_space(handle, prompt, batches)
    n = handle.geometry.n_layers
    assert result.layers == list(range(n + 1)) and result.n_examples == 4
    for model, plm in {"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}.items():
        sums = {"gold": torch.zeros(n + 1).double(), "non-gold": torch.zeros(n + 1).double()}
        for batch in batches:
            with torch.no_grad():
                out = plm.forward(batch.input_ids, batch.attention_mask, output_hidden_states=True)
            assert out.hidden_states is not None
            for r in range(batch.size):
                d = int(batch.decoding[r])
                for layer in range(n + 1):
                    h = out.hidden_states[layer][r].double()
                    sums[batch.tags[r]][layer] += torch.cosine_similarity(h[d], h[d + 1], dim=0)
        torch.testing.assert_close(result.gold[model], sums["gold"] / 4)
        torch.testing.assert_close(result.non_gold[model], sums["non-gold"] / 4)
    assert result.gap("prompted").shape == (n + 1,)
    # rows tagged for the label space but without a teacher-forced label token are an error
    plain = context_batches(fmt, examples, batch_size=4)[0]
    plain.tags = ("gold",) * plain.size
    with pytest.raises(ValueError, match="label token"):
        label_space(handle, prompt, [plain])


# -- PCA ---------------------------------------------------------------------------------------


def test_pca_of_points_on_a_line() -> None:
    t = torch.linspace(-1, 1, 7)[:, None]
    direction = torch.tensor([[1.0, 2.0, -2.0]])
    panel = pca_points({"a": t[:4] * direction + 5, "b": t[4:] * direction + 5})
    assert panel.explained_variance_ratio[0] == pytest.approx(1.0)
    assert panel.explained_variance_ratio[1] == pytest.approx(0.0, abs=1e-12)
    coords = np.concatenate([panel.coords["a"], panel.coords["b"]])
    # first coordinate = signed distance along the line (|direction| = 3), centred
    expected = (t[:, 0] * 3).numpy()
    assert np.allclose(np.abs(coords[:, 0]), np.abs(expected), atol=1e-6)
    assert np.allclose(coords[:, 1], 0, atol=1e-6)
    # a square: two equal directions of variance
    sq = pca_points({"s": torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])})
    assert np.allclose(sq.explained_variance_ratio, [0.5, 0.5])


def test_prompt_pca_panels(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    g = handle.geometry
    v1 = prompt_pca({"a": _prompt(handle, "v1", 4, 1), "b": _prompt(handle, "v1", 4, 2)})
    assert len(v1) == 1 and v1[0].layer is None and v1[0].coords["a"].shape == (4, 2)
    shared = {"a": _prompt(handle, "v2", 4, 1), "b": _prompt(handle, "v2", 5, 2)}
    panels = prompt_pca(shared, n_components=3)
    assert [p.layer for p in panels] == list(range(g.n_layers))
    assert panels[0].coords["b"].shape == (5, 3)
    sep = _prompt(handle, "v2", 4, 3, kv="separate")
    assert prompt_points(sep)[0].shape == (4, 2 * g.d_kv)
    subset = _prompt(handle, "v2", 4, 4, layers=(1,))
    panels = prompt_pca({"full": shared["a"], "subset": subset})
    assert [p.names for p in panels] == [["full"], ["full", "subset"], ["full"]]
    seg = SoftPrompt(
        PromptConfig(method="v1", segments=(SegmentConfig("lang", 2), SegmentConfig("task", 3))),
        g,
    )
    assert prompt_points(seg, segment="task")[None].shape == (3, g.d_model)
    with pytest.raises(ValueError, match="one method"):
        prompt_pca({"a": shared["a"], "b": _prompt(handle, "v1")})


# -- layer selection ---------------------------------------------------------------------------


def test_layer_selection_reproduces_the_thesis_groups() -> None:
    # a zigzag KL curve of 24 layers with the thesis's peaks {1, 7, 9, ..., 17, 21} and
    # troughs {2, 8, ..., 18, 20, 22}; layers 3-6 and 18-20 are monotone stretches
    curve = [2.0, 3.0, 1.0, 1.2, 1.4, 1.6, 1.8]
    curve += [3.0, 1.0] * 6  # layers 7..18
    curve += [1.5, 2.0, 3.0, 1.0, 2.0]  # layers 19..23
    assert len(curve) == 24
    peaks, troughs = local_extrema(curve)
    assert peaks == [1, 7, 9, 11, 13, 15, 17, 21]
    assert troughs == [2, 8, 10, 12, 14, 16, 18, 22]
    assert default_kept_last(24) == 4
    thesis_peak = [0, 1, 7, 9, 11, 13, 15, 17, 20, 21, 22, 23]
    thesis_trough = [0, 2, 8, 10, 12, 14, 16, 18, 20, 21, 22, 23]
    for size in (None, 12):
        sel = select_layers(curve, size=size)
        assert sel.kept == [0, 20, 21, 22, 23]
        assert sel.peak == thesis_peak
        assert sel.trough == thesis_trough
    # scaled to an 18-layer model: the last 3 layers are kept
    assert select_layers(curve[:18]).kept == [0, 15, 16, 17]


def test_layer_selection_size_and_plateaus() -> None:
    curve = [0.0, 5.0, 1.0, 4.0, 4.0, 2.0, 3.0, 0.5, 9.0, 9.0]
    peaks, troughs = local_extrema(curve)
    assert peaks == [1, 3, 6] and troughs == [2, 5, 7]
    sel = select_layers(curve, keep_last=2, size=4)
    assert sel.kept == [0, 8, 9]
    assert sel.peak == [0, 1, 8, 9]  # the strongest peak only
    assert sel.trough == [0, 7, 8, 9]  # the deepest trough only
    filled = select_layers(curve, keep_last=2, size=7)
    assert filled.peak == [0, 1, 3, 4, 6, 8, 9]  # peaks then the highest non-trough layer
    with pytest.raises(ValueError):
        select_layers([1.0, math.nan])


def test_streaming_batches_are_order_independent(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gemma3"]
    fmt = _formatter(handle, "sa")
    examples = load_split("sa", "en", "dev", limit=6)
    rows = [context_row(fmt, ex, example_id=i) for i, ex in enumerate(examples)]
    a = make_batches(rows, 0, batch_size=2)
    b = make_batches(list(reversed(rows)), 0, batch_size=5, sort=False)
    prompt = _prompt(handle, "v1")
    torch.testing.assert_close(
        attention_change(handle, prompt, a).kl, attention_change(handle, prompt, b).kl
    )
    # capture requests outside the model are rejected before any work
    with pytest.raises(ValueError):
        capture_batch(PromptedLM(handle), a[0], CaptureRequest.of(attention=[99]))
