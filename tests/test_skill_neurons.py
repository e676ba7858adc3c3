"""Skill neurons: hand-computed predictivity, streaming vs direct, neuron read-out per family,
perturbation hooks, pruning, controls."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from promptatlas.analysis.capture import INPUT, context_batches
from promptatlas.analysis.skill import (
    EvalSetup,
    PredictivityAccumulator,
    SkillNeurons,
    cross_task_perturbation,
    default_subtasks,
    example_labels,
    ffn_parts,
    keep_by_predictivity,
    least_predictive,
    measure_perturbation,
    neuron_activations,
    neuron_predictivity,
    one_vs_rest,
    perturb_neurons,
    perturbation_curve,
    predictivity_correlation,
    predictivity_from_batches,
    prune_ffn,
    pruning_means,
    random_control,
    random_keep,
    read_neurons,
    reference_subtasks,
    seed_average,
    select_count,
    select_skill_neurons,
    simple_predictivity,
    skill_overlap,
    skill_similarity,
)
from promptatlas.analysis.skill.prune import default_prune_layers, forward_time
from promptatlas.evaluation import EvalConfig
from promptatlas.formatting import TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import Example, get_task, load_split

TINY = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


def _prompt(handle: Any, method: str = "v1", length: int = 3, seed: int = 0) -> SoftPrompt:
    prompt = SoftPrompt(PromptConfig(method=method, length=length), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    return prompt


def _fmt(handle: Any, task: str = "sa") -> TaskFormatter:
    return TaskFormatter(handle.tokenizer, get_task(task, "en"))


# -- hand-computable cases (spec §A6) ---------------------------------------------------------


TRAIN = [0.0, 1.0, 2.0, 3.0]
DEV = [0.5, 2.5, 3.0, 1.0]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([0, 1, 1, 0], 1.0), ([1, 0, 0, 1], 1.0), ([1, 1, 0, 0], 0.5)],
    ids=["excitatory", "inhibitory", "useless"],
)
def test_predictivity_hand_computed(labels: list[int], expected: float) -> None:
    assert np.mean(TRAIN) == 1.5  # the threshold
    assert simple_predictivity(TRAIN, DEV, labels) == pytest.approx(expected)
    # the streaming accumulator gives the same number (train labels do not matter)
    acc = PredictivityAccumulator(2, default_subtasks(["a", "b"]), [0])
    x = torch.tensor(TRAIN)[:, None, None]  # (N, P=1, D=1)
    acc.add_train(0, x, torch.tensor([0, 1, 0, 1]))
    acc.finish_train()
    assert float(acc.thresholds[0].item()) == 1.5
    acc.add_dev(0, torch.tensor(DEV)[:, None, None], torch.tensor(labels))
    assert acc.result().item() == pytest.approx(expected)


def test_threshold_comparison_is_strict() -> None:
    # a dev value equal to the threshold predicts 0
    assert simple_predictivity([1.0, 2.0], [1.5, 1.5, 2.0], [0, 0, 1]) == 1.0


def test_seed_average_hand_computed() -> None:
    assert seed_average([[0.6, 0.9], [0.8, 0.7]]) == pytest.approx(0.85)


def test_multiclass_balanced_one_vs_rest_by_hand() -> None:
    # 3 classes; one neuron; threshold = train mean = 1
    acc = PredictivityAccumulator(3, one_vs_rest(["a", "b", "c"]), [0])
    acc.add_train(0, torch.tensor([0.0, 1.0, 2.0])[:, None, None], torch.tensor([0, 1, 2]))
    acc.finish_train()
    dev = torch.tensor([2.0, 2.0, 0.0, 0.0, 0.0])[:, None, None]  # above: T, T, F, F, F
    y = torch.tensor([0, 0, 1, 2, 2])
    acc.add_dev(0, dev, y)
    per = acc.result()[:, 0, 0, 0]
    # a: TPR 1, TNR 1 → 1. b: TPR 0, TNR 2/4 (c, c below) → BA .25 → .75.
    # c: TPR 0, TNR 1/3 (b below among a, a, b) → BA 1/6 → 5/6.
    assert per.tolist() == pytest.approx([1.0, 0.75, 5 / 6])


def test_reference_subtasks_thresholds_per_subtask() -> None:
    labels = ["entailment", "neutral", "contradiction"]
    subs = reference_subtasks(labels, "entailment", "contradiction", "neutral")
    assert [s.classes for s in subs] == [(0, 2), (0, 1, 2)]
    acc = PredictivityAccumulator(3, subs, [0])
    acc.add_train(0, torch.tensor([0.0, 10.0, 2.0])[:, None, None], torch.tensor([0, 1, 2]))
    acc.finish_train()
    # group (0, 2): mean of 0 and 2 = 1; group (0, 1, 2): 4
    got = dict(zip(acc.groups, acc.thresholds[0][:, 0, 0].tolist(), strict=True))
    assert got == {(0, 2): 1.0, (0, 1, 2): 4.0}


def test_streaming_equals_direct_numpy() -> None:
    rng = np.random.default_rng(0)
    n_tr, n_dev, d = 37, 29, 11
    train = rng.normal(size=(n_tr, d))
    dev = rng.normal(size=(n_dev, d))
    y_dev = rng.integers(0, 2, size=n_dev)
    y_tr = rng.integers(0, 2, size=n_tr)
    acc = PredictivityAccumulator(2, default_subtasks(["a", "b"]), [0])
    for start in range(0, n_tr, 5):  # uneven batches
        sl = slice(start, start + 5)
        acc.add_train(0, torch.tensor(train[sl])[:, None], torch.tensor(y_tr[sl]))
    acc.finish_train()
    for start in range(0, n_dev, 7):
        sl = slice(start, start + 7)
        acc.add_dev(0, torch.tensor(dev[sl])[:, None], torch.tensor(y_dev[sl]))
    np.testing.assert_allclose(acc.result()[0, 0, 0], simple_predictivity(train, dev, y_dev))
    # one-vs-rest on 3 classes equals the direct balanced computation class by class
    y3 = rng.integers(0, 3, size=n_dev)
    acc3 = PredictivityAccumulator(3, one_vs_rest(["a", "b", "c"]), [0])
    acc3.add_train(0, torch.tensor(train)[:, None], torch.tensor(rng.integers(0, 3, size=n_tr)))
    acc3.finish_train()
    acc3.add_dev(0, torch.tensor(dev)[:, None], torch.tensor(y3))
    for c in range(3):
        direct = simple_predictivity(train, dev, (y3 == c).astype(int), balanced=True)
        np.testing.assert_allclose(acc3.result()[c, 0, 0], direct)


# -- selection and controls -----------------------------------------------------------------


def test_select_count_and_stable_selection() -> None:
    assert select_count(0.01, 2000) == 20
    assert select_count(0.0, 2000) == 0
    assert select_count(0.02, 2048) == 41
    values = np.array([[0.5, 0.9, 0.9, 0.6], [0.7, 0.5, 0.5, 0.8]])
    per_layer = select_skill_neurons(values, 0.5)
    assert per_layer.neurons[0].tolist() == [1, 2]  # tie: lower index first
    assert per_layer.neurons[1].tolist() == [3, 0]
    glob = select_skill_neurons(values, 0.25, scope="global")
    assert glob.neurons[0].tolist() == [1, 2] and glob.neurons[1].tolist() == []
    assert glob.total == 2


def test_random_controls_disjoint_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((3, 50))
    skill = select_skill_neurons(values, 0.2)
    for seed in range(5):
        a = random_control(skill, seed)
        b = random_control(skill, seed)
        assert a.counts() == skill.counts()
        for layer in skill.neurons:
            assert not set(a.neurons[layer]) & set(skill.neurons[layer])
            assert a.neurons[layer].tolist() == b.neurons[layer].tolist()
    assert random_control(skill, 0).pairs() != random_control(skill, 1).pairs()
    least = least_predictive(values, skill)
    for j, layer in enumerate(sorted(skill.neurons)):
        assert values[j, least.neurons[layer]].max() <= values[j, skill.neurons[layer]].min()


def test_overlap_and_correlation() -> None:
    a = SkillNeurons({0: [1, 2], 1: [0]}, d_ffn=4)
    b = SkillNeurons({0: [2, 3], 1: [0]}, d_ffn=4)
    assert skill_overlap(a, b) == pytest.approx(2 / 3)
    x = np.array([[0.1, 0.2, 0.3]])
    assert predictivity_correlation(x, np.array([[1.0, 3.0, 2.0]])) == pytest.approx(0.5)


def test_union_selection_fills_from_second_subtask() -> None:
    from promptatlas.analysis.skill.predictivity import _union

    first = np.array([[0.9, 0.1, 0.2, 0.3]])
    second = np.array([[0.95, 0.1, 0.8, 0.2]])
    out = _union(first, second, 0.25, "layer", [0], 4, "")
    assert out.neurons[0].tolist() == [0, 2]  # 0 from sub-task 1, then 2 (0 already in)


# -- reading neurons on every family ------------------------------------------------------------


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh((2 / np.pi) ** 0.5 * (x + 0.044715 * x**3)))


def _manual_neurons(handle: Any, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(down input, gate pre-activation) recomputed from the FFN weights."""
    ffn, layout = ffn_parts(handle, layer)
    if layout.conv1d:
        g = h @ ffn.c_fc.weight + ffn.c_fc.bias
        return _gelu_tanh(g), g
    g = h @ ffn.gate_proj.weight.T
    up = h @ ffn.up_proj.weight.T
    act = F.silu(g) if handle.adapter.family == "llama" else _gelu_tanh(g)
    return act * up, g


