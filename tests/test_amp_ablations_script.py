"""scripts/amp_ablations.py end to end on a tiny random model: two variants, one seed."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from promptatlas.cli import main as cli_main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "amp_ablations.py"

SOURCES = """\
name: tiny
model: tiny-gpt2
out: {out}
langs: [en]
seeds: [1]
format: {{max_length: 32}}
eval: {{batch_size: 8}}
train_limit: 12
dev_limit: 4
test_limit: 6
compose:
  sources:
    tasks: [sa, nli]
    prompt: {{method: v1, length: 3}}
    train: {{steps: 2, batch_size: 4}}
  methods: []
"""


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("amp_ablations_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablations_paired_against_dam_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROMPTATLAS_DB", str(tmp_path / "db.sqlite"))
    study = tmp_path / "sources.yaml"
    study.write_text(SOURCES.format(out=tmp_path / "src"))
    assert cli_main(["run", str(study), "--quiet"]) == 0
    script, out = _script(), tmp_path / "abl"
    argv = ["--bank", str(tmp_path / "src" / "bank"), "--tasks", "sa,nli", "--seeds", "1"]
    argv += ["--variants", "dam,value-identity", "--steps", "1", "--test-limit", "6"]
    argv += ["--out", str(out)]
    assert script.main(argv) == 0

    with open(out / "ablations.csv", encoding="utf-8") as f:
        rows = {(r["target"], r["variant"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(t, v) for t in ("sa-en", "nli-en") for v in ("dam", "value-identity")}
    for target in ("sa-en", "nli-en"):
        dam, raw = rows[(target, "dam")], rows[(target, "value-identity")]
        assert dam["minus_dam"] == ""  # no difference of dam with itself
        # the paired difference is the difference of the two scores, inside its interval
        diff = float(raw["minus_dam"])
        assert diff == pytest.approx(float(raw["score"]) - float(dam["score"]))
        assert float(raw["d_low"]) <= diff <= float(raw["d_high"])
    text = (out / "ablations.md").read_text(encoding="utf-8")
    assert "1 steps at lr 0.001" in text  # CPU_AMP's lr where --lr is not given
    assert text.count("| sa-en |") == 2 and text.count("| nli-en |") == 2

    # a rerun reads the finished runs back instead of training again
    capsys.readouterr()
    assert script.main(argv) == 0
    assert " seed 1: " not in capsys.readouterr().out


def test_ablations_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _script()
    assert script.main(["--bank", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "the bank folder" in capsys.readouterr().err
    assert script.main(["--bank", "b", "--out", str(tmp_path / "o"), "--summary"]) == 2
    assert "no finished ablation run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--bank", "b", "--out", "o", "--variants", "dam,k7"])
    assert "unknown variant" in capsys.readouterr().err
