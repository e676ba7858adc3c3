"""Grid cells: a typed kind whose stored words (cell names, keys, hashes, database kinds) are the
ones earlier grids wrote, so an existing results database still resumes."""

from __future__ import annotations

import dataclasses
import json

from promptatlas.configtools import config_hash
from promptatlas.studies.grid import Cell, CellKind


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
