"""An edited experiment or grid reruns the cells whose settings changed (the cell key holds a
hash of the resolved cell config, dependencies included) and reuses the others; the summary
says how many were reused and how many ran."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from promptatlas.bank import ResultsDB, read_metadata
from promptatlas.studies.experiment import load_experiment, run_experiment
from promptatlas.studies.grid import load_grid, run_grid


def _experiment_file(tmp: Path, steps: int, *, test_limit: int = 4) -> Path:
    path = tmp / "exp.yaml"
    data = {
        "name": "stale",
        "model": "tiny-gpt2",
        "out": str(tmp / "out"),
        "tasks": ["sa"],
        "langs": ["en"],
        "methods": {"v1": {"method": "v1", "length": 2}, "v2": {"method": "v2", "length": 2}},
        "train": {"steps": steps, "batch_size": 4},
        "train_by_method": {"v2": {"lr": 0.01}},
        "train_limit": 8,
        "test_limit": test_limit,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_changed_setting_reruns_its_cells(tmp_path: Path) -> None:
    lines: list[str] = []
    with ResultsDB(tmp_path / "db.sqlite") as db:
        run_experiment(load_experiment(_experiment_file(tmp_path, 3)), db=db, progress=False,
                       log=lines.append)  # fmt: skip
        assert "0 reused, 2 to run" in lines[0]
        v1 = tmp_path / "out" / "bank" / "sa-en-v1-s42"
        assert read_metadata(v1).config["train"]["steps"] == 3

        lines.clear()  # unchanged file: everything is reused
        run_experiment(load_experiment(_experiment_file(tmp_path, 3)), db=db, progress=False,
                       log=lines.append)  # fmt: skip
        assert "2 reused, 0 to run" in lines[0] and "0 runs run, 2 reused" in lines[-1]

        lines.clear()  # steps edited: both cells rerun with the new setting
        run_experiment(load_experiment(_experiment_file(tmp_path, 2)), db=db, progress=False,
                       log=lines.append)  # fmt: skip
        assert "0 reused, 2 to run (2 with changed settings)" in lines[0]
        assert "2 runs run, 0 reused" in lines[-1]
        assert read_metadata(v1).config["train"]["steps"] == 2
        assert read_metadata(v1).extra["steps"] == 2

        lines.clear()  # a per-method override touches only that method's cell
        path = _experiment_file(tmp_path, 2)
        data = yaml.safe_load(path.read_text())
        data["train_by_method"]["v2"]["lr"] = 0.02
        path.write_text(yaml.safe_dump(data))
        run_experiment(load_experiment(path), db=db, progress=False, log=lines.append)
        assert "1 reused, 1 to run" in lines[0]


def test_cell_key_covers_every_result_setting_but_not_the_device(tmp_path: Path) -> None:
    exp = load_experiment(_experiment_file(tmp_path, 3))
    cell = ("sa", "en", "v1", 42)
    key = exp.cell_key(*cell)
    assert key.startswith("stale/tiny-gpt2/sa-en/v1/s42#")
    assert exp.cell_key("sa", "en", "v1", 7) != key
    assert load_experiment(_experiment_file(tmp_path, 3)).cell_key(*cell) == key  # stable
    for change in (
        {"test_limit": 5},
        {"train_limit": 9},
        {"data_dir": "elsewhere"},
        {"eval": {"batch_size": 4}},
        {"format": {"separator": "\n"}},
        {"train": {"steps": 3, "batch_size": 4, "warmup": 0.0}},
    ):
        assert dataclasses.replace(exp, **change).cell_key(*cell) != key, change  # type: ignore[arg-type]
    assert dataclasses.replace(exp, device="cpu").cell_key(*cell) == key


def _grid_file(tmp: Path, language_steps: int, test_limit: int = 4) -> Path:
    data: dict[str, Any] = {
        "name": "g",
        "model": "tiny-gpt2",
        "out": str(tmp / "out"),
        "tasks": ["sa"],
        "langs": ["en", "ko"],
        "seeds": [1],
        "methods": {"v1": {"method": "v1"}},
        "train": {"steps": 2, "batch_size": 4, "lr": 0.1, "warmup": 0.0},
        "format": {"max_length": 24},
        "train_limit": 8,
        "test_limit": test_limit,
        "transfer": {
            "lang_length": 2,
            "task_length": 2,
            "language": {"steps": language_steps, "batch_size": 4},
            "text_limit": 40,
            "max_length": 24,
            "cross_lang": False,
            "zero_shot": True,
            "evaluate_init": False,
        },
    }
    path = tmp / "g.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_grid_reruns_changed_cells_and_their_dependants(tmp_path: Path) -> None:
    quiet: Any = lambda _: None  # noqa: E731
    with ResultsDB(tmp_path / "db.sqlite") as db:
        grid = load_grid(_grid_file(tmp_path, 2))
        n = len(grid.cells())  # 2 language prompts, 2 baselines, 4 zero-shot cells
        assert n == 8
        assert run_grid(grid, db=db, progress=False, log=quiet, report=False) == n
        assert run_grid(load_grid(_grid_file(tmp_path, 2)), db=db, progress=False, log=quiet,
                        report=False) == 0  # fmt: skip

        # test_limit changes what the baselines and zero-shot cells measure, not the language
        # prompts: those are reused.
        lines: list[str] = []
        grid = load_grid(_grid_file(tmp_path, 2, test_limit=3))
        assert run_grid(grid, db=db, progress=False, log=lines.append, report=False) == 6
        assert "2 of 8 reused, 6 to run (6 with changed settings)" in lines[0]
        assert "6 cells run, 2 reused" in lines[-1]
        base = read_metadata(grid.out / "bank" / "sa-en-v1-s1")
        assert base.metrics["test"]["n"] == 3

        # The language prompts' steps change every cell: baselines and zero-shot depend on them.
        grid = load_grid(_grid_file(tmp_path, 3, test_limit=3))
        assert run_grid(grid, db=db, progress=False, log=quiet, report=False) == n
        lang = read_metadata(grid.out / "bank" / "lang-en-v1-s1")
        assert lang.config["train"]["steps"] == 3