@pytest.mark.parametrize("method", [None, "v1", "v2"])
@pytest.mark.parametrize("name", TINY)
def test_neuron_tensor_equals_manual_recomputation(
    tiny_handles: dict[str, Any], name: str, method: str | None
) -> None:
    handle = tiny_handles[name]
    plm = PromptedLM(handle, None if method is None else _prompt(handle, method))
    batch = context_batches(_fmt(handle), load_split("sa", "en", "dev", limit=3), batch_size=3)[0]
    layers = list(range(handle.geometry.n_layers))
    ffn_in: dict[int, torch.Tensor] = {}
    hooks = [
        handle.adapter.ffn(layer).register_forward_pre_hook(
            lambda _m, args, i=i: ffn_in.__setitem__(i, args[0].detach().float())
        )
        for i, layer in enumerate(handle.adapter.layers(handle.model))
    ]
    got: dict[str, dict[int, torch.Tensor]] = {"down_input": {}, "gate": {}}
    try:
        for state in ("down_input", "gate"):
            read_neurons(
                plm,
                batch,
                layers,
                lambda r, s=state: got[s].__setitem__(r.layer, r.capture.tensor),
                state=state,
            )
    finally:
        for hk in hooks:
            hk.remove()
    for layer in layers:
        with torch.no_grad():
            a, g = _manual_neurons(handle, layer, ffn_in[layer])
        torch.testing.assert_close(got["down_input"][layer], a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["gate"][layer], g, atol=1e-5, rtol=1e-4)
        if handle.adapter.family == "gpt2":  # both states binarise identically
            assert torch.equal(got["down_input"][layer] > 0, got["gate"][layer] > 0)


