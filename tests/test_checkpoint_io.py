"""Checkpoint files: tensors + JSON state round trip exactly, writes are atomic, nothing is ever
unpickled, an optimiser resumes bit for bit, and the trainer's own checkpoints read the same."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.training.checkpoint_io import (
    HEADER_KEY,
    CheckpointError,
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    prefixed,
    save_checkpoint,
    unprefixed,
)


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "prompt.task": torch.randn(4, 8, generator=gen),
        "best.task": torch.randn(4, 8, generator=gen).to(torch.bfloat16),
        "optimizer.0.step": torch.tensor(7.0),
        "ids": torch.arange(5),
        "empty": torch.zeros(0, 3),
    }


STATE: dict[str, Any] = {
    "step": 7,
    "history": [{"step": 1, "loss": 2.5, "dev": None}, {"step": 2, "loss": float("nan")}],
    "fingerprint": {"train": {"lr": 0.3, "betas": (0.9, 0.999)}, "name": "sa-en ✓"},
    "flags": [True, False],
}


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "sub" / "ckpt.safetensors", _tensors(), STATE)
    assert path == tmp_path / "sub" / "ckpt.safetensors"
    tensors, state = load_checkpoint(path)
    expected = _tensors()
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype
        assert torch.equal(tensors[name], value), name
    assert state["step"] == 7
    assert state["fingerprint"] == {"train": {"lr": 0.3, "betas": [0.9, 0.999]}, "name": "sa-en ✓"}
    assert state["history"][0] == {"step": 1, "loss": 2.5, "dev": None}
    assert math.isnan(state["history"][1]["loss"])
    assert state["flags"] == [True, False]
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.safetensors"]  # no temp files


def test_views_and_shared_storage_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"a": base, "b": base, "row": base[1], "col": base[:, 2], "transposed": base.t()}
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c", tensors, {}))
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value), name


def test_the_file_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "c", {"x": torch.ones(2)}, {"step": 1})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()[HEADER_KEY] == '{"step": 1}'
    data = path.read_bytes()  # safetensors: an 8-byte header length, a JSON header, raw bytes
    size = int.from_bytes(data[:8], "little")
    assert json.loads(data[8 : 8 + size])["x"]["dtype"] == "F32"


def test_bad_state_fails_before_writing(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c", {"x": torch.ones(2)}, {"step": 1})
    before = path.read_bytes()
    for state, where in (
        ({"step": torch.tensor(2)}, "state.step is a tensor"),
        ({"nested": {"path": Path("/x")}}, r"state\.nested\.path is a PosixPath"),
        ({"keys": {1: "a"}}, "JSON keys are strings"),
        ({"items": [1, {object()}]}, r"state\.items\[1\] is a set"),
    ):
        with pytest.raises(TypeError, match=where):
            save_checkpoint(path, {"x": torch.zeros(2)}, state)
    with pytest.raises(TypeError, match="not a tensor"):
        save_checkpoint(path, {"x": [1.0, 2.0]}, {})  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_interrupted_write_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(tmp_path / "c", {"x": torch.ones(2)}, {"step": 1})

    def crash(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.zeros(2)}, {"step": 2})
    monkeypatch.undo()
    tensors, state = load_checkpoint(path)
    assert state == {"step": 1} and torch.equal(tensors["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # the temporary file is gone


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c", _tensors(), STATE)

    def forbidden(*_: Any, **__: Any) -> None:
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", forbidden)
    tensors, _ = load_checkpoint(path)
    assert "prompt.task" in tensors


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_foreign_and_damaged_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none")
    pickle = tmp_path / "old.pt"
    torch.save({"x": _Payload()}, pickle)
    with pytest.raises(CheckpointError, match="not a promptatlas checkpoint or is damaged"):
        load_checkpoint(pickle)
    assert "must never run" not in capsys.readouterr().out
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(1)}, str(plain))
    with pytest.raises(CheckpointError, match="safetensors file but not a promptatlas checkpoint"):
        load_checkpoint(plain)
    good = save_checkpoint(tmp_path / "c", {"x": torch.ones(1000)}, {"step": 1})
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="delete the run folder"):
        load_checkpoint(truncated, fix="delete the run folder")


def test_prefix_helpers() -> None:
    tensors = prefixed("prompt.", {"lang": torch.ones(1), "task": torch.zeros(1)})
    assert sorted(tensors) == ["prompt.lang", "prompt.task"]
    mixed = {**tensors, "best.task": torch.ones(1)}
    assert sorted(unprefixed("prompt.", mixed)) == ["lang", "task"]
    assert sorted(unprefixed("best.", mixed)) == ["task"]


def _steps(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        loss = sum(((p - torch.randn(p.shape, generator=gen)) ** 2).sum() for p in params)
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizer_resumes_bit_for_bit(tmp_path: Path, optimizer: str) -> None:
    def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if optimizer == "adamw":
            return torch.optim.AdamW(params, lr=0.1, weight_decay=0.01)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    start = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    params = [torch.nn.Parameter(t.clone()) for t in start]
    opt = make(params)
    _steps(params, opt, 3, seed=1)
    opt_tensors, structure = optimizer_to_checkpoint(opt)
    assert all(name.startswith("optimizer.") for name in opt_tensors)
    tensors = {**prefixed("params.", {str(i): p for i, p in enumerate(params)}), **opt_tensors}
    save_checkpoint(tmp_path / "c", tensors, {"optimizer": structure})
    _steps(params, opt, 4, seed=2)  # the uninterrupted run

    loaded, state = load_checkpoint(tmp_path / "c")
    resumed = [torch.nn.Parameter(loaded[f"params.{i}"]) for i in range(2)]
    opt2 = make(resumed)
    opt2.load_state_dict(optimizer_from_checkpoint(loaded, state["optimizer"]))
    _steps(resumed, opt2, 4, seed=2)
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


def test_reads_the_trainers_checkpoint(tiny_handles: dict[str, Any], tmp_path: Path) -> None:
    from promptatlas.formatting import TaskFormatter
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
    from promptatlas.tasks import get_task, load_split
    from promptatlas.training import CHECKPOINT, TrainConfig, train_prompt

    handle = tiny_handles["tiny-llama"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=3), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.05, checkpoint_every=2)
    train = load_split("sa", "en", "train", limit=8)
    plm = PromptedLM(handle, prompt)
    train_prompt(plm, fmt, train, cfg, checkpoint_dir=tmp_path, progress=False, stop_after=2)

    tensors, state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["state"]["step"] == 2
    assert torch.equal(unprefixed("prompt.", tensors)["task"], prompt.tensor().detach())
    opt = torch.optim.AdamW(prompt.trainable_parameters(), lr=0.05)
    opt.load_state_dict(optimizer_from_checkpoint(tensors, state["optimizer"]))
    assert int(opt.state_dict()["state"][0]["step"]) == 2

    # Written back through this module, the trainer resumes from it as from its own.
    save_checkpoint(tmp_path / CHECKPOINT, tensors, state)
    resumed = train_prompt(plm, fmt, train, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed.steps == 4
