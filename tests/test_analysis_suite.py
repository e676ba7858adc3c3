"""The analysis suite end to end on a tiny grid's prompts: every analysis writes its figures,
tables and summary; numbers in the tables agree with the statistics computed directly; the
layer-selection config is a valid experiment; CLI errors are one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from promptatlas.analysis.attention import attention_change
from promptatlas.analysis.capture import context_batches
from promptatlas.bank import ResultsDB
from promptatlas.cli import main
from promptatlas.formatting import TaskFormatter
from promptatlas.studies import atlas as suite
from promptatlas.studies.experiment import load_experiment
from promptatlas.studies.grid import load_grid, run_grid

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny transfer grid (v1 and v2, SA/NLI × EN/KO) with its analysis block."""
    tmp = tmp_path_factory.mktemp("grid")
    data = {
        "name": "g",
        "model": "tiny-llama",
        "out": str(tmp / "out"),
        "tasks": ["sa", "nli"],
        "langs": ["en", "ko"],
        "seeds": [1],
        "methods": {"v1": {"method": "v1"}, "v2": {"method": "v2"}},
        "train": {
            "steps": 3,
            "batch_size": 4,
            "lr": 0.1,
            "warmup": 0.0,
            "eval_every": 1,
            "dev_limit": 4,
        },
        "format": {"max_length": 24},
        "train_limit": 12,
        "dev_limit": 4,
        "test_limit": 4,
        "transfer": {
            "lang_length": 2,
            "task_length": 2,
            "language": {"steps": 2, "batch_size": 4},
            "text_limit": 40,
            "max_length": 24,
            "zero_shot": False,
        },
        "analysis": {
            "n_examples": 6,
            "batch_size": 4,
            "compression": {
                "tasks": ["sa"],
                "langs": ["en"],
                "train": {"steps": 2},
                "test_limit": 4,
                "train_limit": 8,
            },
            "skill": {
                "find": {"train_limit": 12, "dev_limit": 8, "batch_size": 4},
                "perturb": {"ps": [0.05, 0.1], "n_random": 2},
            },
            "indicators": {"test_limit": 4, "train_limit": 12, "dev_limit": 8},
            "compose": {
                "amp": {"steps": 2, "batch_size": 4},
                "ipt": {
                    "target": "nli-en",
                    "fit": {"steps": 5, "batch_size": 2},
                    "tune": {"steps": 2, "batch_size": 4},
                },
            },
        },
    }
    path = tmp / "g.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with ResultsDB(tmp / "db.sqlite") as db:
        run_grid(load_grid(path), db=db, progress=False, log=lambda _: None)
    return tmp / "out"


