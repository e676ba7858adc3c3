"""The atlas writers on hand-made result objects: no model, no training, no bank. Each writer
puts its tables, figures, JSON and summary in the folder it is given and returns the JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from promptatlas.analysis.attention import (
    AttentionChangeResult,
    AttentionVariabilityResult,
    correlate_heads,
)
from promptatlas.analysis.geometry import IsotropyResult, LabelSpaceResult
from promptatlas.analysis.neurons import on_scores
from promptatlas.analysis.pca import pca_points
from promptatlas.studies.atlas import (
    AnalysisConfig,
    AttentionAtlas,
    GeometryAtlas,
    NeuronAtlas,
    OnTransfer,
    PcaAtlas,
    PromptInfo,
    write_attention,
    write_geometry,
    write_neurons,
    write_pca,
)

N_LAYERS, HEADS = 6, 2
PROMPTS = [
    PromptInfo("sa-en-v2", "sa", "en", "v2", Path("bank/sa-en-v2")),
    PromptInfo("nli-en-v2", "nli", "en", "v2", Path("bank/nli-en-v2"), pair_input=True),
    PromptInfo(
        "nli-to-sa-en-v2",
        "sa",
        "en",
        "v2",
        Path("transfer/nli-to-sa-en-v2"),
        transfer_kind="task",
        transferred=True,
    ),
]
INPUTS = {"sa-en-v2": "sa-en", "nli-en-v2": "nli-en", "nli-to-sa-en-v2": "sa-en"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _attention() -> AttentionAtlas:
    layers = list(range(N_LAYERS))
    variability = {
        group: AttentionVariabilityResult(
            layers, torch.rand(N_LAYERS, HEADS, generator=_gen(i)), n_examples=8
        )
        for i, group in enumerate(("sa-en", "nli-en"))
    }
    kl = {
        p.name: AttentionChangeResult(
            layers, torch.rand(N_LAYERS, HEADS, generator=_gen(10 + i)), n_examples=8
        )
        for i, p in enumerate(PROMPTS)
    }
    correlation = {
        name: correlate_heads(variability[INPUTS[name]].variability, r.kl, groups=2)
        for name, r in kl.items()
    }
    return AttentionAtlas(
        "tiny", N_LAYERS, AnalysisConfig(), PROMPTS, variability, kl, correlation, INPUTS
    )


def test_write_attention(tmp_path: Path) -> None:
    result = _attention()
    data = write_attention(result, tmp_path, log=lambda _: None)
    for name in (
        "variability.csv",
        "kl_heads.csv",
        "kl_per_layer.csv",
        "correlation.csv",
        "variability_sa-en.png",
        "variability_nli-en.png",
        "kl_per_layer.png",
        "kl_heads.png",
        "kl_per_layer_after_task_transfer.png",
        "correlation/nli-to-sa-en-v2.png",
        "attention.json",
        "summary.txt",
    ):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "kl_per_layer_after_language_transfer.png").exists()
    assert json.loads((tmp_path / "attention.json").read_text()) == json.loads(json.dumps(data))
    assert data["prompts"]["nli-to-sa-en-v2"]["transfer"] == "task"
    assert set(data["mean_kl_per_layer"]) == {"v2"}  # transferred prompts are not in the mean
    mean = data["mean_kl_per_layer"]["v2"]
    plain = [result.kl[n].per_layer for n in ("sa-en-v2", "nli-en-v2")]
    assert np.allclose(mean, (plain[0] + plain[1]).numpy() / 2)
    per_layer = _rows(tmp_path / "kl_per_layer.csv")
    assert [r["prompt"] for r in per_layer] == [p.name for p in PROMPTS]
    assert list(per_layer[0])[-1] == f"L{N_LAYERS - 1}"
    assert len(_rows(tmp_path / "kl_heads.csv")) == len(PROMPTS) * N_LAYERS * HEADS
    scopes = {r["scope"] for r in _rows(tmp_path / "correlation.csv")}
    assert scopes == {"all", "layer", "group"}
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("Attention analysis of 3 prompts on tiny (6 layers).")


def test_write_neurons(tmp_path: Path) -> None:
    states = {p.name: torch.randn(N_LAYERS, 16, generator=_gen(i)) for i, p in enumerate(PROMPTS)}
    scores = on_scores({n: states[n] for n in ("sa-en-v2", "nli-en-v2")})
    moved = OnTransfer("nli-to-sa-en-v2", "nli-en-v2", "sa-en-v2", "task", 0.4, 0.6, "nli→sa")
    data = write_neurons(
        NeuronAtlas("tiny", PROMPTS, {"v2": scores}, [moved]), tmp_path, log=lambda _: None
    )
    for name in ("on_scores_v2.png", "on_transfer.png", "on_pairs.csv", "on_per_layer.csv"):
        assert (tmp_path / name).is_file(), name
    assert data["transfer"] == [
        {
            "prompt": "nli-to-sa-en-v2",
            "source": "nli-en-v2",
            "baseline": "sa-en-v2",
            "kind": "task",
            "on_last_without": 0.4,
            "on_last_with": 0.6,
        }
    ]
    assert data["methods"]["v2"]["prompts"] == ["sa-en-v2", "nli-en-v2"]
    assert len(_rows(tmp_path / "on_pairs.csv")) == N_LAYERS  # one pair per layer
    assert len(_rows(tmp_path / "on_per_layer.csv")) == 2 * N_LAYERS  # binary and raw
    summary = (tmp_path / "summary.txt").read_text()
    assert "higher than without in 1 of 1" in summary


def _runs(names: tuple[str, ...], seed: int) -> dict[str, torch.Tensor]:
    return {n: torch.rand(N_LAYERS + 1, generator=_gen(seed + i)) for i, n in enumerate(names)}


def test_write_geometry(tmp_path: Path) -> None:
    layers = list(range(N_LAYERS + 1))
    isotropy, label_space = {}, {}
    for i, p in enumerate(PROMPTS):
        runs = (
            ("base", "before transfer", "after transfer") if p.transferred else ("base", "prompted")
        )
        isotropy[p.name] = IsotropyResult(
            layers, _runs(runs, i), _runs(runs, i + 1), _runs(runs, i + 2), _runs(runs, i + 3),
            16, 32,
        )  # fmt: skip
        if p.task == "sa":  # a classification task: label space too
            label_space[p.name] = LabelSpaceResult(
                layers, _runs(runs, i + 4), _runs(runs, i + 5), 8
            )
    data = write_geometry(
        GeometryAtlas("tiny", PROMPTS, isotropy, label_space), tmp_path, log=lambda _: None
    )
    for p in PROMPTS:
        assert (tmp_path / "isotropy" / f"{p.name}.png").is_file()
    assert (tmp_path / "label_space" / "sa-en-v2.png").is_file()
    assert not (tmp_path / "label_space" / "nli-en-v2.png").exists()
    assert set(data["label_space"]) == {"sa-en-v2", "nli-to-sa-en-v2"}
    assert set(data["isotropy"]["nli-to-sa-en-v2"]) == {"base", "before transfer", "after transfer"}
    assert len(_rows(tmp_path / "isotropy.csv")) == (2 * 2 + 3) * (N_LAYERS + 1)
    summary = (tmp_path / "summary.txt").read_text()
    assert "v2 prompted: isotropy" in summary
    assert "transfer: last-layer label gap after > before in" in summary


def test_write_pca(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points = {p.name: rng.normal(size=(4, 8)) for p in PROMPTS}
    panels = [pca_points(points, layer=layer) for layer in range(2)]
    data = write_pca(PcaAtlas(PROMPTS, {"v2": panels}), tmp_path, log=lambda _: None)
    assert (tmp_path / "pca_v2.png").is_file()
    assert [d["layer"] for d in data["v2"]] == [0, 1]
    rows = _rows(tmp_path / "pca.csv")
    assert len(rows) == 2 * len(PROMPTS) * 4
    assert (tmp_path / "summary.txt").read_text().startswith("PCA of 3 prompts.")
