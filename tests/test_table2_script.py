"""scripts/table2.py end to end on a tiny random model: one pair, two steps per prompt."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from promptatlas.bank import ResultsDB

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "table2.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("table2_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table2_script_writes_a_row_with_intervals(tmp_path: Path) -> None:
    table2 = _script()
    out, db = tmp_path / "table2", tmp_path / "results.sqlite"
    argv = ["--model", "tiny-gemma3", "--tasks", "sa", "--langs", "en", "--steps", "2"]
    argv += ["--test-limit", "8", "--out", str(out), "--db", str(db), "--quiet"]
    assert table2.main(argv) == 0

    text = (out / "table2.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| SA | en |")]
    assert len(rows) == 1, text
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    interval = re.compile(r"^\d+\.\d \[\d+\.\d, \d+\.\d\]$")  # "50.0 [12.5, 87.5]"
    assert interval.match(cells[5]) and interval.match(cells[8]), cells  # v1 and v2 scores
    assert cells[-2:] == ["87.15", "88.18"]  # the thesis's Table 2, SST-2

    data = json.loads((out / "table2.json").read_text(encoding="utf-8"))
    (row,) = data["rows"]
    for method in ("v1", "v2"):
        cell = row["methods"][method]
        assert cell["steps"] == 2 and cell["batch_size"] == 32  # Table 6: SA batch 32
        assert cell["test"]["n"] == 8 and len(cell["test"]["ci"]) == 2
        assert cell["gain"] is not None and "low" in cell["gain"]
        assert (Path(cell["prompt_dir"]) / "prompt.json").exists()
    with ResultsDB(db) as records:  # every cell recorded: a rerun skips it
        assert len(records.find(kind="train")) == 2
        assert len(records.find(kind="experiment-cell")) == 2


def test_table2_config_is_table6_scaled_to_the_bundled_data() -> None:
    from promptatlas.runs.train import load_examples

    table2 = _script()
    full, parts = table2.split_experiments(
        table2.experiment_data(table2.parse_args([])), table2.CONFIG
    )
    assert len(full.cells()) == 24 and sum(len(p.cells()) for p in parts) == 24
    steps, batches = 0, {}
    for part in parts:
        for cell in part.cells():
            cfg = part.run_config(*cell)
            steps += cfg.train.total_steps(len(load_examples(cfg, "train")))
            batches[cell[0], cell[1]] = cfg.train.batch_size
    assert batches["tc", "en"] == 64 and batches["tc", "ko"] == 32  # Table 6: 64/32
    assert batches["nli", "ko"] == 32 and batches["qa", "en"] == 16
    assert steps == 2582  # what the ten-minute H200 budget was sized for
