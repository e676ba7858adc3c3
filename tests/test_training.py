"""Training: the loss goes down, seeds reproduce bytes, resume equals an uninterrupted run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.evaluation import evaluate
from promptatlas.formatting import TaskFormatter, collate
from promptatlas.prompts import PromptConfig, PromptedLM, SegmentConfig, SoftPrompt
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig, TrainConfigError, train_prompt


def _setup(handle: Any, method: str = "v1", **prompt_kw: Any) -> tuple[PromptedLM, TaskFormatter]:
    prompt = SoftPrompt(PromptConfig(method=method, length=4, **prompt_kw), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    return PromptedLM(handle, prompt), TaskFormatter(handle.tokenizer, get_task("sa", "en"))


@pytest.fixture(scope="module")
def train_set() -> list[Any]:
    return load_split("sa", "en", "train", limit=24)


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_loss_goes_down(tiny_handles: dict[str, Any], train_set: list[Any], method: str) -> None:
    plm, fmt = _setup(tiny_handles["tiny-llama"], method)
    batch = collate([fmt.encode(ex) for ex in train_set[:8]], fmt.tokenizer.pad_token_id)
    from promptatlas.evaluation.predict import target_loss

    with torch.no_grad():
        before = float(target_loss(plm, batch))
    cfg = TrainConfig(
        steps=25, batch_size=8, lr=0.3, warmup=0.0, checkpoint_every=0, objective="lm"
    )
    result = train_prompt(plm, fmt, train_set, cfg, progress=False)
    with torch.no_grad():
        after = float(target_loss(plm, batch))
    assert after < before - 0.2, (before, after)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_rank_loss_goes_down(
    tiny_handles: dict[str, Any], train_set: list[Any], method: str
) -> None:
    from promptatlas.evaluation.predict import label_suffixes, rank_loss
    from promptatlas.formatting import EncodedExample

    plm, fmt = _setup(tiny_handles["tiny-llama"], method)
    contexts = [fmt.encode_context(ex, reserve=1) for ex in train_set]
    batch = collate(
        [EncodedExample(tuple(c), len(c)) for c in contexts], fmt.tokenizer.pad_token_id
    )
    golds = torch.tensor([fmt.task.labels.index(str(ex.label)) for ex in train_set])

    def loss() -> float:
        with torch.no_grad():
            return float(rank_loss(plm, batch, golds, label_suffixes(fmt)))

    before = loss()
    cfg = TrainConfig(
        steps=25, batch_size=8, lr=0.3, warmup=0.0, checkpoint_every=0, objective="rank"
    )
    result = train_prompt(plm, fmt, train_set, cfg, progress=False)
    assert result.objective == "rank" and result.lr == 0.3
    assert loss() < before - 0.05, (before, loss())


def test_same_seed_same_bytes(tiny_handles: dict[str, Any], train_set: list[Any]) -> None:
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.05, checkpoint_every=0, seed=7)
    out = []
    for _ in range(2):
        plm, fmt = _setup(tiny_handles["tiny-gpt2"])
        train_prompt(plm, fmt, train_set, cfg, progress=False)
        assert plm.prompt is not None
        out.append(plm.prompt.tensor().detach().numpy().tobytes())
    assert out[0] == out[1]
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    train_prompt(plm, fmt, train_set, TrainConfig(**{**cfg.to_dict(), "seed": 8}), progress=False)
    assert plm.prompt is not None
    assert plm.prompt.tensor().detach().numpy().tobytes() != out[0]


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_resume_equals_uninterrupted(
    tiny_handles: dict[str, Any], train_set: list[Any], tmp_path: Path, method: str
) -> None:
    cfg = TrainConfig(steps=10, batch_size=4, lr=0.05, checkpoint_every=3, warmup=0.2)
    plm, fmt = _setup(tiny_handles["tiny-gemma3"], method)
    full = train_prompt(plm, fmt, train_set, cfg, progress=False)
    assert plm.prompt is not None
    reference = plm.prompt.tensor().detach().clone()

    plm2, fmt2 = _setup(tiny_handles["tiny-gemma3"], method)
    part = train_prompt(
        plm2, fmt2, train_set, cfg, checkpoint_dir=tmp_path, progress=False, stop_after=7
    )
    assert part.steps == 7 and (tmp_path / "checkpoint.safetensors").exists()
    # a new process would start from a fresh prompt: the checkpoint restores everything
    plm3, fmt3 = _setup(tiny_handles["tiny-gemma3"], method)
    resumed = train_prompt(plm3, fmt3, train_set, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed.steps == 10
    assert plm3.prompt is not None
    assert torch.equal(plm3.prompt.tensor().detach(), reference)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert not (tmp_path / "checkpoint.safetensors").exists()  # cleaned up when finished


def test_frozen_segment_bytes_unchanged(tiny_handles: dict[str, Any], train_set: list[Any]) -> None:
    handle = tiny_handles["tiny-llama"]
    cfg = PromptConfig(
        method="v2", segments=(SegmentConfig("lang", 3, trainable=False), SegmentConfig("task", 3))
    )
    prompt = SoftPrompt(cfg, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    lang_before = prompt.segments["lang"].detach().clone()
    task_before = prompt.segments["task"].detach().clone()
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    train_prompt(
        PromptedLM(handle, prompt), fmt, train_set, TrainConfig(steps=5, lr=0.1), progress=False
    )
    assert torch.equal(prompt.segments["lang"].detach(), lang_before)
    assert not torch.equal(prompt.segments["task"].detach(), task_before)
    # and the model itself never moves
    assert all(not p.requires_grad for p in handle.model.parameters())


def test_early_stopping_keeps_best(tiny_handles: dict[str, Any], train_set: list[Any]) -> None:
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    dev = load_split("sa", "en", "dev", limit=16)
    seen: list[tuple[int, float]] = []
    cfg = TrainConfig(steps=40, batch_size=4, lr=0.5, eval_every=2, patience=2, checkpoint_every=0)
    result = train_prompt(
        plm, fmt, train_set, cfg, dev=dev, progress=False, on_eval=lambda s, v: seen.append((s, v))
    )
    assert result.best_dev == max(v for _, v in seen)
    # The prompt handed back is the best one, not the last: it scores best_dev again.
    assert evaluate(plm, fmt, list(dev)[: cfg.dev_limit]).score == result.best_dev
    if result.stopped_early:
        assert result.steps < 40
        # Only a strictly better score counts as a gain, so a tie later does not reset it.
        first_best = min(i for i, (_, v) in enumerate(seen) if v == result.best_dev)
        assert len(seen) - 1 - first_best == 2  # stopped after `patience` evaluations w/o gain


def test_config_errors_name_the_problem(tiny_handles: dict[str, Any]) -> None:
    with pytest.raises(TrainConfigError, match="steps or epochs"):
        TrainConfig(steps=None, epochs=None)
    with pytest.raises(TrainConfigError, match="lr"):
        TrainConfig(lr=-1)
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    with pytest.raises(TrainConfigError, match="no training examples"):
        train_prompt(plm, fmt, [], TrainConfig(steps=1), progress=False)
    assert plm.prompt is not None
    plm.prompt.set_trainable("task", False)
    with pytest.raises(TrainConfigError, match="frozen"):
        train_prompt(plm, fmt, load_split("sa", "en", "train", limit=2), TrainConfig(steps=1))


def _counting_loss(monkeypatch: pytest.MonkeyPatch, at: int | None, action: Any) -> list[int]:
    """Count the trainer's loss calls (one per step here); on call number ``at`` run ``action``."""
    from promptatlas.training import trainer

    calls: list[int] = []

    def spying(real: Any) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if at is not None and len(calls) == at:
                action()
            return real(*args, **kwargs)

        return spy

    # Whichever objective the run uses (classification defaults to "rank").
    monkeypatch.setattr(trainer, "target_loss", spying(trainer.target_loss))
    monkeypatch.setattr(trainer, "rank_loss", spying(trainer.rank_loss))
    return calls


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "how", ["SIGINT", "SIGTERM", "KeyboardInterrupt-in-step", "KeyboardInterrupt-in-eval"]
)
def test_interrupt_before_the_interval_resumes_there(
    tiny_handles: dict[str, Any],
    train_set: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Ctrl-C / kill at step k < checkpoint_every: a checkpoint of step k is written, a rerun
    resumes at k and ends with the bytes of an uninterrupted run; no folder is left behind."""
    import os
    import signal

    from promptatlas.training import TrainingInterrupted

    handle = tiny_handles["tiny-gpt2"]
    dev = load_split("sa", "en", "dev", limit=6)
    cfg = TrainConfig(steps=8, batch_size=4, lr=0.05, eval_every=2, checkpoint_every=50)
    plm, fmt = _setup(handle)
    full = train_prompt(plm, fmt, train_set, cfg, dev=dev, progress=False)
    assert plm.prompt is not None
    reference = plm.prompt.tensor().detach().clone()

    k = 5
    folder = tmp_path / ".p.checkpoint"
    on_eval = None
    if how.startswith("SIG"):
        signum = getattr(signal, how)
        _counting_loss(monkeypatch, k, lambda: os.kill(os.getpid(), signum))  # during step k
    elif how == "KeyboardInterrupt-in-step":
        _counting_loss(monkeypatch, k + 1, _raise_keyboard_interrupt)  # during step k + 1
    else:
        k = 4  # the dev evaluation after step 4 is cut short: the step is kept, eval redone

        def on_eval(step: int, score: float) -> None:
            if step == k:
                raise KeyboardInterrupt

    plm2, fmt2 = _setup(handle)
    # Whatever handlers the process had (a background CI job starts with SIGINT ignored).
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as info:
        train_prompt(
            plm2, fmt2, train_set, cfg, dev=dev, checkpoint_dir=folder, progress=False,
            on_eval=on_eval,
        )  # fmt: skip
    assert info.value.checkpoint_step == k and (folder / "checkpoint.safetensors").is_file()
    assert "rerun the same command to resume" in str(info.value)
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored

    calls = _counting_loss(monkeypatch, None, None)
    plm3, fmt3 = _setup(handle)
    resumed = train_prompt(
        plm3, fmt3, train_set, cfg, dev=dev, checkpoint_dir=folder, progress=False
    )
    assert len(calls) == cfg.steps - k  # resumed at step k, not at 0
    assert plm3.prompt is not None
    assert plm3.prompt.tensor().detach().numpy().tobytes() == reference.numpy().tobytes()
    assert resumed.history == full.history and resumed.best_dev == full.best_dev
    assert not folder.exists()


def test_finished_run_leaves_no_checkpoint_folder(
    tiny_handles: dict[str, Any], train_set: list[Any], tmp_path: Path
) -> None:
    folder = tmp_path / ".p.checkpoint"
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    cfg = TrainConfig(steps=7, batch_size=4, lr=0.05, checkpoint_every=3)
    train_prompt(plm, fmt, train_set, cfg, checkpoint_dir=folder, progress=False)
    assert not folder.exists()
    # keep_checkpoint: the caller removes it once the result is stored
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    train_prompt(plm, fmt, train_set, cfg, checkpoint_dir=folder, progress=False,
                 keep_checkpoint=True)  # fmt: skip
    from promptatlas.training import has_checkpoint, remove_checkpoint

    assert has_checkpoint(folder)
    remove_checkpoint(folder)
    assert not folder.exists()


class _Payload:
    """A pickle that, when loaded, creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["checkpoint.pt", "checkpoint.safetensors"])
