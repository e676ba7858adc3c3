"""A study writes each prompt's training curve (JSONL + PNG) under ``<out>/curves/`` and its page
``<out>/index.html``; ``train_run`` writes a curve where it is told to, started over on a fresh
run."""

from __future__ import annotations

from pathlib import Path

import yaml

from promptatlas.bank import ResultsDB
from promptatlas.studies.experiment import load_experiment, run_experiment
from promptatlas.training.curves import read_curve


def test_experiment_writes_curves_and_page(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "curves",
                "model": "tiny-gpt2",
                "out": str(tmp_path / "out"),
                "tasks": ["sa"],
                "langs": ["en"],
                "methods": {"v1": {"method": "v1", "length": 2}},
                "train": {"steps": 3, "batch_size": 4},
                "train_limit": 8,
                "test_limit": 4,
            }
        ),
        encoding="utf-8",
    )
    with ResultsDB(tmp_path / "db.sqlite") as db:
        run_experiment(load_experiment(path), db=db, progress=False, log=lambda *_: None)
    curves = tmp_path / "out" / "curves"
    records = read_curve(curves / "sa-en-v1-s42.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and all("loss" in r for r in records)
    assert (curves / "sa-en-v1-s42.png").stat().st_size > 0
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "<table" in page and "data:image/png;base64" in page
