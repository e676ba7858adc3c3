"""Composition from the command line and as a study: `promptatlas compose`, `promptatlas ipt`
and `promptatlas run` on a composition file, end to end on a tiny model; the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptatlas.cli import main
from promptatlas.studies.compose import load_composition
from promptatlas.studies.experiment import ExperimentError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = """\
name: tiny
model: tiny-gpt2
out: {out}
langs: [en]
seeds: [1, 2]
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
  methods: [pt, spot-s, spot-m, attempt, amp]
  pt: {{steps: 2, batch_size: 4}}
  attempt: {{steps: 2, batch_size: 4}}
  amp: {{steps: 2, batch_size: 4, lr: 0.01, warmup_steps: 0}}
  ipt: {{dims: [1, 2], unseen: [nli], fit: {{steps: 4}}, tune: {{steps: 2, batch_size: 4}}}}
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMPTATLAS_DB", str(tmp_path / "db.sqlite"))
    path = tmp_path / "compose.yaml"
    path.write_text(TINY.format(out=tmp_path / "out"))
    return path


def test_run_composition_file_writes_the_table_and_resumes(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, err = _run(capsys, "run", str(study), "--quiet")
    assert code == 0, err
    # 2 source prompts + 5 methods × 2 seeds + 2 IPT dimensions
    assert "14 units on tiny-gpt2: 0 reused, 14 to run" in text
    out = tmp_path / "out"
    table = (out / "report" / "comparison.md").read_text()
    assert "| task | PT | SPoT-s | SPoT-m | ATTEMPT | AMP |" in table
    assert "| sa |" in table and "| nli |" in table and "±" in table
    assert "AMP Table 1 mean" in table
    scores = (out / "report" / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + 5 * 2 * 2  # methods × seeds × targets, each with an interval
    run = json.loads((out / "runs" / "amp-en-s1" / "run.json").read_text())
    assert run["resolved_precision"] == "fp32" and run["versions"]["torch"]
    assert run["hardware"]["cpu"]["model"] and run["config"]["amp"]["lr"] == 0.01
    assert (out / "runs" / "amp-en-s1" / "attention.png").exists()
    composed = json.loads(
        (out / "runs" / "amp-en-s1" / "prompts" / "sa-en-amp-s1" / "prompt.json").read_text()
    )
    assert composed["extra"]["compose"]["method"] == "amp" and composed["metrics"]["test"]["n"]
    recovery = json.loads((out / "ipt" / "d2" / "recovery.json").read_text())
    assert recovery["fitted"] == ["sa-en"] and recovery["unseen"] is not None
    assert (out / "report" / "recovery-vs-dim.png").exists()
    assert "## IPT recovery" in table and "| d_I | target | seen | untrained |" in table
    code, text, _ = _run(capsys, "run", str(study), "--quiet")
    assert code == 0 and "14 reused, 0 to run" in text
    # a run folder that holds another setting (e.g. written by an older run of another file
    # with the same name) is not taken for this unit, even with its key in the database
    path = out / "runs" / "amp-en-s1" / "run.json"
    stored = json.loads(path.read_text())
    stored["config"]["amp"]["lr"] = 0.5
    path.write_text(json.dumps(stored))
    code, text, _ = _run(capsys, "run", str(study), "--quiet")
    assert code == 0 and "13 reused, 1 to run" in text
    assert json.loads(path.read_text())["config"]["amp"]["lr"] == 0.01


def test_ipt_only_study_writes_no_empty_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``methods: []``: the sources and IPT only; the report holds the recovery, no table of
    methods that did not run."""
    monkeypatch.setenv("PROMPTATLAS_DB", str(tmp_path / "db.sqlite"))
    text = TINY.format(out=tmp_path / "out").replace(
        "methods: [pt, spot-s, spot-m, attempt, amp]", "methods: []"
    )
    path = tmp_path / "ipt.yaml"
    path.write_text(text.replace("dims: [1, 2]", "dims: [1]"))
    code, out, err = _run(capsys, "run", str(path), "--quiet")
    assert code == 0, err
    assert "3 units on tiny-gpt2: 0 reused, 3 to run" in out  # 2 sources + 1 IPT fit
    report = (tmp_path / "out" / "report" / "comparison.md").read_text()
    assert "| task | PT |" not in report and "## IPT recovery" in report
    assert not (tmp_path / "out" / "report" / "comparison-en.csv").exists()


def test_changed_amp_settings_rerun_only_amp(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "run", str(study), "--quiet")[0] == 0
    study.write_text(study.read_text().replace("lr: 0.01", "lr: 0.02"))
    code, text, _ = _run(capsys, "run", str(study), "--quiet")
    assert code == 0 and "12 reused, 2 to run" in text  # AMP for both seeds


@pytest.fixture
def bank(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    text = study.read_text().replace("methods: [pt, spot-s, spot-m, attempt, amp]", "methods: [pt]")
    study.write_text(text.replace("seeds: [1, 2]", "seeds: [1]"))
    assert _run(capsys, "run", str(study), "--quiet")[0] == 0
    return tmp_path / "out" / "bank"


def test_compose_commands(bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--lang", "en", "--steps", "1", "--batch-size", "4", "--train-limit", "8",
              "--test-limit", "4", "--quiet"]  # fmt: skip
    code, text, err = _run(
        capsys, "compose", "amp", "--sources", str(bank), "--tasks", "sa,nli", *common,
        "--out", str(tmp_path / "amp"),
    )  # fmt: skip
    assert code == 0, err
    assert "amp sa-en:" in text and "amp nli-en:" in text and "attention" in text
    assert (tmp_path / "amp" / "attention.csv").exists()
    for method, extra in (("spot", ["--mode", "m"]), ("spot", ["--mode", "s"]), ("attempt", [])):
        out = tmp_path / f"{method}{''.join(extra)}"
        code, text, err = _run(
            capsys, "compose", method, "--sources", str(bank), "--task", "sa", *extra, *common,
            "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        assert "sa-en:" in text and (out / "scores.json").exists()
    # the same folder again needs --overwrite
    code, _, err = _run(
        capsys, "compose", "amp", "--sources", str(bank), "--tasks", "sa", *common,
        "--out", str(tmp_path / "amp"),
    )  # fmt: skip
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_ipt_fit_and_tune(bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = tmp_path / "ipt-2"
    code, text, err = _run(
        capsys, "ipt", "fit", "--prompts", str(bank), "--dim", "2", "--steps", "3", "--out",
        str(sub), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "d_I = 2" in text and (sub / "subspace.json").exists()
    assert (sub / "intrinsic-pca.png").exists()
    code, text, err = _run(
        capsys, "ipt", "tune", "--subspace", str(sub), "--task", "sa", "--lang", "en",
        "--steps", "2", "--batch-size", "4", "--test-limit", "4",
        "--full", str(bank / "sa-en-v1-s42"), "--out", str(tmp_path / "ist"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "seen task" in text and "recovery" in text
    meta = json.loads((tmp_path / "ist" / "prompt.json").read_text())
    assert len(meta["extra"]["ipt"]["z"]) == 2 and "recovery" in meta["metrics"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compose", "amp", "--sources", "/nonexistent/bank", "--tasks", "sa", "--lang", "en",
          "--out", "x"], "does not exist"),
        (["compose", "pt", "--sources", ".", "--tasks", "nope", "--lang", "en", "--out", "x"],
         "unknown task 'nope'"),
        (["compose", "pt", "--sources", ".", "--tasks", "sa", "--lang", "en", "--out", "x"],
         "no task prompts"),
        (["ipt", "tune", "--subspace", "/nonexistent", "--task", "sa", "--lang", "en",
          "--out", "x"], "ipt fit"),
    ],
)  # fmt: skip
def test_compose_errors_are_one_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("promptatlas: error:") and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_composition_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(TINY.format(out=tmp_path).replace("methods: [pt,", "methods: [xx, pt,"))
    with pytest.raises(ExperimentError, match="xx"):
        load_composition(path)
    path.write_text(TINY.format(out=tmp_path).replace("targets", "x") + "  targets: [tc]\n")
    with pytest.raises(ExperimentError, match="tc"):
        load_composition(path)
    path.write_text(TINY.format(out=tmp_path) + "steps: 3\n")
    with pytest.raises(ExperimentError, match="steps"):
        load_composition(path)


def test_shipped_composition_configs() -> None:
    cpu = load_composition(CONFIGS / "compose.yaml")
    assert cpu.model == "gemma-3-270m" and set(cpu.langs) == {"en", "ko"}
    assert cpu.precision == "auto" and len(cpu.seeds) >= 3
    assert set(cpu.compose.methods) == {"pt", "spot-s", "spot-m", "attempt", "amp"}
    assert cpu.compose.amp.lr > 5e-5 and cpu.compose.amp.warmup_steps == 0  # CPU-sized
    assert cpu.compose.ipt is not None and cpu.compose.ipt.unseen
    gpu = load_composition(CONFIGS / "compose-gpu.yaml")
    assert gpu.compose.amp.lr == 5e-5 and gpu.compose.amp.warmup_steps == 500  # the paper's
    assert gpu.compose.ipt is not None and gpu.compose.ipt.fit.steps == 100_000
    assert set(gpu.compose.ipt.dims) == {1, 2, 5, 10, 25}
    small = load_composition(CONFIGS / "compose-small.yaml")
    assert small.compose.amp == cpu.compose.amp and small.langs == ("en",)
    # the measured table: the small study's settings in both languages with three seeds
    table = load_composition(CONFIGS / "compose-table.yaml")
    assert table.compose == small.compose and table.test_limit == small.test_limit
    assert set(table.langs) == {"en", "ko"} and table.seeds == (42, 43, 44)
    ipt = load_composition(CONFIGS / "ipt-dims.yaml")
    assert ipt.compose.methods == () and ipt.compose.ipt is not None
    assert ipt.compose.ipt.dims == (1, 2, 5, 10, 25) and ipt.compose.ipt.unseen == ("tc",)
    assert ipt.compose.sources.bank == "results/indicators-grid/bank"


def test_unit_settings_without_a_source_method_keep_their_old_form() -> None:
    """A composition unit's key hashes the settings it reads; ``source_method`` (added later)
    enters them only when set, so units recorded before it existed are still found done."""
    from promptatlas.studies.compose import _method_settings

    config = {"method": "amp", "source_method": None, "device": "cpu", "pt": {}, "amp": {"k": 4}}
    assert _method_settings("amp", config) == {"method": "amp", "amp": {"k": 4}}
    chosen = _method_settings("amp", {**config, "source_method": "v1"})
    assert chosen["source_method"] == "v1"