def test_grid_analysis_writes_every_figure(tiny_grid: Path) -> None:
    atlas = tiny_grid / "atlas"
    for name in (
        "attention/kl_per_layer.png",
        "attention/kl_heads.png",
        "attention/variability_sa-en.png",
        "attention/kl_per_layer_after_task_transfer.png",
        "attention/kl_per_layer_after_language_transfer.png",
        "attention/layer_selection.png",
        "neurons/on_scores_v1.png",
        "neurons/on_scores_v2.png",
        "neurons/on_transfer.png",
        "pca/pca_v1.png",
        "pca/pca_v2.png",
    ):
        assert (atlas / name).read_bytes()[:8] == PNG, name
    assert len(list((atlas / "geometry" / "isotropy").glob("*.png"))) == 24  # 8 + 16 moved
    assert len(list((atlas / "geometry" / "label_space").glob("*.png"))) == 24
    for folder in ("attention", "neurons", "geometry", "pca"):
        assert (atlas / folder / "summary.txt").read_text().strip()
    # The compression study ran: v1, v2, v2 on peak layers, v2 on trough layers (Table 3).
    with open(tiny_grid / "compression" / "results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["method"] for r in rows) == ["v1", "v2", "v2-peak", "v2-trough"]


def test_grid_analysis_skill_neurons_and_indicators(tiny_grid: Path) -> None:
    """``analysis.skill`` finds the first own prompt's skill neurons (SA-en, v1) and perturbs
    them on the grid's test examples; ``analysis.indicators`` correlates every indicator with
    the zero-shot transfer of every own-prompt pair."""
    skill = tiny_grid / "atlas" / "skill" / "sa-en"
    run = json.loads((skill / "find" / "run.json").read_text())
    assert Path(run["prompt"]["path"]).name == "sa-en-v1-s1"
    assert (skill / "find" / "by_layer.png").read_bytes()[:8] == PNG
    curve = json.loads((skill / "perturb" / "perturbation.json").read_text())
    assert curve["n_test"] == 4  # the grid's test_limit
    assert [r["p"] for r in curve["results"]] == [0.05, 0.1]
    assert all(len(r["random_seeds"]) == 2 for r in curve["results"])
    with open(tiny_grid / "atlas" / "indicators" / "pairs.csv", encoding="utf-8") as fh:
        pairs = {(r["source"], r["target"]): r for r in csv.DictReader(fh)}
    # Per method: SA <-> NLI in each language and each task EN <-> KO (8 ordered pairs); a
    # target whose own prompt scores 0 on the tiny model has no ratio and is left out.
    expected = {
        (f"{m}/s1/{a}", f"{m}/s1/{b}")
        for m in ("v1", "v2")
        for x, y in (
            ("sa-en", "nli-en"),
            ("sa-ko", "nli-ko"),
            ("sa-en", "sa-ko"),
            ("nli-en", "nli-ko"),
        )
        for a, b in ((x, y), (y, x))
    }
    assert set(pairs) <= expected and len(pairs) >= 12
    assert {p for p in expected if p[0].startswith("v1")} <= set(pairs)
    row = pairs[("v1/s1/nli-en", "v1/s1/sa-en")]
    assert row["kind"] == "cross_task"
    assert float(row["transfer"]) == pytest.approx(float(row["score"]) / float(row["own"]))
    assert pairs[("v1/s1/sa-en", "v1/s1/sa-ko")]["kind"] == "cross_language"
    ranked = json.loads((tiny_grid / "atlas" / "indicators" / "indicators.json").read_text())
    assert {"cos_flat", "on_all", "skill_overlap"} <= set(ranked["correlations"])


def test_grid_analysis_composition(tiny_grid: Path) -> None:
    """``analysis.compose``: AMP over the grid's own English v1 prompts (the v2 prompts of the
    same tasks are not sources) and IST of NLI-en in a subspace fitted on every own v1 prompt,
    each compared with the stored own and untrained scores on the same test examples."""
    from promptatlas.bank import read_metadata

    out = tiny_grid / "atlas" / "compose"
    result = json.loads((out / "composition.json").read_text())
    bank = tiny_grid / "bank"
    own = {k: read_metadata(bank / f"{k}-v1-s1").metrics for k in ("sa-en", "nli-en")}
    assert [c["key"] for c in result["amp"]] == ["sa-en", "nli-en"]
    for c in result["amp"]:
        stored = own[c["key"]]
        assert c["own"] == pytest.approx(stored["test"]["score"])
        assert c["untrained"] == pytest.approx(stored["untrained_test"]["score"])
        assert c["n"] == 4  # the grid's test_limit: the paired intervals use the same examples
        assert c["minus_own"]["value"] == pytest.approx(c["score"] - c["own"])
        assert c["minus_untrained"]["value"] == pytest.approx(c["score"] - c["untrained"])
        assert c["minus_own"]["low"] <= c["minus_own"]["value"] <= c["minus_own"]["high"]
    assert result["attention_keys"] == ["nli-en", "sa-en"]
    assert all(sum(row) == pytest.approx(1.0) for row in result["attention"])
    composed = sorted((out / "amp-en" / "prompts").iterdir())
    assert [p.name for p in composed] == ["nli-en-amp-s42", "sa-en-amp-s42"]
    assert {read_metadata(p).prompt["method"] for p in composed} == {"v1"}
    ipt = result["ipt"]
    assert result["ipt_fitted"] == ["sa-en", "nli-en", "sa-ko", "nli-ko"]
    assert result["ipt_seen"] is True and result["ipt_dim"] == 2
    assert ipt["key"] == "nli-en" and ipt["own"] == pytest.approx(own["nli-en"]["test"]["score"])
    assert ipt["minus_own"]["value"] == pytest.approx(ipt["score"] - ipt["own"])
    if ipt["own"]:
        assert ipt["recovery"] == pytest.approx(ipt["score"] / ipt["own"])
    tuned = read_metadata(out / "ipt-d2" / "nli-en-ist")
    assert tuned.metrics["test"]["score"] == pytest.approx(ipt["score"])
    assert (out / "ipt-d2" / "subspace" / "subspace.safetensors").is_file()
    text = (out / "composition.md").read_text()
    assert "## AMP (en: attention over nli-en, sa-en)" in text and "## IPT (d_I = 2" in text


@pytest.mark.parametrize(
    ("compose", "message"),
    [
        ({"lang": "ko"}, r"AMP needs two or more own prompts of one language.*\['sa'\] in 'ko'"),
        ({"tasks": ["sa", "tc"]}, r"analysis.compose.tasks: the grid trains no own en prompt"),
        ({"amp": None, "ipt": {"target": "tc-en"}}, r"ipt.target: 'tc-en' is not an own prompt"),
        ({"ipt": {"unseen": True, "target": "sa-en"}, "lang": "en"}, r"the fit needs two or more"),
        ({"amp": {"stepz": 3}}, r"stepz"),
    ],
)
def test_composition_analysis_fails_at_load(
    tmp_path: Path, compose: dict[str, Any], message: str
) -> None:
    data = {
        "name": "g",
        "model": "tiny-llama",
        "out": str(tmp_path / "out"),
        "tasks": ["sa", "nli"],
        "langs": ["en", "ko"],
        "skip": ["nli-ko"],
        "methods": {"v1": {"method": "v1"}},
        "transfer": {},
        "analysis": {"compose": compose},
    }
    if "unseen" in str(compose):
        data["skip"] = ["nli-ko", "sa-ko"]  # sa-en, nli-en: one left once sa-en is unseen
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_grid(path)


def test_skill_analysis_of_an_untrained_prompt_fails_at_load(tmp_path: Path) -> None:
    data = {
        "name": "g",
        "model": "tiny-llama",
        "out": str(tmp_path / "out"),
        "tasks": ["sa"],
        "langs": ["en"],
        "methods": {"v1": {"method": "v1"}},
        "transfer": {},
        "analysis": {"skill": {"task": "nli"}},
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"analysis.skill: the grid trains no own nli-en"):
        load_grid(path)


def test_kl_table_matches_direct_computation(tiny_grid: Path) -> None:
    handle, entries = suite.load_bank([tiny_grid / "bank"])
    entry = next(e for e in entries if e.name == "sa-en-v2-s1")
    fmt = TaskFormatter(handle.tokenizer, entry.variant(), entry.format)
    examples = suite._Inputs(suite.AnalysisConfig(n_examples=6)).examples("sa", "en")
    direct = attention_change(handle, entry.prompt, context_batches(fmt, examples, batch_size=4))
    data = json.loads((tiny_grid / "atlas" / "attention" / "attention.json").read_text())
    table = torch.tensor(data["kl_per_layer"]["sa-en-v2-s1"])
    assert torch.allclose(table, direct.per_layer.float(), atol=1e-6)
    assert (table > 0).all()  # a trained prompt changes attention in every layer


def test_layer_selection_config_is_an_experiment(tiny_grid: Path) -> None:
    layers = json.loads((tiny_grid / "atlas" / "attention" / "layers.json").read_text())
    sel = layers["selection"]
    exp = load_experiment(tiny_grid / "compression.yaml")
    assert exp.methods["v2-peak"].layers == tuple(sel["peak"])
    assert exp.methods["v2-trough"].layers == tuple(sel["trough"])
    assert 0 in sel["peak"] and 0 in sel["trough"]  # the first layer is always kept


def test_on_transfer_table(tiny_grid: Path) -> None:
    data = json.loads((tiny_grid / "atlas" / "neurons" / "neurons.json").read_text())
    assert {t["kind"] for t in data["transfer"]} == {"task", "language"}
    for method in ("v1", "v2"):
        curve = data["methods"][method]["mean_binary_per_layer"]
        assert all(0.0 <= v <= 1.0 for v in curve)


def test_analyze_cli(tiny_grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pca"
    assert main(["analyze", "pca", "--prompts", str(tiny_grid / "bank"), "--out", str(out)]) == 0
    assert (out / "pca_v2.png").read_bytes()[:8] == PNG
    assert "pca_v2" in (out / "index.html").read_text(encoding="utf-8")  # the atlas page
    code = main(
        ["analyze", "layers", "--from", str(tmp_path / "none"), "--out", str(tmp_path / "c.yaml")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "run `promptatlas analyze attention" in err and "Traceback" not in err
    code = main(["analyze", "neurons", "--prompts", str(tmp_path / "missing"), "--out", str(out)])
    assert code == 2 and "neither a prompt directory nor a folder" in capsys.readouterr().err


def test_bank_of_two_models_is_refused(
    tiny_grid: Path, tmp_path: Path, tiny_handles: dict[str, Any]
) -> None:
    from promptatlas.bank import save_prompt
    from promptatlas.prompts import PromptConfig, SoftPrompt

    other = tiny_handles["tiny-gpt2"]
    p = SoftPrompt(PromptConfig(length=2), other.geometry)
    save_prompt(tmp_path / "gpt2-prompt", p, other, task="sa", lang="en")
    with pytest.raises(ValueError, match="several models"):
        suite.load_bank([tiny_grid / "bank", tmp_path / "gpt2-prompt"])
