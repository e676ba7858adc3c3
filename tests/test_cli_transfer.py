"""Transfer commands end to end on tiny models: lang-prompt, train --lang-prompt, transfer,
zero-shot, project, runs --merge, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptatlas.cli import main

SMALL = ("--steps", "2", "--batch-size", "4", "--train-limit", "12", "--test-limit", "6", "--quiet")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_factorised_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    en, ko = tmp_path / "lang-en", tmp_path / "lang-ko"
    for lang, out in (("en", en), ("ko", ko)):
        code, text, err = _run(
            capsys, "lang-prompt", "--model", "tiny-gpt2", "--lang", lang, "--method", "v1",
            "--steps", "2", "--text-limit", "40", "--max-length", "24", "--out", str(out),
            "--quiet",
        )  # fmt: skip
        assert code == 0, err
        assert "held-out LM loss" in text
    sa = tmp_path / "sa-en"
    code, text, err = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en",
        "--lang-prompt", str(en), "--out", str(sa), *SMALL,
    )  # fmt: skip
    assert code == 0, err
    meta = json.loads((sa / "prompt.json").read_text())
    assert [s["name"] for s in meta["prompt"]["segments"]] == ["lang", "task"]
    assert meta["prompt"]["method"] == "v1"  # taken from the language prompt

    code, text, err = _run(
        capsys, "transfer", "--from", str(sa), "--to", "nli", "--out", str(tmp_path / "t"),
        "--eval-every", "1", *SMALL,
    )  # fmt: skip
    assert code == 0, err
    assert "sa-en → nli-en (task)" in text
    code, text, err = _run(
        capsys, "transfer", "--from", str(sa), "--lang", "ko", "--lang-prompt", str(ko),
        "--out", str(tmp_path / "l"), *SMALL,
    )  # fmt: skip
    assert code == 0, err
    assert "sa-en → sa-ko (language)" in text

    code, text, err = _run(
        capsys, "zero-shot", "--prompt", str(sa), "--lang", "ko", "--lang-segment", "target",
        "--lang-prompt", str(ko), "--limit", "6",
    )  # fmt: skip
    assert code == 0, err
    assert "target language segment, source label words" in text

    # Errors: one line naming the problem, no traceback.
    code, _, err = _run(
        capsys, "transfer", "--from", str(sa), "--to", "nli", "--lang", "ko",
        "--out", str(tmp_path / "x"), *SMALL,
    )  # fmt: skip
    assert code == 2 and "changes both task and language" in err and "Traceback" not in err
    code, _, err = _run(
        capsys, "transfer", "--from", str(en), "--to", "sa", "--out", str(tmp_path / "y")
    )
    assert code == 2 and "language prompt" in err
    code, _, err = _run(
        capsys, "zero-shot", "--prompt", str(sa), "--lang", "ko", "--lang-segment", "target"
    )
    assert code == 2 and "needs the target language prompt" in err


def test_project_across_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nli = tmp_path / "nli-gpt2"
    code, _, err = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", "nli", "--lang", "en", "--method", "v1",
        "--length", "4", "--out", str(nli), *SMALL,
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "proj"
    code, _, err = _run(
        capsys, "project", "--from-model", "tiny-gpt2", "--to-model", "tiny-gemma3",
        "--train-task", "sa", "--lang", "en", "--method", "v1", "--length", "4",
        "--source-steps", "2", "--steps", "3", "--hidden", "16", "--apply", str(nli),
        "--init-steps", "1", "--test-limit", "6", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_model"] == "tiny-gemma3" and len(summary["rows"]) == 2
    assert {r["task"] for r in summary["rows"]} == {"sa", "nli"}
    assert all(r["from_projection"] is not None for r in summary["rows"])
    projected = json.loads((out / "prompts" / "nli-en-v1" / "prompt.json").read_text())
    assert projected["model"] == "tiny-gemma3"  # a prompt directory of the target model
    code, _, err = _run(capsys, "eval", str(out / "prompts" / "nli-en-v1"), "--limit", "4")
    assert code == 0, err


def test_project_by_distance_minimisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = {}
    for model in ("tiny-gpt2", "tiny-gemma3"):
        for task in ("sa", "nli"):
            d = tmp_path / model / f"{task}-en"
            code, _, err = _run(
                capsys, "train", "--model", model, "--task", task, "--lang", "en", "--method",
                "v1", "--length", "4", "--out", str(d), *SMALL,
            )  # fmt: skip
            assert code == 0, err
            prompts[model, task] = d
    out = tmp_path / "proj"
    code, text, err = _run(
        capsys, "project", "--from-model", "tiny-gpt2", "--to-model", "tiny-gemma3",
        "--source-prompt", str(prompts["tiny-gpt2", "sa"]), "--objective", "distance",
        "--fit", str(prompts["tiny-gpt2", "nli"]), "--target-bank", str(tmp_path / "tiny-gemma3"),
        "--steps", "200", "--lr", "0.01", "--hidden", "32", "--test-limit", "6", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "distance minimisation over 2 task prompt pairs (sa-en, nli-en" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["projector_objective"] == "distance"
    assert summary["projector_loss_last"] < 0.2 * summary["projector_loss_first"]
    # the projected SA prompt lies near the target model's own SA prompt
    from promptatlas.bank import load_prompt
    from promptatlas.models import load_model

    gemma = load_model("tiny-gemma3")
    mine = load_prompt(prompts["tiny-gemma3", "sa"], gemma).prompt.tensor()
    projected = load_prompt(out / "prompts" / "sa-en-v1", gemma).prompt.tensor()
    gap = (projected - mine).pow(2).mean() / mine.pow(2).mean()
    assert gap < 0.2, gap
    # no target-model prompt of a fitted task: one line naming the task and the fix
    code, _, err = _run(
        capsys, "project", "--from-model", "tiny-gpt2", "--to-model", "tiny-gemma3",
        "--source-prompt", str(prompts["tiny-gpt2", "sa"]), "--objective", "distance",
        "--target-bank", str(tmp_path / "tiny-gpt2"), "--steps", "2", "--out",
        str(tmp_path / "p2"),
    )  # fmt: skip
    assert code == 2 and "holds no v1 prompt of sa-en" in err and err.count("\n") == 1, err
    code, _, err = _run(
        capsys, "project", "--from-model", "tiny-gpt2", "--to-model", "tiny-gemma3",
        "--source-prompt", str(prompts["tiny-gpt2", "sa"]), "--objective", "distance",
        "--out", str(tmp_path / "p3"),
    )  # fmt: skip
    assert code == 2 and "needs target_bank" in err, err


def test_runs_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from promptatlas.bank import ResultsDB

    with ResultsDB(tmp_path / "a.sqlite") as db:
        db.record(kind="x", model="m", task="sa", lang="en", method="v1", split="test",
                  metrics={"score": 0.5}, config={}, key="k1")  # fmt: skip
    code, text, _ = _run(
        capsys, "runs", "--merge", str(tmp_path / "a.sqlite"), "--db", str(tmp_path / "b.sqlite")
    )
    assert code == 0 and "merged 1 new runs" in text
    code, text, _ = _run(
        capsys, "runs", "--merge", str(tmp_path / "a.sqlite"), "--db", str(tmp_path / "b.sqlite")
    )
    assert "merged 0 new runs" in text
    code, _, err = _run(
        capsys, "runs", "--merge", str(tmp_path / "none.sqlite"), "--db", str(tmp_path / "b.sqlite")
    )
    assert code == 2 and "does not exist" in err


def test_lang_prompt_without_heldout_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, err = _run(
        capsys, "lang-prompt", "--model", "tiny-gpt2", "--lang", "en", "--steps", "1",
        "--text-limit", "3", "--max-length", "24", "--out", str(tmp_path / "l"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "no held-out text" in text and (tmp_path / "l" / "prompt.json").exists()
