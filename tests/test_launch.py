"""Multi-process launchers (accelerate launch, torchrun, mpirun) are refused with a message that
names the variable and what to do instead; a single process runs as usual."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptatlas.cli import main
from promptatlas.launch import LaunchError, launched_processes, refuse_multi_process_launch


@pytest.mark.parametrize(
    ("env", "found"),
    [
        ({}, None),
        ({"WORLD_SIZE": "1", "RANK": "0"}, None),  # accelerate launch --num_processes 1
        ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "2"}, ("WORLD_SIZE", 4)),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, ("OMPI_COMM_WORLD_SIZE", 2)),
        ({"WORLD_SIZE": ""}, None),
    ],
)
def test_launched_processes(env: dict[str, str], found: tuple[str, int] | None) -> None:
    assert launched_processes(env) == found


def test_refusal_names_the_launcher_and_the_way_out() -> None:
    with pytest.raises(LaunchError) as err:
        refuse_multi_process_launch({"WORLD_SIZE": "8"})
    text = str(err.value)
    assert "WORLD_SIZE=8" in text and "accelerate launch" in text
    assert "--executor ray --gpus-per-cell 1" in text


def test_cli_refuses_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "p"
    code = main(["train", "--model", "tiny-gpt2", "--task", "sa", "--lang", "en",
                 "--steps", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("promptatlas: error: started as one of 2 processes")
    assert "Traceback" not in err
    assert not out.exists()


def test_library_train_run_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptatlas.runs.train import RunConfig, train_run

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError):
        train_run(RunConfig(task="sa", lang="en", model="tiny-gpt2"), tmp_path / "p")
    assert not (tmp_path / "p").exists()
