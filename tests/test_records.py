"""Records usable from anywhere: absolute prompt paths in the database, `runs` says which
database it read and how to choose another, task/language names are case-insensitive, and a
filter that matches nothing says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptatlas.bank import ResultsDB
from promptatlas.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_records_are_usable_from_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work, elsewhere = tmp_path / "work" / "sub", tmp_path / "elsewhere"
    work.mkdir(parents=True)
    elsewhere.mkdir()
    db = tmp_path / "db.sqlite"
    monkeypatch.chdir(work)
    code, text, err = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", "SA", "--lang", "En", "--method",
        "v1", "--length", "2", "--steps", "1", "--train-limit", "4", "--test-limit", "2",
        "--out", "../p", "--db", str(db), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert text.startswith("sa-en v1:")

    monkeypatch.chdir(elsewhere)
    code, text, _ = _run(capsys, "runs", "--db", str(db), "--task", "SA", "--lang", "EN")
    assert code == 0
    first = text.splitlines()[0]
    assert str(db) in first and "--db" in first and "PROMPTATLAS_DB" in first
    assert " sa " in text and " en " in text and "train" in text

    code, text, err = _run(capsys, "runs", "--db", str(db), "--json")
    records = [json.loads(line) for line in text.splitlines()]
    assert records and str(db) in err  # which database: on stderr, the JSON stays clean
    for r in records:
        assert r["prompt_dir"] == str(tmp_path / "work" / "p")
        assert Path(r["prompt_dir"], "prompt.json").exists()
        assert (r["task"], r["lang"]) == ("sa", "en")

    code, text, _ = _run(capsys, "runs", "--db", str(db), "--task", "nli", "--lang", "ko")
    assert code == 0 and "no runs match --task nli --lang ko" in text
    assert "no runs recorded yet" not in text

    # The default database is per directory: elsewhere has none, and `runs` says where it
    # looked and how to point it at another.
    monkeypatch.delenv("PROMPTATLAS_DB")
    code, text, _ = _run(capsys, "runs")
    assert code == 0 and str(elsewhere / ".promptatlas" / "results.sqlite") in text
    assert "--db" in text and "PROMPTATLAS_DB" in text
    assert not (elsewhere / ".promptatlas").exists()  # listing creates nothing


def test_db_stores_absolute_paths_and_lower_case_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with ResultsDB("r.sqlite") as db:
        assert db.path == tmp_path / "r.sqlite"
        db.record(kind="eval", model="m", task="NLI", lang="KO", method="v1", split="test",
                  metrics={"score": 1.0}, config={}, prompt_dir="a/../b")  # fmt: skip
        (record,) = db.find(task="nli", lang="ko")
        assert record.prompt_dir == str(tmp_path / "b")
        assert (record.task, record.lang) == ("nli", "ko")
        assert db.find(task="Nli", prompt_dir="b") == [record]


def test_experiment_names_are_case_insensitive(tmp_path: Path) -> None:
    from promptatlas.studies.experiment import experiment_from_mapping

    exp = experiment_from_mapping(
        {
            "tasks": ["SA", "nli"],
            "langs": ["EN"],
            "methods": {"v1": {"method": "v1"}},
            "skip": ["NLI-en"],
            "train_by_task": {"Sa": {"batch_size": 3}},
        },
        tmp_path / "e.yaml",
    )
    assert exp.tasks == ("sa", "nli") and exp.langs == ("en",)
    assert exp.cells() == [("sa", "en", "v1", 42)]
    cfg = exp.run_config("sa", "en", "v1", 1)
    assert cfg.task == "sa" and cfg.train.batch_size == 3


def test_grid_task_names_are_case_insensitive(tmp_path: Path) -> None:
    from promptatlas.studies.grid import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(
        "tasks: [sa, nli]\nlangs: [en, ko]\nmethods: {v1: {method: v1}}\n"
        "transfer: {sources: [SA], targets: [NLI], text: {KO: [a.txt]}}\n"
    )
    grid = load_grid(path)
    assert grid.transfer.sources == ("sa",) and grid.transfer.targets == ("nli",)
    assert grid.language_config("ko", "v1", 1).text == ("a.txt",)
