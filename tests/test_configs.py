"""The shipped experiment files are valid and describe what the README says."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from promptatlas.studies.experiment import load_experiment
from promptatlas.studies.grid import load_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_is_the_bilingual_transfer_study() -> None:
    grid = load_grid(CONFIGS / "quickstart.yaml")
    exp = grid.experiment
    # Precision "auto": bf16 only where the hardware runs it natively (never hard-coded).
    assert exp.model == "gemma-3-270m" and exp.precision == "auto"
    assert set(exp.tasks) == {"sa", "nli"} and set(exp.langs) == {"en", "ko"}
    assert {cfg.method for cfg in exp.methods.values()} == {"v1"}
    kinds = Counter(c.kind for c in grid.cells())
    # 2 language prompts; SA-en, SA-ko, NLI-en baselines; NLI → SA (en); SA EN → KO; zero-shot
    # SA EN → KO with the source and the target language segment.
    assert kinds == {"lang": 2, "base": 3, "task": 1, "language": 1, "zero": 2}
    base = grid.run_config("sa", "en", "v1", 42)
    assert base.lang_prompt and base.lang_prompt.endswith("lang-en-v1-s42")
    assert base.train.eval_every > 0  # dev scores for the convergence measure
    assert base.train.lr is None and base.train.objective == "auto"  # the library defaults
    assert base.test_limit is not None and base.test_limit >= 300  # intervals need examples
    assert grid.analysis is not None and grid.analysis.compression is not None


def test_quickstart_optional_steps_load_when_uncommented(tmp_path: Path) -> None:
    # The indicator and composition steps ship commented out of the main job (time): the
    # README tells users to uncomment them, so the commented text must stay a valid block.
    text = (CONFIGS / "quickstart.yaml").read_text()
    shipped = load_grid(CONFIGS / "quickstart.yaml").analysis
    assert shipped is not None and shipped.indicators is None and shipped.compose is None
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # indicators:"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  # "))
    lines[start:end] = ["  " + line[len("  # ") :] for line in lines[start:end]]
    path = tmp_path / "quickstart-full.yaml"
    path.write_text("\n".join(lines) + "\n")
    analysis = load_grid(path).analysis
    assert analysis is not None and analysis.indicators is not None
    assert analysis.compose is not None and analysis.compose.ipt is not None
    assert analysis.skill is not None and analysis.compression is not None


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
