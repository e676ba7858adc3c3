"""Transferability indicators: hand-computed values (spec §B), correlation with transfer,
suggest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from promptatlas.analysis.indicators import (
    correlate_indicators,
    embedding_similarity,
    indicator_correlation,
    masked_on,
    on_indicators,
    pairwise_indicators,
    probe_prompt_indicators,
    probe_skill_indicators,
    prompt_matrix,
    prompt_states,
    rank_indicators,
    spearman,
    suggest,
    transfer_ratios,
)
from promptatlas.analysis.neurons import activation_states
from promptatlas.analysis.skill import neuron_predictivity
from promptatlas.formatting import TaskFormatter
from promptatlas.prompts import PromptConfig, SegmentConfig, SoftPrompt
from promptatlas.tasks import get_task, load_split

I2 = torch.eye(2)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("cos_flat", 1.0),
        ("cos_tok", 0.5),
        ("cos_avg", 1.0),
        ("euc_flat", 1.0),
        ("euc_tok", 1 / (1 + math.sqrt(2) / 2)),
    ],
)
def test_embedding_indicators_on_identity(kind: str, expected: float) -> None:
    assert embedding_similarity(I2, I2.clone(), kind) == pytest.approx(expected)


def test_euc_tok_value() -> None:
    assert embedding_similarity(I2, I2, "euc_tok") == pytest.approx(0.5858, abs=1e-4)


def test_embedding_indicators_v2_average_layers_and_separate_kv() -> None:
    p = torch.stack([I2, I2])  # (L=2, k=2, d=2)
    q = torch.stack([I2, -I2])
    assert embedding_similarity(p, q, "cos_flat") == pytest.approx(0.0)  # (1 + -1) / 2
    sep = torch.stack([torch.stack([I2, I2])] * 3)  # (L=3, 2, k=2, d=2)
    assert prompt_matrix(sep).shape == (3, 4, 2)  # [K; V]
    with pytest.raises(ValueError, match="v1 prompt with a v2"):
        embedding_similarity(I2, p)


def test_prompt_matrix_takes_the_task_segment(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gpt2"]
    cfg = PromptConfig(method="v1", segments=(SegmentConfig("lang", 2), SegmentConfig("task", 3)))
    prompt = SoftPrompt(cfg, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    assert prompt_matrix(prompt).shape == (3, handle.geometry.d_model)
    assert prompt_matrix(prompt, None).shape == (5, handle.geometry.d_model)


def test_on_hand_computed_and_windows() -> None:
    a = torch.tensor([1.0, -1.0, 2.0, 0.0])
    b = torch.tensor([3.0, 2.0, -1.0, 0.0])
    assert on_indicators(a, b)["on_l0"] == pytest.approx(0.5)
    states_a = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    states_b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    out = on_indicators(states_a, states_b, window=3)
    assert set(out) == {
        "on_l0",
        "on_l1",
        "on_l2",
        "on_l3",
        "on_w0-2",
        "on_w3-3",
        "on_all",
        "on_mean",
    }
    assert out["on_l2"] == 0.0  # an all-off state
    # window 0-2: on = [1,0,1,1,0,0] vs all ones (6): 3 / (sqrt(3) sqrt(6))
    assert out["on_w0-2"] == pytest.approx(3 / math.sqrt(18))
    assert out["on_all"] == pytest.approx(4 / math.sqrt(4 * 8))
    assert out["on_mean"] == pytest.approx(np.mean([out[f"on_l{i}"] for i in range(4)]))
    mask = np.array([[True, False]] * 4)
    assert masked_on(states_a, states_b, mask) == pytest.approx(3 / math.sqrt(12))


def test_spearman_three_rows() -> None:
    rho, p = spearman([0.1, 0.2, 0.3], [1, 3, 2])
    assert rho == pytest.approx(0.5) and 0 < p <= 1
    assert math.isnan(spearman([1, 2], [1, 2])[0])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])[0])


def test_transfer_ratios_and_correlation_by_hand() -> None:
    scores = {
        ("a", "a"): 0.8,
        ("b", "b"): 0.5,
        ("c", "c"): 1.0,
        ("d", "d"): 0.4,
        ("a", "d"): 0.2,
        ("b", "d"): 0.4,
        ("c", "d"): 0.3,
        ("a", "c"): 0.5,
        ("b", "c"): 0.9,
        ("d", "c"): 0.1,
    }
    t = transfer_ratios(scores)
    assert t[("a", "d")] == pytest.approx(0.5) and ("a", "a") not in t
    indicator = {
        ("a", "d"): 0.1,
        ("b", "d"): 0.3,
        ("c", "d"): 0.2,  # ρ_d = 1
        ("a", "c"): 0.3,
        ("b", "c"): 0.2,
        ("d", "c"): 0.1,  # transfer .5, .9, .1 → ranks 2,3,1 vs 3,2,1 → ρ_c = .5
    }
    corr = indicator_correlation(indicator, t, name="x")
    assert corr.per_target["d"] == pytest.approx(1.0)
    assert corr.per_target["c"] == pytest.approx(0.5)
    assert corr.mean == pytest.approx(0.75) and corr.std == pytest.approx(np.std([1, 0.5], ddof=1))
    assert corr.n_pairs == 6 and corr.skipped == 0
    pooled, _ = spearman([indicator[k] for k in t], [t[k] for k in t])
    assert corr.pooled == pytest.approx(pooled)
    # NaN indicator values are skipped and counted
    nan = dict(indicator)
    nan[("a", "d")] = float("nan")
    with_nan = indicator_correlation(nan, t)
    assert with_nan.skipped == 1 and math.isnan(with_nan.per_target["d"])  # 2 sources left
    both = correlate_indicators(
        {"good": indicator, "bad": {k: -v for k, v in indicator.items()}}, t
    )
    assert rank_indicators(both) == ["good", "bad"]
    assert both["good"].to_dict()["n_targets"] == 2


def test_suggest_ranks_sources() -> None:
    out = suggest({"a": 0.2, "b": 0.9, "c": float("nan"), "d": 0.5}, indicator="on_all", top=2)
    assert [(s.source, s.rank) for s in out] == [("b", 1), ("d", 2)]
    assert suggest({"a": 1.0, "b": 0.5}, exclude=["a"])[0].source == "b"


def test_prompt_states_match_activation_states_and_gate_on_gpt2(
    tiny_handles: dict[str, Any],
) -> None:
    handle = tiny_handles["tiny-gpt2"]
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    prompts: dict[str, SoftPrompt | None] = {}
    for seed in range(2):
        p = SoftPrompt(PromptConfig(method="v1", length=3), handle.geometry)
        p.initialise(handle, generator=torch.Generator().manual_seed(seed))
        prompts[f"p{seed}"] = p
    down = prompt_states(handle, prompts, fmt)
    ref = activation_states(handle, prompts, fmt)
    for name in prompts:
        torch.testing.assert_close(down[name], ref[name])
    gate = prompt_states(handle, prompts, fmt, state="gate")
    on_down = on_indicators(down["p0"], down["p1"])
    on_gate = on_indicators(gate["p0"], gate["p1"])
    assert on_down == on_gate  # GELU(x) > 0 ⇔ x > 0


def test_pairwise_indicators_and_probe(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    tasks = ("sa", "nli")
    prompts = {}
    preds = {}
    for i, t in enumerate(tasks):
        p = SoftPrompt(PromptConfig(method="v1", length=3), handle.geometry)
        p.initialise(handle, generator=torch.Generator().manual_seed(i))
        prompts[t] = p
        fmt = TaskFormatter(handle.tokenizer, get_task(t, "en"))
        preds[t] = neuron_predictivity(
            handle,
            p,
            fmt,
            load_split(t, "en", "train", limit=6),
            load_split(t, "en", "dev", limit=6),
        )
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    states = prompt_states(handle, prompts, fmt)
    out = pairwise_indicators(
        list(tasks), prompts=prompts, states=states, predictivities=preds, p=0.1
    )
    expected = {"cos_flat", "cos_tok", "euc_tok", "on_all", "on_l0", "skill_overlap", "skill_corr"}
    assert expected <= set(out) and "skill_on" in out
    assert set(out["cos_flat"]) == {("sa", "nli"), ("nli", "sa")}
    assert out["cos_flat"][("sa", "nli")] == pytest.approx(out["cos_flat"][("nli", "sa")])
    probe = probe_skill_indicators(
        handle,
        TaskFormatter(handle.tokenizer, get_task("sa", "ko")),
        load_split("sa", "ko", "train", limit=8),
        load_split("sa", "ko", "dev", limit=8),
        {t: (prompts[t], preds[t]) for t in tasks},
        p=0.1,
    )
    assert set(probe) == {"skill_overlap", "skill_corr"} and set(probe["skill_corr"]) == set(tasks)
    assert all(0 <= v <= 1 for v in probe["skill_overlap"].values())
    ranked = suggest(probe["skill_corr"], indicator="skill_corr", top=1)
    assert len(ranked) == 1


def test_probe_prompt_indicators(tiny_handles: dict[str, Any]) -> None:
    handle = tiny_handles["tiny-gemma3"]
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    prompts = []
    for seed in range(3):
        p = SoftPrompt(PromptConfig(method="v1", length=3), handle.geometry)
        p.initialise(handle, generator=torch.Generator().manual_seed(seed))
        prompts.append(p)
    out = probe_prompt_indicators(
        handle, prompts[0], {"same": prompts[0], "other": prompts[1]}, fmt
    )
    assert out["cos_flat"]["same"] == pytest.approx(1.0)
    assert out["on_all"]["same"] == pytest.approx(1.0)
    assert suggest(out["on_all"], top=1)[0].source == "same"
