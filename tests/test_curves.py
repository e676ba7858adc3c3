"""Live training curves: JSONL records flushed per step, resumed files, TensorBoard when it is
installed (a notice when not), the PNG of a curve, and the trainer's records as input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.training.curves import CurveWriter, plot_curve, read_curve

PNG = b"\x89PNG\r\n\x1a\n"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def no_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails


def test_records_are_written_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "curves" / "sa-en.jsonl"
    with CurveWriter(path) as writer:
        writer({"step": 1, "loss": 0.9, "lr": 0.3})
        assert _lines(path)[0]["loss"] == 0.9  # flushed before the next step
        writer({"step": 2, "loss": torch.tensor(0.5), "lr": 0.29, "dev": 0.7, "grad": 1.5})
        writer.log(3, loss=0.4, note="text is not a number")  # type: ignore[arg-type]
    records = _lines(path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1] == {
        "step": 2,
        "loss": 0.5,
        "lr": 0.29,
        "dev": 0.7,
        "grad": 1.5,
        "seconds": records[1]["seconds"],
    }
    assert set(records[2]) == {"step", "loss", "seconds"}
    seconds = [r["seconds"] for r in records]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    with pytest.raises(ValueError, match="closed"):
        writer.log(4, loss=0.1)


def test_resumed_run_continues_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    with CurveWriter(path) as writer:
        for step in (1, 2, 3):
            writer.log(step, loss=1.0 / step, seconds=10.0 * step)
    with open(path, "a") as fh:
        fh.write('{"step": 4, "lo')  # a line cut short by a crash
    with CurveWriter(path) as writer:  # the resumed run redoes step 3
        again = writer.log(3, loss=0.3)
        writer.log(4, loss=0.25)
    assert again["seconds"] >= 30.0  # continues from the last record's time
    records = read_curve(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["loss"] == 0.3  # the last record of a repeated step wins


def test_without_tensorboard_a_notice(tmp_path: Path, no_tensorboard: None) -> None:
    notices: list[str] = []
    with CurveWriter(tmp_path / "c.jsonl", tensorboard=tmp_path / "tb", notice=notices.append) as w:
        assert not w.tensorboard_enabled
        w.log(1, loss=0.5)
    assert len(notices) == 1 and "pip install tensorboard" in notices[0]
    assert "\n" not in notices[0]
    assert not (tmp_path / "tb").exists()
    assert read_curve(tmp_path / "c.jsonl")[0]["loss"] == 0.5


def test_default_notice_goes_to_stderr(
    tmp_path: Path, no_tensorboard: None, capsys: pytest.CaptureFixture[str]
) -> None:
    CurveWriter(tmp_path / "c.jsonl", tensorboard=tmp_path / "tb").close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "TensorBoard" in captured.err
    CurveWriter(tmp_path / "d.jsonl").close()  # not asked for: nothing said
    assert capsys.readouterr().err == ""


def test_tensorboard_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("open", log_dir))

        def add_scalar(self, tag: str, value: float, global_step: int) -> None:
            calls.append((tag, value, global_step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    with CurveWriter(tmp_path / "c.jsonl", tensorboard=tmp_path / "tb") as writer:
        assert writer.tensorboard_enabled and writer.tensorboard_dir == tmp_path / "tb"
        writer({"step": 5, "loss": 0.5, "lr": 0.1, "dev": 0.8, "grad_norm": 2.0})
    assert calls == [
        ("open", str(tmp_path / "tb")),
        ("train/loss", 0.5, 5),
        ("train/lr", 0.1, 5),
        ("dev/score", 0.8, 5),
        ("train/grad_norm", 2.0, 5),
        ("close",),
    ]


def test_real_tensorboard_event_files(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard", reason="tensorboard is not installed (optional)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with CurveWriter(tmp_path / "c.jsonl", tensorboard=tmp_path / "tb") as writer:
        for step in (1, 2, 3):
            writer.log(step, loss=1.0 / step, lr=0.1, dev=0.5 + step / 10 if step == 3 else None)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [round(e.value, 3) for e in events.Scalars("dev/score")] == [0.8]


def test_plot(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    with CurveWriter(path) as writer:
        for step in range(1, 21):
            dev = 0.5 + step / 100 if step % 5 == 0 else None
            writer.log(step, loss=2.0 / step, lr=0.3 * (1 - step / 20), dev=dev)
    out = plot_curve(path, tmp_path / "figs" / "curve.png")
    assert out.read_bytes()[:8] == PNG
    records = [{"step": 2, "loss": 1.0}, {"step": 1, "loss": float("nan")}]
    assert plot_curve(records, tmp_path / "r.png", title="records").read_bytes()[:8] == PNG
    (tmp_path / "empty.jsonl").write_text("")
    assert plot_curve(tmp_path / "empty.jsonl", tmp_path / "e.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == ["e.png", "r.png"]


def test_the_trainers_records(tiny_handles: dict[str, Any], tmp_path: Path) -> None:
    """The records the trainer keeps (TrainResult.history) are what the callback takes."""
    from promptatlas.formatting import TaskFormatter
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
    from promptatlas.tasks import get_task, load_split
    from promptatlas.training import TrainConfig, train_prompt

    handle = tiny_handles["tiny-gpt2"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=3), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.05, eval_every=2, dev_limit=4)
    result = train_prompt(
        PromptedLM(handle, prompt),
        fmt,
        load_split("sa", "en", "train", limit=8),
        cfg,
        dev=load_split("sa", "en", "dev", limit=4),
        progress=False,
    )
    with CurveWriter(tmp_path / "c.jsonl") as writer:
        for record in result.history:
            writer(record)
    records = read_curve(tmp_path / "c.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["loss"] for r in records] == [h["loss"] for h in result.history]
    assert [r.get("dev") for r in records] == [h.get("dev") for h in result.history]
    assert records[1]["dev"] is not None and "dev" not in records[0]
    assert plot_curve(tmp_path / "c.jsonl", tmp_path / "c.png").read_bytes()[:8] == PNG
