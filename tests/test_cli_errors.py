"""Former tracebacks end in one line `promptatlas: error: …` with exit 2: write errors, results
databases that cannot be used, devices this machine lacks, exports into a full folder, prompts
that do not fit the model's context window (checked in the library, for every family)."""

from __future__ import annotations

import errno
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import promptatlas.cli as cli
from promptatlas.bank import ResultsDB, ResultsDBError
from promptatlas.cli import main
from promptatlas.models import DeviceError, resolve_device
from promptatlas.prompts import PromptConfigError, PromptSizeWarning, check_context

TRAIN = ["train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en", "--steps", "1",
         "--train-limit", "4", "--test-limit", "2", "--length", "2", "--quiet"]  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("promptatlas: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("exc", "needles"),
    [
        (FileExistsError(errno.EEXIST, "File exists", "/x/p"), ["File exists", "/x/p", "remove"]),
        (PermissionError(errno.EACCES, "Permission denied", "/ro"), ["/ro", "permissions"]),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro"), ["/mnt/ro", "read-only"]),
        (OSError(errno.ENOSPC, "No space left on device", "/d"), ["/d", "disk is full"]),
        (OSError(errno.ENOTDIR, "Not a directory", "/f/x"), ["/f/x", "not a folder"]),
        (sqlite3.OperationalError("database is locked"), ["results database", "--db"]),
    ],
)
def test_os_and_sqlite_errors_are_one_line(
    exc: BaseException,
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fails(_: Any) -> int:
        raise exc

    monkeypatch.setitem(cli._COMMANDS, "models", fails)
    _one_line_error(capsys, ["models"], *needles)
    monkeypatch.setenv("PROMPTATLAS_DEBUG", "1")  # the traceback on request
    with pytest.raises(type(exc)):
        main(["models"])


def test_db_that_cannot_be_used_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    for db, needle in (
        (corrupt, "not a SQLite database"),
        (tmp_path, "is a directory"),
        (Path("/proc/promptatlas/results.sqlite"), "/proc/promptatlas"),
    ):
        _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "p"), "--db", str(db)],
                        str(db), needle, "--db")  # fmt: skip
        if db.exists():  # `runs` on a missing database says so (exit 0), see test_records
            _one_line_error(capsys, ["runs", "--db", str(db)], str(db), needle, "--db")
    assert not (tmp_path / "p").exists()  # refused before training


def test_read_only_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsDB(path) as db:
        db.record(kind="train", model="m", task="sa", lang="en", method="v1", split="test",
                  metrics={"score": 0.5}, config={})  # fmt: skip
    # A database that cannot be written (read-only file or folder) is still listed...
    with ResultsDB(path, readonly=True) as db:
        assert len(db) == 1 and db.find(task="sa")[0].score == 0.5
        # ...and writing to it is one clear error naming the file (root cannot make a file
        # read-only here, so the connection is opened read-only instead).
        with pytest.raises(ResultsDBError, match=r"r\.sqlite cannot be written.*read-only"):
            db.record(kind="train", model="m", task="sa", lang="en", method="v1", split="test",
                      metrics={}, config={})  # fmt: skip


def test_read_only_database_in_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import promptatlas.bank.results as results

    real = results.sqlite3.connect

    def read_only(target: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if kwargs.get("uri"):
            return real(target, *args, **kwargs)
        return real(Path(target).as_uri() + "?mode=ro", *args, uri=True, **kwargs)

    path = tmp_path / "ro.sqlite"
    ResultsDB(path).close()
    monkeypatch.setattr(results.sqlite3, "connect", read_only)
    import transformers

    loaded: list[Any] = []
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a)
    )
    _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "p"), "--db", str(path)],
                    "ro.sqlite", "read-only")  # fmt: skip
    assert not loaded  # found before the model loads, not after training


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "tpu", "npu:0", "nonsense"])
def test_missing_device_is_one_line_before_any_weights_load(
    device: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import transformers

    loaded: list[Any] = []
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a)
    )
    _one_line_error(capsys, [*TRAIN, "--out", str(tmp_path / "p"), "--device", device],
                    repr(device))  # fmt: skip
    assert not loaded
    with pytest.raises(DeviceError):
        resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


def test_export_into_a_non_empty_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*TRAIN, "--out", str(tmp_path / "p")]) == 0
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    _one_line_error(capsys, ["export", str(tmp_path / "p"), "--out", str(full)], str(full))
    assert (full / "notes.txt").read_text() == "keep me"


def test_prompt_longer_than_the_context_window_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a if a != "2" else "100000" for a in TRAIN]  # --length 100000 (GPT-2: IndexError)
    _one_line_error(capsys, [*argv, "--out", str(tmp_path / "p")], "100000-position prompt",
                    "context window of 512", "--length")  # fmt: skip
    argv = [a if a != "2" else "400" for a in TRAIN]  # fits alone, not with SA's input budget
    _one_line_error(capsys, [*argv, "--out", str(tmp_path / "p")], "400-position prompt",
                    "budget of 256", "--length ≤ 256")  # fmt: skip
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama", "tiny-gemma3"])
def test_context_window_is_checked_for_every_family(
    family: str, tiny_handles: dict[str, Any]
) -> None:
    from promptatlas.formatting import TaskFormatter
    from promptatlas.models.adapters import context_window
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
    from promptatlas.tasks import get_task

    handle = tiny_handles[family]
    window = context_window(handle.model.config)
    assert window == 512
    with pytest.raises(PromptConfigError, match="context window of 512"):
        check_context(window, handle)
    with pytest.raises(PromptConfigError, match="budget of 64"):
        check_context(window - 10, handle, budget=64, task="sa-en")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_context(20, handle, budget=256)  # the usual case: silent
    with pytest.warns(PromptSizeWarning, match="300-position prompt"):
        check_context(300, handle, budget=64)  # absurd: more than half the window
    # The forward pass itself refuses input that runs past the window, instead of an index
    # error (GPT-2) or silently degraded positions (rotary families).
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    plm = PromptedLM(handle, SoftPrompt(PromptConfig(method="v1", length=200), handle.geometry))
    ids = torch.ones(1, 400, dtype=torch.long)
    with pytest.raises(PromptConfigError, match="600"):
        plm.forward(ids, torch.ones_like(ids))
    assert fmt.max_length == 256
