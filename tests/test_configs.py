"""The shipped experiment files are valid and describe what the README says."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from promptatlas.experiments import load_experiment
from promptatlas.transfer import load_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_is_the_bilingual_transfer_study() -> None:
    grid = load_grid(CONFIGS / "quickstart.yaml")
    exp = grid.experiment
    assert exp.model == "gemma-3-270m" and exp.precision == "bf16"
    assert set(exp.tasks) == {"sa", "nli"} and set(exp.langs) == {"en", "ko"}
    assert {cfg.method for cfg in exp.methods.values()} == {"v1", "v2"}
    kinds = Counter(c.kind for c in grid.cells())
    # 2 langs × 2 methods language prompts; 4 task/lang pairs × 2 methods baselines; SA↔NLI in
    # each language; EN↔KO for each task; zero-shot both directions × source/target segment.
    assert kinds == {"lang": 4, "base": 8, "task": 8, "language": 8, "zero": 16}
    base = grid.run_config("sa", "en", "v2", 42)
    assert base.lang_prompt and base.lang_prompt.endswith("lang-en-v2-s42")
    assert base.train.eval_every > 0  # dev scores for the convergence measure
    assert grid.analysis is not None and grid.analysis.compression is not None


def test_transfer_grid_covers_all_tasks() -> None:
    grid = load_grid(CONFIGS / "transfer-grid.yaml")
    kinds = Counter(c.kind for c in grid.cells())
    assert kinds["task"] == 6 * 5 * 2 * 2  # every source × other target, 2 languages, 2 methods
    assert kinds["language"] == 6 * 2 * 2
    # zero-shot: classification tasks with the same labels in both languages (not TC)
    assert {c.task for c in grid.cells() if c.kind == "zero"} == {"sts", "nli", "sa"}


def test_thesis_config_has_table6_settings() -> None:
    exp = load_experiment(CONFIGS / "thesis.yaml")
    assert set(exp.tasks) == {"sts", "nli", "sa", "tc", "qa", "cg"}
    nli = exp.run_config("nli", "en", "v2", 42)
    assert (nli.train.batch_size, nli.train.epochs, nli.format.max_length) == (32, 16, 150)
    assert nli.prompt.length == 20 and nli.prompt.kv == "shared" and nli.prompt.init == "uniform"
    qa = exp.run_config("qa", "ko", "v1", 42)
    assert (qa.train.batch_size, qa.train.epochs, qa.format.max_length) == (16, 12, 400)
