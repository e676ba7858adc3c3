"""Executors for grids: the local one runs cells in order here; the Ray one runs the same cells as
Ray tasks (dependencies passed as results, the driver the only writer) with the same prompt
bytes, records each cell once, resumes after a killed driver and reports a cell whose dependency
failed. The Ray tests are skipped, with the reason shown, where Ray is not installed
(``pip install 'promptatlas[ray]'``)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptatlas.bank import ResultsDB
from promptatlas.configtools import ConfigError
from promptatlas.studies.executors import (
    ExecutorError,
    ExecutorSpec,
    Job,
    RayMissingError,
    import_ray,
    run_jobs,
)
from promptatlas.studies.grid import GridConfig, load_grid, run_grid


def _grid_file(tmp: Path, *, text: dict[str, Any] | None = None, executor: Any = None) -> Path:
    data: dict[str, Any] = {
        "name": "exec",
        "model": "tiny-gpt2",
        "out": str(tmp / "out"),
        "tasks": ["sa"],
        "langs": ["en", "ko"],
        "seeds": [1],
        "methods": {"v1": {"method": "v1"}},
        "train": {"steps": 2, "batch_size": 4, "lr": 0.1, "warmup": 0.0},
        "format": {"max_length": 24},
        "train_limit": 8,
        "test_limit": 4,
        "transfer": {
            "lang_length": 2,
            "task_length": 2,
            "language": {"steps": 2, "batch_size": 4},
            "text_limit": 30,
            "max_length": 24,
            "cross_task": False,
            **({"text": text} if text else {}),
        },
    }
    if executor is not None:
        data["executor"] = executor
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _prompt_bytes(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("prompt.safetensors"))
    }


def _keys(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as con:
        return [row[0] for row in con.execute("SELECT key FROM runs WHERE key IS NOT NULL")]


# -- without Ray ---------------------------------------------------------------------------------


def test_executor_spec_checks_and_yaml_block(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind"):
        ExecutorSpec.from_dict({"kind": "dask"})
    with pytest.raises(ConfigError, match="max_retries"):
        ExecutorSpec(kind="ray", max_retries=-1)
    with pytest.raises(ConfigError, match="--executor ray"):
        ExecutorSpec(kind="local", gpus_per_cell=1)
    assert ExecutorSpec(kind="ray", gpus_per_cell=0.5).gpus_per_cell == 0.5
    grid = load_grid(_grid_file(tmp_path, executor={"kind": "ray", "gpus_per_cell": 0.25}))
    assert grid.executor == ExecutorSpec(kind="ray", gpus_per_cell=0.25)
    plain = load_grid(_grid_file(tmp_path))
    assert plain.executor.kind == "local"
    # where the cells run is not part of what they compute
    cell = plain.cells()[0]
    assert grid.key(cell) == plain.key(cell)
    assert isinstance(grid, GridConfig)


def test_local_jobs_run_in_order_with_results_passed() -> None:
    seen: list[tuple[Any, dict[Any, Any]]] = []

    def work(task: tuple[Any, Any], needed: Any) -> int:
        shared, payload = task
        seen.append((payload, dict(needed)))
        return shared + payload + sum(needed.values())

    jobs = [Job("a", (), 1), Job("b", ("a", "x"), 2)]
    results: dict[Any, int] = {}
    run_jobs(
        ExecutorSpec(), jobs, work, on_result=results.__setitem__, inputs={"x": 100}, shared=10
    )
    assert results == {"a": 11, "b": 10 + 2 + 11 + 100}
    assert seen[1][1] == {"a": 11, "x": 100}
    with pytest.raises(ValueError, match="comes later"):
        run_jobs(ExecutorSpec(), [Job("b", ("a",)), Job("a")], work, on_result=print)


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(RayMissingError, match=r"pip install 'promptatlas\[ray\]'"):
        import_ray()


# -- with Ray ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'promptatlas[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=200 * 1024 * 1024,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_grid_equals_local(
    ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import promptatlas.studies.grid as grid_mod

    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local_dir.mkdir()
    ray_dir.mkdir()
    local = load_grid(_grid_file(local_dir))
    with ResultsDB(local_dir / "db.sqlite") as db:
        assert run_grid(local, db=db, progress=False, log=lambda _: None) == len(local.cells())

    grid = load_grid(_grid_file(ray_dir))
    cells = grid.cells()
    spec = ExecutorSpec(kind="ray")
    real = grid_mod._Runner.store
    stored = {"n": 0}

    def dies_after_four(self: Any, result: Any) -> None:
        if stored["n"] == 4:
            raise KeyboardInterrupt  # the driver is killed with cells still running
        stored["n"] += 1
        real(self, result)

    monkeypatch.setattr(grid_mod._Runner, "store", dies_after_four)
    lines: list[str] = []
    with ResultsDB(ray_dir / "db.sqlite") as db:
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, db=db, progress=False, log=lines.append, executor=spec)
        monkeypatch.setattr(grid_mod._Runner, "store", real)
        # a rerun runs only what was not stored
        assert run_grid(grid, db=db, progress=False, log=lines.append, executor=spec) == (
            len(cells) - 4
        )
        assert run_grid(grid, db=db, progress=False, log=lines.append, executor=spec) == 0

    assert _prompt_bytes(ray_dir / "out") == _prompt_bytes(local_dir / "out")
    assert len(_prompt_bytes(ray_dir / "out")) == sum(c.kind != "zero" for c in cells)
    keys = _keys(ray_dir / "db.sqlite")
    grid_keys = [k for k in keys if "#" in k]
    assert sorted(grid_keys) == sorted(grid.key(c) for c in cells)  # each cell once
    assert sorted(_keys(local_dir / "db.sqlite")) == sorted(keys)
    assert (ray_dir / "out" / "index.html").is_file()
    assert (ray_dir / "out" / "curves" / "sa-en-v1-s1.jsonl").is_file()
    loads = [line for line in lines if "model loads per worker" in line]
    assert loads and all(int(n) == 1 for n in loads[-1].rsplit(":", 1)[1].split(","))
    # the stored paths name the results folder, not the workers' scratch folders
    meta = (ray_dir / "out" / "bank" / "sa-ko-v1-s1" / "prompt.json").read_text()
    assert "promptatlas-cell-" not in meta and str(ray_dir / "out") in meta


def test_ray_reports_a_cell_whose_dependency_failed(ray_local: Any, tmp_path: Path) -> None:
    grid = load_grid(_grid_file(tmp_path, text={"ko": [str(tmp_path / "missing.txt")]}))
    with ResultsDB(tmp_path / "db.sqlite") as db, pytest.raises(ExecutorError) as info:
        run_grid(grid, db=db, progress=False, log=lambda _: None,
                 executor=ExecutorSpec(kind="ray"))  # fmt: skip
    message = str(info.value)
    assert "lang-ko/v1/s1 failed" in message
    assert "base/sa-ko/v1/s1 not run (it needs lang-ko/v1/s1, which failed)" in message
    # the English cells that do not need it finished and were recorded
    done = _keys(tmp_path / "db.sqlite")
    assert any("base/sa-en" in k for k in done) and not any("base/sa-ko" in k for k in done)
