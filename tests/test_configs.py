"""The shipped experiment files are valid and describe what the README says."""

from __future__ import annotations

from pathlib import Path

from promptatlas.experiments import load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_is_the_bilingual_core_study() -> None:
    exp = load_experiment(CONFIGS / "quickstart.yaml")
    assert exp.model == "gemma-3-270m"
    assert {"sa", "nli", "sts"} <= set(exp.tasks) and set(exp.langs) == {"en", "ko"}
    assert {cfg.method for cfg in exp.methods.values()} == {"v1", "v2"}
    cells = exp.cells()
    assert len(cells) == len(exp.tasks) * 2 * len(exp.methods) * len(exp.seeds)
    for cell in cells:
        assert exp.run_config(*cell).baseline  # untrained score is reported beside trained


def test_thesis_config_has_table6_settings() -> None:
    exp = load_experiment(CONFIGS / "thesis.yaml")
    assert set(exp.tasks) == {"sts", "nli", "sa", "tc", "qa", "cg"}
    nli = exp.run_config("nli", "en", "v2", 42)
    assert (nli.train.batch_size, nli.train.epochs, nli.format.max_length) == (32, 16, 150)
    assert nli.prompt.length == 20 and nli.prompt.kv == "shared" and nli.prompt.init == "uniform"
    qa = exp.run_config("qa", "ko", "v1", 42)
    assert (qa.train.batch_size, qa.train.epochs, qa.format.max_length) == (16, 12, 400)
