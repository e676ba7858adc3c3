"""Outputs: nothing replaced without --overwrite, bad output paths refused before any model loads,
Ctrl-C keeps the current step, files and folders follow the umask."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.cli import main

TINY_TRAIN = ["--model", "tiny-gpt2", "--lang", "en", "--length", "2", "--train-limit", "8",
              "--test-limit", "4", "--batch-size", "4", "--quiet"]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str) -> str:
    assert err.startswith("promptatlas: error:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# -- defect 1: a prompt directory is never replaced without --overwrite ----------------------


def test_second_run_into_the_same_out_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "P"
    code, _, _ = _run(
        capsys, "train", "--task", "sa", "--steps", "2", *TINY_TRAIN, "--out", str(out)
    )
    assert code == 0
    before = (out / "prompt.safetensors").read_bytes()

    code, _, err = _run(capsys, "train", "--task", "nli", "--steps", "2", *TINY_TRAIN,
                        "--out", str(out))  # fmt: skip
    assert code == 2
    _one_line_error(err)
    assert str(out) in err and "sa-en" in err and "--overwrite" in err
    assert json.loads((out / "prompt.json").read_text())["task"] == "sa"  # untouched
    assert (out / "prompt.safetensors").read_bytes() == before

    code, _, err = _run(capsys, "train", "--task", "nli", "--steps", "2", *TINY_TRAIN,
                        "--out", str(out), "--overwrite")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "prompt.json").read_text())["task"] == "nli"


def test_library_save_refuses_to_replace(tiny_handles: dict[str, Any], tmp_path: Path) -> None:
    from promptatlas.bank import PromptExistsError, save_prompt
    from promptatlas.prompts import PromptConfig, SoftPrompt

    handle = tiny_handles["tiny-gpt2"]
    prompt = SoftPrompt(PromptConfig(length=2), handle.geometry)
    save_prompt(tmp_path / "p", prompt, handle, task="sa", lang="en")
    with pytest.raises(PromptExistsError, match=r"sa-en prompt.*overwrite"):
        save_prompt(tmp_path / "p", prompt, handle, task="nli", lang="en")
    save_prompt(tmp_path / "p", prompt, handle, task="nli", lang="en", overwrite=True)


# -- defect 3: Ctrl-C keeps the current step; the rerun resumes there -------------------------


def test_ctrl_c_then_rerun_resumes_at_that_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT at step 3 of 6 with --checkpoint-every 50: exit 130 naming the checkpoint; the
    same command (no --overwrite needed: it resumes the run that replaces P) trains only the
    remaining 3 steps and stores the bytes of an uninterrupted run."""
    import signal

    from promptatlas.training import trainer

    args = ["train", "--task", "nli", "--steps", "6", "--checkpoint-every", "50", *TINY_TRAIN]
    assert _run(capsys, *args, "--out", str(tmp_path / "reference"))[0] == 0
    out = tmp_path / "P"
    # P already holds another prompt; the interrupted run was asked to replace it
    assert (
        _run(capsys, "train", "--task", "sa", "--steps", "1", *TINY_TRAIN, "--out", str(out))[0]
        == 0
    )

    real = trainer.rank_loss  # NLI is classification: the default objective is "rank"
    calls: list[int] = []

    def spy(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if interrupt and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 3 runs
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "rank_loss", spy)
    interrupt = True
    code, _, err = _run(capsys, *args, "--out", str(out), "--overwrite")
    assert code == 130
    assert "step 3 of 6" in err and "rerun the same command to resume" in err, err
    assert json.loads((out / "prompt.json").read_text())["task"] == "sa"  # not replaced yet

    interrupt, calls[:] = False, []
    code, _, err = _run(capsys, *args, "--out", str(out))
    assert code == 0, err
    assert len(calls) == 3  # steps 4-6 only
    assert (out / "prompt.safetensors").read_bytes() == (
        tmp_path / "reference" / "prompt.safetensors"
    ).read_bytes()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


# -- defect 4: bad output paths fail before any model loads -----------------------------------


