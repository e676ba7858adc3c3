"""The skill-neuron and indicator commands end to end on tiny models: `neurons find / perturb /
prune / overlap`, `indicators` over a grid's cells table, `suggest` over a bank; their files,
run records and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.cli import main
from promptatlas.runs.neurons import parse_fractions, parse_layers
from promptatlas.runs.transfer import zero_shot
from promptatlas.studies.skill import grid_transfer, zero_shot_pairs

PNG = b"\x89PNG\r\n\x1a\n"
MODEL = "tiny-llama"  # a gated FFN (gate/up/down)


def _train(out: Path, task: str, lang: str) -> Path:
    argv = ["train", "--model", MODEL, "--task", task, "--lang", lang, "--method", "v1",
            "--steps", "1", "--train-limit", "8", "--test-limit", "4", "--length", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("skill-bank") / "bank"
    for task in ("sa", "nli"):
        for lang in ("en", "ko"):
            _train(root / f"{task}-{lang}", task, lang)
    return root


@pytest.fixture(scope="module")
def found(bank: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("skill-find")
    dirs = {}
    for name in ("sa-en", "sa-ko"):
        d = out / name
        argv = ["neurons", "find", "--prompt", str(bank / name), "--out", str(d), "--train-limit",
                "16", "--dev-limit", "16", "--p", "0.05,0.1", "--quiet"]  # fmt: skip
        assert main(argv) == 0
        dirs[name] = d
    return dirs


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptatlas: error:") and err.count("\n") == 1, err
    assert needle in err, err


def test_find_writes_the_predictivity_and_the_run_record(found: dict[str, Path]) -> None:
    d = found["sa-en"]
    for name in ("by_layer.png", "best_neuron.png"):
        assert (d / name).read_bytes()[:8] == PNG
    for name in ("predictivity.npz", "by_layer.csv", "skill_5pct.json", "skill_10pct.csv"):
        assert (d / name).exists(), name
    meta = json.loads((d / "predictivity.json").read_text())
    assert meta["summary"]["n_train"] == 16 and meta["summary"]["n_dev"] == 16
    assert 0.5 <= meta["summary"]["best"]["predictivity"] <= 1.0
    run = json.loads((d / "run.json").read_text())
    assert run["kind"] == "neurons-find"
    assert run["config"]["train_limit"] == 16 and run["config"]["state"] == "down_input"
    assert run["resolved_precision"] in ("fp32", "bf16")
    assert "cpu" in run["hardware"] and "torch" in run["versions"]
    assert run["prompt"]["task"] == "sa" and run["prompt"]["lang"] == "en"


def test_perturb_compares_skill_random_and_least(
    bank: Path, found: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "perturb"
    argv = ["neurons", "perturb", "--prompt", str(bank / "sa-en"), "--skill", str(found["sa-en"]),
            "--mode", "zero", "--top", "5%,10%", "--random-seeds", "2", "--test-limit", "6",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with open(out / "perturbation.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["p"]) for r in rows] == [0.05, 0.1]
    data = json.loads((out / "perturbation.json").read_text())
    assert data["n_test"] == 6
    for r in data["results"]:
        assert r["mode"] == "zero" and r["random_seeds"] == [0, 1]
        assert r["least"] is not None
    assert (out / "perturbation.png").read_bytes()[:8] == PNG
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["n_random"] == 2 and run["config"]["ps"] == [0.05, 0.1]


def test_prune_reports_params_score_and_time(
    bank: Path, found: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "prune"
    argv = ["neurons", "prune", "--prompt", str(bank / "sa-en"), "--skill", str(found["sa-en"]),
            "--layers", "1-2", "--keep", "0.25", "--test-limit", "6", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((out / "pruning.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["unpruned", "skill", "random"]
    assert rows[1]["params"] == rows[2]["params"] < rows[0]["params"]
    assert rows[1]["layers"] == "1-2" and rows[0]["time_ratio"] == 1.0
    assert all(r["time_ratio"] > 0 for r in rows)
    assert (out / "pruning.csv").exists()


def test_overlap_of_a_folder_with_itself_is_one(found: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ov"
    argv = ["neurons", "overlap", "--skill", str(found["sa-en"]), str(found["sa-ko"]),
            "--p", "0.05", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "overlap.json").read_text())
    assert data["names"] == ["sa-en", "sa-ko"]
    assert data["overlap"][0][0] == 1.0 and data["correlation"][1][1] == 1.0
    assert 0.0 <= data["overlap"][0][1] <= 1.0
    assert (out / "overlap.png").read_bytes()[:8] == PNG


def test_neuron_errors_are_one_line(
    bank: Path, found: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = str(tmp_path / "x")
    _one_line(
        capsys,
        [
            "neurons",
            "perturb",
            "--prompt",
            str(bank / "sa-en"),
            "--skill",
            str(tmp_path),
            "--out",
            x,
        ],
        "neurons find",
    )
    _one_line(
        capsys,
        ["neurons", "find", "--prompt", str(tmp_path / "missing"), "--out", x],
        "not a prompt directory",
    )
    _one_line(
        capsys,
        [
            "neurons",
            "perturb",
            "--prompt",
            str(bank / "sa-en"),
            "--skill",
            str(found["sa-en"]),
            "--top",
            "0.5,7",
            "--out",
            x,
        ],
        "not in (0, 1]",
    )
    _one_line(
        capsys,
        ["neurons", "find", "--prompt", str(bank / "sa-en"), "--layers", "2-40", "--out", x],
        "do not exist",
    )
    _one_line(
        capsys, ["neurons", "overlap", "--skill", str(found["sa-en"]), "--out", x], "at least two"
    )


def test_lora_counterpart_of_a_prompt_for_perturb_and_find(
    bank: Path, found: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lora = tmp_path / "lora"
    argv = ["neurons", "lora", "--prompt", str(bank / "sa-en"), "--out", str(lora), "--steps",
            "20", "--lr", "0.01", "--eval-every", "10", "--r", "2", "--train-limit", "16",
            "--test-limit", "8", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    rec = json.loads((lora / "lora.json").read_text())
    assert rec["task"] == "sa" and rec["lang"] == "en" and rec["model"] == MODEL
    assert rec["lora"]["r"] == 2 and rec["train"]["steps"] == 20 and rec["lr"] == 0.01
    assert all(t.rsplit(".", 1)[1] in ("q_proj", "k_proj", "v_proj", "o_proj")
               for t in rec["targets"])  # fmt: skip
    assert rec["untuned"]["n"] == 8 and rec["test"]["n"] == 8 and "gain" in rec["test"]
    assert rec["best_step"] in (10, 20)
    from safetensors.torch import load_file

    tensors = load_file(str(lora / "lora.safetensors"))
    trained_b = [t for k, t in tensors.items() if k.endswith("lora_B.default.weight")]
    assert trained_b and any(t.abs().sum() > 0 for t in trained_b)
    # the LoRA folder stands in for a prompt: perturb the SA-en prompt's skill neurons in it
    out = tmp_path / "perturb"
    argv = ["neurons", "perturb", "--prompt", str(lora), "--skill", str(found["sa-en"]),
            "--top", "0.1", "--random-seeds", "2", "--test-limit", "8", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["prompt"]["method"] == "lora" and run["prompt"]["task"] == "sa"
    data = json.loads((out / "perturbation.json").read_text())
    # unperturbed = the tuned model's own test score (no prompt), on the same 8 examples
    assert data["results"][0]["baseline"]["value"] == pytest.approx(rec["test"]["score"])
    # evaluation options left undecided in the record (as older prompts store them) still load
    from promptatlas.runs.neurons import load_source

    rec["eval"]["length_normalise"] = None
    (lora / "lora.json").write_text(json.dumps(rec))
    assert load_source(lora).eval_config.length_normalise is None
    matrix = ["neurons", "matrix", "--prompts", str(bank / "sa-en"), str(lora), "--skill",
              str(found["sa-en"]), "--out", str(tmp_path / "m")]  # fmt: skip
    _one_line(capsys, matrix, "is a LoRA folder")
    assert main(["neurons", "find", "--prompt", str(lora), "--out", str(tmp_path / "f"),
                 "--train-limit", "16", "--dev-limit", "16", "--quiet"]) == 0  # fmt: skip
    _one_line(
        capsys,
        ["neurons", "lora", "--prompt", str(lora), "--out", str(tmp_path / "x"), "--steps", "1"],
        "is a LoRA folder",
    )


def _cells(bank: Path, path: Path) -> Path:
    """A grid's cells table (the columns `promptatlas grid` writes) over the tiny bank."""
    fields = ["kind", "method", "seed", "source_task", "source_lang", "task", "lang", "score",
              "baseline", "relative", "prompt_dir"]  # fmt: skip
    rows = []
    for name in ("sa-en", "sa-ko", "nli-en", "nli-ko"):
        task, lang = name.split("-")
        rows.append(["base", "v1", 1, "", "", task, lang, 0.6, "", "", str(bank / name)])
    transfer = [
        ("task", "nli", "en", "sa", "en", 1.1),
        ("task", "sa", "en", "nli", "en", 0.9),
        ("task", "nli", "ko", "sa", "ko", 1.0),
        ("task", "sa", "ko", "nli", "ko", 0.95),
        ("language", "sa", "en", "sa", "ko", 1.2),
        ("language", "sa", "ko", "sa", "en", 0.8),
        ("language", "nli", "en", "nli", "ko", 1.05),
        ("language", "nli", "ko", "nli", "en", 0.85),
    ]
    for kind, st, sl, t, lang, rel in transfer:
        rows.append([kind, "v1", 1, st, sl, t, lang, 0.6 * rel, 0.6, rel, ""])
    path.mkdir(parents=True)
    with open(path / "cells.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    return path


def test_grid_transfer_reads_the_cells_table(bank: Path, tmp_path: Path) -> None:
    _cells(bank, tmp_path / "grid" / "report")
    g = grid_transfer(tmp_path / "grid")
    assert len(g.transfer) == 8 and len(g.prompts) == 4
    assert g.transfer[("v1/s1/nli-en", "v1/s1/sa-en")] == pytest.approx(1.1)
    assert g.kinds[("v1/s1/sa-en", "v1/s1/sa-ko")] == "cross_language"


def test_indicators_correlate_each_indicator_with_transfer(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cells(bank, tmp_path / "grid" / "report")
    out = tmp_path / "ind"
    argv = ["indicators", "--grid", str(tmp_path / "grid"), "--out", str(out), "--transfer",
            "init", "--train-limit", "16", "--dev-limit", "16", "--p", "0.05"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "indicators.json").read_text())
    assert data["transfer_measure"] == "init"
    assert data["transfer"]["v1/s1/nli-en>v1/s1/sa-en"] == pytest.approx(1.1)
    for name in ("cos_flat", "cos_tok", "on_all", "on_l0", "skill_overlap", "skill_corr"):
        assert name in data["correlations"], name
        assert data["correlations"][name]["n_pairs"] + data["correlations"][name]["skipped"] == 8
    assert set(data["ranking"]) == set(data["correlations"])
    with open(out / "pairs.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert (out / "indicators.png").read_bytes()[:8] == PNG
    assert (out / "scatter.png").read_bytes()[:8] == PNG
    _one_line(
        capsys, ["indicators", "--grid", str(tmp_path), "--out", str(out)], "report/cells.csv"
    )


def test_zero_shot_pairs_are_cross_task_within_a_language_and_cross_language_per_task() -> None:
    nodes = ["v1/s1/sa-en", "v1/s1/nli-en", "v1/s1/sa-ko", "v1/s2/sa-en"]
    assert zero_shot_pairs(nodes) == {
        ("v1/s1/sa-en", "v1/s1/nli-en"): "cross_task",
        ("v1/s1/nli-en", "v1/s1/sa-en"): "cross_task",
        ("v1/s1/sa-en", "v1/s1/sa-ko"): "cross_language",
        ("v1/s1/sa-ko", "v1/s1/sa-en"): "cross_language",
    }  # nli-en × sa-ko share neither; another seed is another group


def test_grid_transfer_zero_shot_needs_only_the_own_prompts(bank: Path, tmp_path: Path) -> None:
    _cells(bank, tmp_path / "grid" / "report")
    g = grid_transfer(tmp_path / "grid", measure="zero-shot")
    assert g.transfer == {} and len(g.kinds) == 8 and len(g.prompts) == 4
    with pytest.raises(ValueError, match="zero-shot, init"):
        grid_transfer(tmp_path / "grid", measure="zeroshot")


def test_indicators_measure_zero_shot_transfer_by_default(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cells(bank, tmp_path / "grid" / "report")
    out = tmp_path / "ind"
    argv = ["indicators", "--grid", str(tmp_path / "grid"), "--out", str(out), "--test-limit",
            "12", "--train-limit", "16", "--dev-limit", "16", "--p", "0.05"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "indicators.json").read_text())
    assert data["transfer_measure"] == "zero-shot"
    assert len(data["transfer"]) == 8  # the cells' init values (1.1, 0.9, ...) are not used
    # T(nli-en → sa-en) = the NLI prompt on SA-en's first 12 test examples / SA-en's own
    src = zero_shot(bank / "nli-en", "sa", "en", limit=12)
    own = zero_shot(bank / "sa-en", "sa", "en", limit=12, label_words="target")
    key = "v1/s1/nli-en>v1/s1/sa-en"
    assert data["zero_shot_scores"][key] == pytest.approx(src.score)
    assert data["own_scores"]["v1/s1/sa-en"] == pytest.approx(own.score)
    assert data["transfer"][key] == pytest.approx(src.score / own.score)
    with open(out / "pairs.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["kind"] for r in rows} == {"cross_task", "cross_language"}
    assert all(float(r["transfer"]) == pytest.approx(float(r["score"]) / float(r["own"]))
               for r in rows)  # fmt: skip
    assert json.loads((out / "run.json").read_text())["config"]["test_limit"] == 12
    _one_line(
        capsys,
        ["indicators", "--grid", str(tmp_path / "grid"), "--out", str(out), "--transfer", "x"],
        "zero-shot, init",
    )


def test_indicators_read_own_scores_from_the_prompts_stored_test_evaluation(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bank's prompts stored predictions for 4 test examples: with test_limit 3 and
    # reuse_stored (what a grid's analysis step passes) each own score comes from them (no
    # second evaluation) and equals a fresh evaluation's; the CLI evaluates again.
    from promptatlas.studies.skill import grid_indicators

    _cells(bank, tmp_path / "grid" / "report")
    lines: list[str] = []
    found = grid_indicators(
        tmp_path / "grid", tmp_path / "ind", test_limit=3, train_limit=16, dev_limit=16,
        p=0.05, reuse_stored=True, log=lines.append,
    )  # fmt: skip
    assert sum("(its stored test evaluation)" in line for line in lines) == 4, lines
    own = json.loads((tmp_path / "ind" / "indicators.json").read_text())["own_scores"]
    for name in ("sa-en", "nli-ko"):
        task, lang = name.split("-")
        fresh = zero_shot(bank / name, task, lang, limit=3, label_words="target")
        assert own[f"v1/s1/{name}"] == pytest.approx(fresh.score)
    assert found.transfer
    argv = ["indicators", "--grid", str(tmp_path / "grid"), "--out", str(tmp_path / "cli"),
            "--test-limit", "3", "--train-limit", "16", "--dev-limit", "16",
            "--p", "0.05"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert "(its stored test evaluation)" not in capsys.readouterr().out
    cli_own = json.loads((tmp_path / "cli" / "indicators.json").read_text())["own_scores"]
    assert cli_own == pytest.approx(own)


def test_a_stored_score_is_not_reused_after_the_data_changed(
    bank: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptatlas.bank import read_metadata
    from promptatlas.studies import skill

    meta = read_metadata(bank / "sa-en")
    assert skill._stored_own_score(meta, 3, None) is not None
    assert skill._stored_own_score(meta, 5, None) is None  # only 4 examples stored
    assert skill._stored_own_score(meta, 3, str(tmp_path)) is None  # other data
    import promptatlas.tasks.registry as registry

    monkeypatch.setattr(registry, "changed_data", lambda *a, **k: ["test: changed"])
    assert skill._stored_own_score(meta, 3, None) is None


def test_suggest_ranks_other_prompts(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.json"
    argv = ["suggest", "--task", "SA", "--lang", "en", "--bank", str(bank), "--top", "2",
            "--train-limit", "16", "--dev-limit", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert [r["rank"] for r in data["ranking"]] == [1, 2]
    assert "sa-en" not in data["values"]["skill_corr"]  # the new task's own prompt is no source
    assert set(data["values"]["skill_corr"]) == {"sa-ko", "nli-en", "nli-ko"}
    values = [r["value"] for r in data["ranking"]]
    assert values == sorted(values, reverse=True)
    _one_line(
        capsys,
        ["suggest", "--task", "sa", "--lang", "en", "--bank", str(bank), "--indicator", "cos_flat"],
        "--probe-prompt",
    )


def test_suggest_with_a_probe_prompt_gives_prompt_indicators(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["suggest", "--task", "sa", "--lang", "en", "--bank", str(bank), "--indicator",
            "on_all", "--probe-prompt", str(bank / "sa-en"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["indicator"] == "on_all" and len(data["ranking"]) == 3
    assert "cos_flat" in data["values"] and "skill_corr" not in data["values"]


def test_parsers() -> None:
    assert parse_fractions("0.01, 2%,0.05") == (0.01, 0.02, 0.05)
    assert parse_layers("4-6,1") == (1, 4, 5, 6)
    with pytest.raises(ValueError, match="bad layers"):
        parse_layers("6-4")
    with pytest.raises(ValueError, match="do not exist"):
        parse_layers("0-18", 18)
    with pytest.raises(ValueError, match="bad fraction"):
        parse_fractions("x")


@pytest.mark.integration
def test_gemma_find_perturb_prune_on_a_few_examples(gemma: Any, tmp_path: Path) -> None:
    """The run level on the real Gemma-3-270M: a saved (untrained) v1 prompt, neurons found on
    8 + 8 examples in two layers, perturbed and pruned on 4 test examples."""
    from promptatlas.bank import save_prompt
    from promptatlas.prompts import PromptConfig, SoftPrompt
    from promptatlas.runs import neurons as runs

    prompt = SoftPrompt(PromptConfig(method="v1", length=4), gemma.geometry)
    prompt.initialise(gemma, generator=torch.Generator().manual_seed(0))
    save_prompt(tmp_path / "p", prompt, gemma, task="sa", lang="en", seed=0, metrics={})
    source = runs.load_source(tmp_path / "p", handle=gemma)
    cfg = runs.FindConfig(layers=(16, 17), train_limit=8, dev_limit=8, ps=(0.01,))
    pred = runs.find_neurons(tmp_path / "p", tmp_path / "find", cfg, source=source)
    assert pred.values.shape == (2, 2048) and 0.5 <= pred.values.max() <= 1.0
    curve = runs.perturb_neurons_run(
        tmp_path / "p",
        tmp_path / "find",
        tmp_path / "perturb",
        runs.PerturbConfig(ps=(0.01,), n_random=1, test_limit=4),
        source=source,
    )
    assert curve.results[0].counts == {16: 21, 17: 21}
    rows = runs.prune_run(
        tmp_path / "p",
        tmp_path / "find",
        tmp_path / "prune",
        runs.PruneConfig(layers=(16, 17), test_limit=4, repeats=1, time_examples=4),
        source=source,
    )
    assert rows[1]["params"] < rows[0]["params"]


def test_matrix_perturbs_each_skill_set_in_each_prompted_model(
    bank: Path, found: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "m"
    argv = ["neurons", "matrix", "--prompts", str(bank / "sa-en"), str(bank / "sa-ko"),
            "--skill", str(found["sa-en"]), str(found["sa-ko"]), "--p", "0.1", "--mode", "zero",
            "--test-limit", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    with open(out / "matrix.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["target"]) for r in rows] == [
        ("sa-en", "sa-en"), ("sa-en", "sa-ko"), ("sa-ko", "sa-en"), ("sa-ko", "sa-ko"),
    ]  # fmt: skip
    assert (out / "matrix.png").read_bytes()[:8] == PNG
    assert json.loads((out / "run.json").read_text())["config"]["mode"] == "zero"


def test_suggest_by_the_best_measured_indicator(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _cells(bank, tmp_path / "grid" / "report")
    ind = tmp_path / "ind"
    argv = ["indicators", "--grid", str(tmp_path / "grid"), "--out", str(ind),
            "--train-limit", "16", "--dev-limit", "16", "--p", "0.05"]  # fmt: skip
    assert main(argv) == 0
    ranking = json.loads((ind / "indicators.json").read_text())["ranking"]
    out = tmp_path / "s.json"
    argv = ["suggest", "--task", "sa", "--lang", "en", "--bank", str(bank), "--indicator",
            str(ind), "--train-limit", "16", "--dev-limit", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    chosen = json.loads(out.read_text())["ranking"][0]
    skill_ranked = [n for n in ranking if n in ("skill_corr", "skill_overlap")]
    assert f"indicator {skill_ranked[0]}" in capsys.readouterr().out
    assert chosen["rank"] == 1
    assert json.loads(out.read_text())["indicator"] == skill_ranked[0]
