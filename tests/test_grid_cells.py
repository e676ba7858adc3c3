"""Grid cells: a typed kind whose stored words (cell names, keys, hashes, database kinds) are the
ones earlier grids wrote, so an existing results database still resumes."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from promptatlas.configtools import ConfigError, config_hash
from promptatlas.studies.grid import Cell, CellKind, GridConfig, load_grid


def test_kind_is_typed_and_accepts_its_stored_word() -> None:
    cell = Cell("lang", "v2", 1, "ko")
    assert cell.kind is CellKind.LANGUAGE_PROMPT
    assert cell == Cell(CellKind.LANGUAGE_PROMPT, "v2", 1, "ko")
    assert {k.value for k in CellKind} == {"lang", "base", "task", "language", "zero"}


def test_stored_words_and_hashes_do_not_change() -> None:
    cells = [
        Cell(CellKind.LANGUAGE_PROMPT, "v2", 1, "ko"),
        Cell(CellKind.BASELINE, "v2", 1, "ko", "sa"),
        Cell(CellKind.CROSS_TASK, "v2", 1, "en", "sa", source_task="nli", source_lang="en"),
        Cell(CellKind.CROSS_LANGUAGE, "v2", 1, "ko", "sa", source_task="sa", source_lang="en"),
        Cell(
            CellKind.ZERO_SHOT, "v2", 1, "ko", "sa", "sa", source_lang="en", lang_segment="target"
        ),
    ]
    names = [c.name for c in cells]
    assert names == [
        "lang-ko/v2/s1",
        "base/sa-ko/v2/s1",
        "task/nli-to-sa-en/v2/s1",
        "language/sa-en-to-ko/v2/s1",
        "zero/sa-en-to-ko/target/v2/s1",
    ]
    for cell in cells:
        plain = {**dataclasses.asdict(cell), "kind": cell.kind.value}
        assert json.dumps(dataclasses.asdict(cell)) == json.dumps(plain)
        assert config_hash(dataclasses.asdict(cell)) == config_hash(plain)
        assert f"grid-{cell.kind}" == f"grid-{cell.kind.value}"


def _grid_with_pairs(tmp_path: Path, pairs: list[str]) -> GridConfig:
    data = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/quickstart.yaml").read_text()
    )
    data["transfer"]["lang_pairs"] = pairs
    data["transfer"]["zero_shot_segments"] = ["source", "target"]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_grid(path)


def test_lang_pairs_restrict_cross_language_and_zero_shot_directions(tmp_path: Path) -> None:
    cells = _grid_with_pairs(tmp_path, ["EN > ko"]).cells()
    kinds = Counter(c.kind.value for c in cells)
    assert kinds["language"] == 1 and kinds["zero"] == 2
    assert {(c.source_lang, c.lang) for c in cells if c.kind.value in ("language", "zero")} == {
        ("en", "ko")
    }


def test_lang_pairs_name_bad_and_unknown_pairs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source>target"):
        _grid_with_pairs(tmp_path, ["en-ko"])
    with pytest.raises(ConfigError, match="'fr'"):
        _grid_with_pairs(tmp_path, ["en>fr"])
