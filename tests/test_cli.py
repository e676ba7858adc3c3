"""The command line: end-to-end on a tiny model, and errors a person can act on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptatlas.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_eval_runs_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sa-en-v1"
    code, text, _ = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en", "--method",
        "v1", "--length", "4", "--steps", "3", "--train-limit", "16", "--test-limit", "8",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0 and "untrained" in text and "trained" in text
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["task"] == "sa" and meta["metrics"]["test"]["n"] == 8
    assert meta["config"]["train"]["steps"] == 3 and meta["versions"]["torch"]

    code, text, _ = _run(capsys, "eval", str(out), "--split", "dev", "--limit", "6")
    assert code == 0 and "accuracy" in text and "n=6" in text

    code, text, _ = _run(capsys, "runs", "--task", "sa")
    assert code == 0
    assert {"train", "eval", "eval-untrained"} <= {
        word for line in text.splitlines() for word in line.split()
    }

    code, text, _ = _run(capsys, "export", str(out), "--format", "peft", "--out",
                         str(tmp_path / "peft"))  # fmt: skip
    assert code == 0 and (tmp_path / "peft" / "adapter_config.json").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--task", "nope", "--lang", "en", "--out", "x", "--model", "tiny-gpt2"], "nope"),
        (["train", "--task", "sa", "--lang", "xx", "--out", "x", "--model", "tiny-gpt2"], "xx"),
        (["train", "--task", "sa", "--lang", "en", "--out", "x", "--model", "no-such-model"],
         "no-such-model"),
        (["eval", "/nonexistent/prompt"], "/nonexistent/prompt"),
        (["run", "/nonexistent.yaml"], "does not exist"),
    ],
)  # fmt: skip
def test_errors_are_one_clear_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("promptatlas: error:") and needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_prompt_on_wrong_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p"
    assert _run(capsys, "train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en",
                "--length", "2", "--steps", "1", "--train-limit", "4", "--test-limit", "2",
                "--out", str(out), "--quiet")[0] == 0  # fmt: skip
    meta = json.loads((out / "prompt.json").read_text())
    meta["model"] = "tiny-llama"  # claims another model: geometry differs
    (out / "prompt.json").write_text(json.dumps(meta))
    code, _, err = _run(capsys, "eval", str(out))
    assert code == 2 and "d_model=32" in err and "tiny-llama" in err, err


def test_experiment_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [sa]\nlangs: [en]\nmethods: {v1: {method: v1}}\nsteps: 3\n")
    code, _, err = _run(capsys, "run", str(bad))
    assert code == 2 and "steps" in err and "bad.yaml" in err
    bad.write_text("tasks: [sa]\nlangs: [en]\nmethods: {v1: {method: v9}}\n")
    code, _, err = _run(capsys, "run", str(bad))
    assert code == 2 and "v9" in err


def test_experiment_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"name: mini\nmodel: tiny-gpt2\nout: {tmp_path / 'out'}\ntasks: [sa, sts]\nlangs: [en]\n"
        "methods: {v1: {method: v1, length: 2}, v2: {method: v2, length: 2}}\n"
        "train: {steps: 2, batch_size: 4}\ntrain_limit: 8\ntest_limit: 4\n"
    )
    code, text, _ = _run(capsys, "run", str(exp), "--quiet")
    assert code == 0 and "0 reused, 4 to run" in text
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert len(rows) == 4 and all(r["trained"] is not None for r in rows)
    assert all(r["loss_first"] is not None and r["loss_last"] is not None for r in rows)
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 5
    # v1 − v2 on the same test examples, paired: the point is the two trained scores' difference.
    diffs = json.loads((tmp_path / "out" / "results.json").read_text())["method_differences"]
    sa = [d for d in diffs if d["task"] == "sa"]
    trained = {r["method"]: r["trained"] for r in rows if r["task"] == "sa"}
    assert len(sa) == 1 and (sa[0]["a"], sa[0]["b"], sa[0]["n_test"]) == ("v1", "v2", 4)
    assert sa[0]["difference"] == pytest.approx(trained["v1"] - trained["v2"])
    assert sa[0]["ci"][0] <= sa[0]["difference"] <= sa[0]["ci"][1]
    assert "v1 − v2 = " in text
    code, text, _ = _run(capsys, "run", str(exp), "--quiet")
    assert code == 0 and "4 reused, 0 to run" in text
