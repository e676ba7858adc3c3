"""No noise: --quiet silences model-loading bars and library warnings, help texts print what
they mean, messages name options that exist, and eval checks names before loading a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promptatlas.cli import main


def test_quiet_prints_only_the_result(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROMPTATLAS_DB": str(tmp_path / "db.sqlite")}
    env.pop("TQDM_DISABLE", None)
    env.pop("TRANSFORMERS_VERBOSITY", None)
    argv = [sys.executable, "-m", "promptatlas.cli", "train", "--model", "tiny-gpt2", "--task",
            "sa", "--lang", "en", "--steps", "2", "--train-limit", "4", "--test-limit", "2",
            "--length", "2", "--out", str(tmp_path / "p")]  # fmt: skip
    loud = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr  # progress bars and library warnings without --quiet
    quiet = subprocess.run(
        [*argv[:-1], str(tmp_path / "q"), "--quiet"], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr  # no "Loading weights", FutureWarning, [transformers]
    assert quiet.stdout.startswith("sa-en v2: accuracy untrained") and quiet.stdout.count("\n") == 1


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    text = capsys.readouterr().out
    assert "90%" in " ".join(text.split()) and "%%" not in text


def test_no_held_out_text_names_real_options() -> None:
    from promptatlas.transfer.subprompts import LanguagePromptResult

    result = LanguagePromptResult(
        path=Path("x"),
        heldout_loss_before=None,
        heldout_loss_after=None,
        steps=1,
        seconds=0.0,
        n_sequences=3,
    )
    text = result.describe()
    assert "no held-out text" in text and "--text" in text and "heldout" not in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--task", "nope"], "unknown task 'nope'"), (["--lang", "xx"], "'xx'")],
)
def test_eval_checks_task_and_lang_before_loading_the_model(
    extra: list[str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en", "--steps", "1",
                 "--train-limit", "4", "--test-limit", "2", "--length", "2", "--out",
                 str(tmp_path / "p"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    import promptatlas.models

    loads: list[Any] = []
    monkeypatch.setattr(promptatlas.models, "load_model", lambda *a, **k: loads.append(a))
    assert main(["eval", str(tmp_path / "p"), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not loads