@pytest.fixture
def source_prompt(tiny_handles: dict[str, Any], tmp_path: Path) -> Path:
    from promptatlas.bank import save_prompt
    from promptatlas.prompts import PromptConfig, SoftPrompt

    handle = tiny_handles["tiny-gpt2"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=2), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    return save_prompt(tmp_path / "source", prompt, handle, task="sa", lang="en", seed=42)


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every model load goes through from_pretrained; record and refuse it."""
    import transformers

    loads: list[str] = []

    def spy(name: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(str(name))
        raise AssertionError(f"a model was loaded ({name}) before the output path was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    yield loads
    assert loads == []


def _bad_path(tmp_path: Path, case: str) -> tuple[Path, str]:
    if case == "proc":
        return Path("/proc/promptatlas-test/out"), "/proc"
    if case == "sys":  # read-only even for root
        return Path("/sys/promptatlas-test"), "/sys"
    if case == "file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file", "existing file"
    if case == "under-file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file" / "out", "is a file"
    if case == "non-empty":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "notes.txt").write_text("keep me")
        return tmp_path / "data", "non-empty directory"
    assert case == "read-only"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    return tmp_path / "ro" / "out", "Permission denied"


COMMANDS = {
    "train": ["train", "--task", "sa", "--steps", "1", *TINY_TRAIN],
    "lang-prompt": ["lang-prompt", "--model", "tiny-gpt2", "--lang", "en", "--steps", "1"],
    "transfer": ["transfer", "--from", "{source}", "--to", "nli", "--steps", "1"],
    "export": ["export", "{source}"],
    "project": ["project", "--from-model", "tiny-gpt2", "--to-model", "tiny-llama",
                "--source-prompt", "{source}", "--steps", "1"],
    "analyze": ["analyze", "pca", "--prompts", "{source}"],
    "run": ["run", "{experiment}"],
}  # fmt: skip
FOLDERS = {"project", "analyze", "run"}  # written into, so any existing directory will do


@pytest.mark.parametrize("case", ["proc", "sys", "file", "under-file", "non-empty", "read-only"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_out_fails_before_the_model_loads(
    command: str,
    case: str,
    tmp_path: Path,
    source_prompt: Path,
    no_model_loads: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case == "non-empty" and command in FOLDERS:
        pytest.skip("an existing folder is fine for outputs written into a folder")
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (the /proc case covers it)")
    out, why = _bad_path(tmp_path, case)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "model: tiny-gpt2\ntasks: [sa]\nlangs: [en]\nmethods: {v1: {length: 2}}\n"
        "train: {steps: 1}\n"
    )
    argv = [a.format(source=source_prompt, experiment=experiment) for a in COMMANDS[command]]
    code, _, err = _run(capsys, *argv, "--out", str(out))
    assert code == 2
    _one_line_error(err)
    assert str(out) in err and why in err


# -- defect 9: files and directories follow the umask ----------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tiny_handles: dict[str, Any], tmp_path: Path, umask: int) -> None:
    from promptatlas.bank import export_peft, save_prompt, write_text_atomic
    from promptatlas.prompts import PromptConfig, SoftPrompt
    from promptatlas.report.figures import save_figure, subplots
    from promptatlas.training import TrainConfig, train_prompt

    handle = tiny_handles["tiny-llama"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=2), handle.geometry)
    previous = os.umask(umask)
    try:
        bank = save_prompt(tmp_path / "bank" / "p", prompt, handle, task="sa", lang="en")
        peft = export_peft(bank, tmp_path / "peft", handle)
        write_text_atomic(tmp_path / "notes.txt", "x")
        fig, _ = subplots(1, 1)
        save_figure(fig, tmp_path / "fig.png")
        # a checkpoint of an interrupted run
        from promptatlas.formatting import TaskFormatter
        from promptatlas.prompts import PromptedLM
        from promptatlas.tasks import get_task, load_split

        fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
        train_prompt(PromptedLM(handle, prompt), fmt, load_split("sa", "en", "train", limit=4),
                     TrainConfig(steps=2, batch_size=4), checkpoint_dir=tmp_path / "ck",
                     progress=False, stop_after=1)  # fmt: skip
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for directory in (bank, peft, tmp_path / "ck"):
        assert mode(directory) == 0o777 & ~umask, directory
    files = [*bank.iterdir(), *peft.iterdir(), tmp_path / "notes.txt", tmp_path / "fig.png",
             *(tmp_path / "ck").iterdir()]  # fmt: skip
    for file in files:
        assert mode(file) == 0o666 & ~umask, file