def test_readout_positions_skip_padding_and_special(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    batch = context_batches(_fmt(handle), load_split("sa", "en", "dev", limit=4), batch_size=4)[0]
    assert bool((batch.attention_mask == 0).any())
    from promptatlas.analysis.skill import readout

    x = torch.arange(batch.input_ids.numel(), dtype=torch.float32).reshape(
        *batch.input_ids.shape, 1
    )
    dec = readout(x, batch, "decoding")
    assert dec[:, 0, 0].tolist() == x[torch.arange(4), batch.decoding, 0].tolist()
    mx = readout(x, batch, "input_max")
    mean = readout(x, batch, "input_mean")
    for r in range(4):
        inputs = x[r, batch.kinds[r] == INPUT, 0]
        assert mx[r, 0, 0] == inputs.max()
        assert mean[r, 0, 0] == pytest.approx(float(inputs.mean()))
    last = readout(x, batch, "last_k", k=3)
    assert last.shape == (4, 3, 1)
    assert last[:, -1, 0].tolist() == dec[:, 0, 0].tolist()
    assert (last[:, 0, 0] == dec[:, 0, 0] - 2).all()


# -- predictivity on a model ------------------------------------------------------------------


def _planted_examples() -> tuple[list[Example], list[Example]]:
    """Random texts with random labels: no real neuron can predict a held-out label well."""
    rng = np.random.default_rng(0)

    def ex() -> Example:
        text = "".join(rng.choice(list("abcdefgh "), size=int(rng.integers(4, 12))))
        word = ["negative", "positive"][int(rng.integers(0, 2))]
        return Example((text,), word, word)

    return [ex() for _ in range(16)], [ex() for _ in range(16)]


@pytest.mark.parametrize("name", TINY)
def test_planted_neuron_has_predictivity_one_and_ranks_first(
    tiny_handles: dict[str, Any], name: str
) -> None:
    handle = tiny_handles[name]
    fmt = _fmt(handle)
    train, dev = _planted_examples()
    label_of = {
        tuple(fmt.encode_context(ex, reserve=len(fmt.encode_target(ex.target)))): float(
            ex.label == "positive"
        )
        for ex in train + dev
    }
    layer, unit = 1, 5
    seen: dict[str, torch.Tensor] = {}
    backbone = handle.adapter.backbone(handle.model)

    def grab(_m: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        n = mask.sum(1)
        seen["y"] = torch.tensor(
            [label_of[tuple(ids[r, : int(n[r])].tolist())] for r in range(ids.shape[0])]
        )

    def plant(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        a = args[0].clone()
        a[..., unit] = seen["y"].to(a.dtype)[:, None]  # the unit equals the label
        return (a, *args[1:])

    ffn, layout = ffn_parts(handle, layer)
    hooks = [
        backbone.register_forward_pre_hook(grab, with_kwargs=True),
        getattr(ffn, layout.down).register_forward_pre_hook(plant),
    ]
    try:
        pred = neuron_predictivity(handle, None, fmt, train, dev, batch_size=5)
    finally:
        for hk in hooks:
            hk.remove()
    assert pred.row(layer)[unit] == 1.0
    assert pred.best() == (layer, unit, 1.0)
    assert (pred.values < 1.0).sum() == pred.values.size - 1  # nothing else is perfect
    skill = select_skill_neurons(pred, 1 / handle.geometry.d_ffn)
    assert skill.neurons[layer][0] == unit
    assert pred.values.shape == (handle.geometry.n_layers, handle.geometry.d_ffn)
    assert ((pred.values >= 0.5) & (pred.values <= 1.0)).all()


@pytest.mark.parametrize("position", ["decoding", "input_mean", "last_k"])
def test_model_predictivity_equals_direct_numpy(
    tiny_handles: dict[str, Any], position: str
) -> None:
    handle = tiny_handles["tiny-gemma3"]
    fmt = _fmt(handle, "nli")
    train = load_split("nli", "en", "train", limit=14)
    dev = load_split("nli", "en", "dev", limit=12)
    prompts = [_prompt(handle, "v1", seed=s) for s in (0, 1)]
    k = 2 if position == "last_k" else 1
    pred = neuron_predictivity(
        handle, prompts, fmt, train, dev, position=position, k=k, batch_size=4
    )
    # direct: every state in memory, numpy thresholds and balanced one-vs-rest accuracies
    y_dev = example_labels(fmt, dev)
    per_seed = []
    for prompt in prompts:
        plm = PromptedLM(handle, prompt)

        def states(examples: list[Example], plm: PromptedLM = plm) -> np.ndarray:
            batch = context_batches(fmt, examples, batch_size=len(examples))[0]
            out: dict[int, np.ndarray] = {}
            read_neurons(
                plm,
                batch,
                range(handle.geometry.n_layers),
                lambda r: out.__setitem__(r.layer, r.at(position, k).numpy()),
            )
            order = np.argsort(batch.example_ids.numpy())
            return np.stack([out[i] for i in sorted(out)], axis=2)[order]  # (N, P, L, D)

        tr, dv = states(train), states(dev)
        per_class = [
            simple_predictivity(tr, dv, (y_dev == c).astype(int), balanced=True) for c in range(3)
        ]
        per_seed.append(np.mean(per_class, axis=0))  # (P, L, D)
    np.testing.assert_allclose(pred.values, seed_average(per_seed), atol=1e-12)
    assert pred.n_seeds == 2 and pred.train_mean.shape[1] == k


def test_predictivity_memory_does_not_grow_with_examples(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    fmt = _fmt(handle)
    train = load_split("sa", "en", "train", limit=10)
    dev = load_split("sa", "en", "dev", limit=10)
    subs = default_subtasks(get_task("sa", "en").labels)

    def sizes(n: int) -> int:
        plm = PromptedLM(handle)
        batches = context_batches(fmt, train * n, batch_size=5)
        acc = predictivity_from_batches(
            plm,
            batches,
            example_labels(fmt, train * n),
            context_batches(fmt, dev * n, batch_size=5),
            example_labels(fmt, dev * n),
            subs,
            n_classes=2,
        )
        return sum(t.numel() for t in (*acc.sums.values(), *acc.above.values()))

    assert sizes(1) == sizes(3)


def test_skill_similarity_and_activations(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    fmt = _fmt(handle)
    train = load_split("sa", "en", "train", limit=8)
    dev = load_split("sa", "en", "dev", limit=8)
    a = neuron_predictivity(handle, _prompt(handle, seed=0), fmt, train, dev, name="a")
    b = neuron_predictivity(handle, _prompt(handle, seed=1), fmt, train, dev, name="b")
    sim = skill_similarity({"a": a, "b": b}, p=0.05)
    assert sim.overlap[0, 0] == 1.0 and sim.correlation[0, 0] == 1.0
    assert sim.overlap.shape == (2, 2) and -1 <= sim.correlation[0, 1] <= 1
    layer, index, _ = a.best()
    acts = neuron_activations(handle, _prompt(handle, seed=0), fmt, dev, layer, index)
    assert acts.values.shape == (8,) and set(acts.by_label()) <= {"positive", "negative"}
    assert a.summary()["best"]["layer"] == layer


# -- perturbation -------------------------------------------------------------------------------


def _ffn_io(
    handle: Any, layer: int, plm: PromptedLM, batch: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(down-projection input as the down-projection sees it, FFN output) of one layer."""
    ffn, layout = ffn_parts(handle, layer)
    store: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(ffn, layout.down).register_forward_pre_hook(
            lambda _m, args: store.__setitem__("a", args[0].detach().clone())
        ),
        ffn.register_forward_hook(lambda _m, _a, out: store.__setitem__("y", out.detach().clone())),
    ]
    try:
        with torch.no_grad():
            plm.forward(batch.input_ids, batch.attention_mask)
    finally:
        for hk in hooks:
            hk.remove()
    return store["a"], store["y"]


def _sa_batch(handle: Any, n: int = 3) -> Any:
    return context_batches(_fmt(handle), load_split("sa", "en", "dev", limit=n), batch_size=n)[0]


@pytest.mark.parametrize("name", TINY)
def test_zeroing_changes_exactly_the_chosen_units(tiny_handles: dict[str, Any], name: str) -> None:
    handle = tiny_handles[name]
    plm = PromptedLM(handle, _prompt(handle))
    batch = _sa_batch(handle)
    layer, units = 1, [3, 7]
    a0, y0 = _ffn_io(handle, layer, plm, batch)
    with perturb_neurons(handle, {layer: units}, mode="zero"):
        a1, y1 = _ffn_io(handle, layer, plm, batch)
    changed = (a0 != a1).any(0).any(0)
    assert set(torch.nonzero(changed)[:, 0].tolist()) <= set(units)
    assert (a1[..., units] == 0).all()
    others = [i for i in range(a0.shape[-1]) if i not in units]
    assert torch.equal(a0[..., others], a1[..., others])
    ffn, layout = ffn_parts(handle, layer)
    w = getattr(ffn, layout.down).weight
    w_down = w.T if layout.conv1d else w  # (d, D)
    expected = -(a0[..., units] @ w_down[:, units].T)
    torch.testing.assert_close(y1 - y0, expected, atol=1e-5, rtol=1e-4)
    # hooks are gone afterwards
    a2, _ = _ffn_io(handle, layer, plm, batch)
    assert torch.equal(a0, a2)


@pytest.mark.parametrize("name", TINY)
def test_gaussian_sigma_zero_changes_nothing_and_noise_is_seeded(
    tiny_handles: dict[str, Any], name: str
) -> None:
    handle = tiny_handles[name]
    plm = PromptedLM(handle, _prompt(handle))
    batch = _sa_batch(handle)
    layer = handle.geometry.n_layers - 1
    neurons = {0: [1, 2], layer: [0, 5]}
    ref = plm.forward(batch.input_ids, batch.attention_mask).hidden
    with perturb_neurons(handle, neurons, mode="gaussian", sigma=0.0):
        same = plm.forward(batch.input_ids, batch.attention_mask).hidden
    assert torch.equal(ref, same)
    runs = []
    for _ in range(2):
        with perturb_neurons(handle, neurons, mode="gaussian", sigma=0.5, seed=3):
            a0, _ = _ffn_io(handle, layer, plm, batch)
            runs.append(a0)
    torch.testing.assert_close(runs[0], runs[1])
    # one draw per (example, neuron), broadcast over positions
    a_clean, _ = _ffn_io(handle, layer, plm, batch)
    with perturb_neurons(handle, {layer: [0]}, mode="gaussian", sigma=0.5, seed=3):
        a_noisy, _ = _ffn_io(handle, layer, plm, batch)
    eps = a_noisy[..., 0] - a_clean[..., 0]
    torch.testing.assert_close(eps, eps[:, :1].expand_as(eps))
    with perturb_neurons(
        handle, {layer: [0]}, mode="gaussian", sigma=0.5, seed=3, per_position=True
    ):
        a_pos, _ = _ffn_io(handle, layer, plm, batch)
    eps = a_pos[..., 0] - a_clean[..., 0]
    assert not torch.allclose(eps, eps[:, :1].expand_as(eps))


def test_mean_mode_sets_values(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    plm = PromptedLM(handle)
    batch = _sa_batch(handle)
    values = {0: np.arange(handle.geometry.d_ffn, dtype=np.float32)}
    with perturb_neurons(handle, {0: [4, 9]}, mode="mean", values=values):
        a, _ = _ffn_io(handle, 0, plm, batch)
    assert (a[..., 4] == 4).all() and (a[..., 9] == 9).all()
    with (
        pytest.raises(ValueError, match="needs values"),
        perturb_neurons(handle, {0: [1]}, mode="mean"),
    ):
        pass


def test_measure_perturbation_and_curve(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    fmt = _fmt(handle)
    prompt = _prompt(handle)
    train = load_split("sa", "en", "train", limit=8)
    dev = load_split("sa", "en", "dev", limit=8)
    test = load_split("sa", "en", "test", limit=6)
    pred = neuron_predictivity(handle, prompt, fmt, train, dev)
    plm = PromptedLM(handle, prompt)
    skill = select_skill_neurons(pred, 0.1)
    cfg = EvalConfig(batch_size=8)
    res = measure_perturbation(
        plm, fmt, test, skill, mode="zero", predictivity=pred, n_random=2, config=cfg
    )
    assert len(res.random) == 2 and res.random_seeds == [0, 1]
    assert res.least is not None and res.least_drop is not None
    assert res.skill_drop.value == pytest.approx(res.baseline.value - res.skill.value)
    assert res.random_summary is not None
    assert res.to_dict()["counts"] == {str(k): v for k, v in skill.counts().items()}
    zero_sigma = measure_perturbation(plm, fmt, test, skill, sigma=0.0, n_random=1, config=cfg)
    assert zero_sigma.skill_drop.value == 0.0
    curve = perturbation_curve(
        plm, fmt, test, pred, (0.05, 0.1), mode="mean", n_random=1, config=cfg
    )
    assert curve.ps == [0.05, 0.1] and len(curve.rows()) == 2
    assert {"p", "skill", "random_mean", "random_std", "least"} <= set(curve.rows()[0])


def test_cross_task_matrix(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    prompt = _prompt(handle)
    plm = PromptedLM(handle, prompt)
    setups = {
        t: EvalSetup(plm, _fmt(handle, t), load_split(t, "en", "dev", limit=4))
        for t in ("sa", "sts")
    }
    d = handle.geometry.d_ffn
    skills = {
        "sa": SkillNeurons({0: [0, 1]}, d, 0.02),
        "sts": SkillNeurons({1: [2, 3]}, d, 0.02),
    }
    out = cross_task_perturbation(skills, setups, mode="zero", config=EvalConfig(batch_size=4))
    assert out.scores.shape == (2, 2) and out.baselines.shape == (2,)
    np.testing.assert_allclose(out.drops, out.baselines[None] - out.scores)
    assert out.relative().shape == (2, 2)


# -- pruning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_prune_keep_all_is_identity(tiny_handles: dict[str, Any], name: str) -> None:
    handle = tiny_handles[name]
    d = handle.geometry.d_ffn
    layers = default_prune_layers(handle.geometry.n_layers)
    keep = {layer: np.arange(d) for layer in layers}
    means = {layer: np.ones(d) for layer in layers}  # nothing removed, nothing folded
    pruned = prune_ffn(handle, keep, means)
    batch = _sa_batch(handle)
    prompt = _prompt(handle)
    ref = PromptedLM(handle, prompt).forward(batch.input_ids, batch.attention_mask).hidden
    got = PromptedLM(pruned.handle, prompt).forward(batch.input_ids, batch.attention_mask).hidden
    assert torch.equal(ref, got)
    assert pruned.params_after == pruned.params_before + (
        0 if handle.adapter.family == "gpt2" else len(layers) * handle.geometry.d_model
    )  # Llama/Gemma gain a (zero) bias on the down-projection
    assert pruned.handle.model is not handle.model


@pytest.mark.parametrize("name", TINY)
def test_prune_folds_removed_mean_into_bias(tiny_handles: dict[str, Any], name: str) -> None:
    handle = tiny_handles[name]
    d = handle.geometry.d_ffn
    layer = 1
    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(d, size=d // 4, replace=False))
    mu = rng.normal(size=d).astype(np.float32)
    pruned = prune_ffn(handle, {layer: kept}, {layer: mu})
    ffn, layout = ffn_parts(handle, layer)
    down = getattr(ffn, layout.down)
    w_down = (down.weight.T if layout.conv1d else down.weight).detach().double()
    removed = np.setdiff1d(np.arange(d), kept)
    expected = w_down[:, removed] @ torch.tensor(mu[removed], dtype=torch.float64)
    torch.testing.assert_close(pruned.folded[layer].double(), expected, atol=1e-6, rtol=1e-6)
    new_ffn, new_layout = ffn_parts(pruned.handle, layer)
    new_down = getattr(new_ffn, new_layout.down)
    old_bias = down.bias.detach() if down.bias is not None else torch.zeros(w_down.shape[0])
    torch.testing.assert_close(new_down.bias.detach(), (old_bias.double() + expected).float())
    # the pruned model equals the unpruned one whose removed units sit at μ (all positions)
    batch = _sa_batch(handle)
    prompt = _prompt(handle)
    plm = PromptedLM(handle, prompt)
    with perturb_neurons(handle, {layer: removed}, mode="mean", values={layer: mu}):
        ref = plm.forward(batch.input_ids, batch.attention_mask).hidden
    got = PromptedLM(pruned.handle, prompt).forward(batch.input_ids, batch.attention_mask).hidden
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    kept_params = pruned.ffn_params_after
    per_neuron = 2 * handle.geometry.d_model + (1 if layout.conv1d else handle.geometry.d_model)
    assert pruned.ffn_params_before - kept_params == len(removed) * per_neuron - (
        0 if layout.conv1d else handle.geometry.d_model
    )


def test_keep_by_predictivity_and_random_keep(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    fmt = _fmt(handle)
    pred = neuron_predictivity(
        handle,
        None,
        fmt,
        load_split("sa", "en", "train", limit=6),
        load_split("sa", "en", "dev", limit=6),
    )
    skill = SkillNeurons({1: [5]}, pred.d_ffn)
    keep = keep_by_predictivity(pred, [1, 2], 0.05, skill=skill)
    assert keep[1][0] == 5 and len(keep[1]) == select_count(0.05, pred.d_ffn)
    order = np.argsort(-pred.row(2), kind="stable")
    assert keep[2].tolist() == order[: len(keep[2])].tolist()
    assert (
        random_keep(pred.d_ffn, [1], 0.05, seed=1)[1].tolist()
        == random_keep(pred.d_ffn, [1], 0.05, seed=1)[1].tolist()
    )
    means = pruning_means(pred, "tokens")
    assert means is not None and means[1].shape == (pred.d_ffn,)
    assert np.isfinite(means[1]).all()
    assert pruning_means(pred, "zero") is None
    pruned = prune_ffn(handle, keep, means)
    assert pruned.kept_fraction < 1
    batch = _sa_batch(handle)
    plm = PromptedLM(pruned.handle)
    assert forward_time(lambda: plm.forward(batch.input_ids, batch.attention_mask)) > 0


def test_reference_mode_gate_state_and_union_end_to_end(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    fmt = _fmt(handle, "nli")
    labels = fmt.task.labels
    subs = reference_subtasks(labels, "entailment", "contradiction", "neutral")
    train = load_split("nli", "en", "train", limit=12)
    dev = load_split("nli", "en", "dev", limit=12)
    pred = neuron_predictivity(
        handle, _prompt(handle), fmt, train, dev, subtasks=subs, state="gate", position="input_max"
    )
    assert pred.per_subtask.shape == (1, 2, handle.geometry.n_layers, handle.geometry.d_ffn)
    assert pred.subtasks == ("entailment-vs-contradiction", "neutral-vs-rest")
    union = select_skill_neurons(pred, 0.05, union=True)
    k = select_count(0.05, pred.d_ffn)
    assert all(len(v) == 2 * k and len(set(v.tolist())) == 2 * k for v in union.neurons.values())
    with pytest.raises(ValueError, match="state 'gate'"):
        pruning_means(pred, "tokens")
    plm = PromptedLM(handle, _prompt(handle))
    with pytest.raises(ValueError, match="gate"):
        measure_perturbation(plm, fmt, dev, union, mode="mean", predictivity=pred, n_random=0)


def test_p_zero_perturbs_nothing(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    fmt = _fmt(handle)
    pred = neuron_predictivity(
        handle,
        None,
        fmt,
        load_split("sa", "en", "train", limit=6),
        load_split("sa", "en", "dev", limit=6),
    )
    skill = select_skill_neurons(pred, 0.0)
    assert skill.total == 0
    res = measure_perturbation(
        PromptedLM(handle), fmt, load_split("sa", "en", "test", limit=4), skill, n_random=1
    )
    assert res.skill_drop.value == 0.0 and res.random_drop[0].value == 0.0


def test_pruned_model_evaluates(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.evaluation import evaluate

    handle = tiny_handles["tiny-gemma3"]
    fmt = _fmt(handle)
    keep = random_keep(handle.geometry.d_ffn, default_prune_layers(handle.geometry.n_layers), 0.25)
    pruned = prune_ffn(handle, keep)
    prompt = _prompt(handle)
    test = load_split("sa", "en", "test", limit=4)
    result = evaluate(PromptedLM(pruned.handle, prompt), fmt, test, EvalConfig(batch_size=4))
    assert result.n == 4 and 0 <= result.score <= 1
    assert pruned.summary()["kept_per_layer"] == {str(k): len(v) for k, v in keep.items()}
    assert all((t == 0).all() for t in pruned.folded.values())  # μ = 0: nothing folded