def test_pickled_checkpoint_is_never_executed(
    tiny_handles: dict[str, Any], train_set: list[Any], tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / ".p.checkpoint"
    folder.mkdir()
    torch.save({"fingerprint": _Payload(marker)}, folder / name)
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    error: Exception | None = None
    try:
        train_prompt(plm, fmt, train_set, TrainConfig(steps=2), checkpoint_dir=folder,
                     progress=False)  # fmt: skip
    except ValueError as exc:
        error = exc
    assert not marker.exists()  # the pickle never ran
    from promptatlas.training import CheckpointError

    assert isinstance(error, CheckpointError) and f"delete {folder}" in str(error)


def test_step_callbacks_get_each_record(
    tiny_handles: dict[str, Any], train_set: list[Any], tmp_path: Path
) -> None:
    from promptatlas.training.curves import CurveWriter, read_curve

    seen: list[Mapping[str, Any]] = []
    dev = load_split("sa", "en", "dev", limit=4)
    cfg = TrainConfig(steps=4, batch_size=4, lr=0.05, eval_every=2, checkpoint_every=0)
    plm, fmt = _setup(tiny_handles["tiny-gpt2"])
    with CurveWriter(tmp_path / "curve.jsonl") as writer:
        result = train_prompt(
            plm, fmt, train_set, cfg, dev=dev, progress=False, step_callbacks=[seen.append, writer]
        )
    assert seen == result.history and [r["step"] for r in seen] == [1, 2, 3, 4]
    assert "dev" in seen[1] and "dev" not in seen[0]
    curve = read_curve(tmp_path / "curve.jsonl")
    assert [r["loss"] for r in curve] == [r["loss"] for r in seen]
