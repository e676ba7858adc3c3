"""Live training curves: one JSON line per step, optionally TensorBoard, and a PNG of the curve.

:class:`CurveWriter` is a step callback. Called with the trainer's record of each step (a
mapping with ``step``, ``loss``, ``lr`` and, on evaluation steps, ``dev``), it appends one line
to a JSONL file, flushed at once so ``tail -f`` or a notebook sees it during training::

    {"step": 15, "loss": 0.6931, "lr": 0.3, "dev": 0.703, "seconds": 41.2}

``seconds`` is the wall-clock time since training started (continued across a resumed run: a
writer opened on an existing file starts from its last record). Given a ``tensorboard`` folder
it also writes TensorBoard event files (``train/loss``, ``train/lr``, ``dev/score``) when
``torch.utils.tensorboard`` can be imported (``pip install tensorboard``); without it the
TensorBoard part is skipped with a one-line notice and the JSONL is still written.

Any other tracker attaches the same way, without promptatlas depending on it: a step callback
is any callable taking the record, e.g. ``lambda r: mlflow.log_metrics({k: v for k, v in
r.items() if k != "step"}, step=r["step"])`` or ``lambda r: wandb.log(dict(r), step=r["step"])``.

A resumed run repeats the steps after its last checkpoint, so a file may hold a step twice:
:func:`read_curve` keeps the last record of each step (and skips a line cut short by a crash).
:func:`plot_curve` draws the loss and dev score against the step, and the learning rate below.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["CurveWriter", "StepCallback", "plot_curve", "read_curve"]

StepCallback = Callable[[Mapping[str, Any]], None]

_TB_TAGS = {"loss": "train/loss", "lr": "train/lr", "dev": "dev/score"}
_KNOWN = ("step", "loss", "lr", "dev", "seconds")


def _number(value: Any) -> float | int | None:
    """A JSON-able number, or None for what is not one (tensors are turned into numbers)."""
    if value is None or isinstance(value, bool):
        return None
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    return None


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return False
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


class CurveWriter:
    """Append per-step records to ``path`` (JSONL) and, optionally, to TensorBoard.

    Use it as the trainer's step callback (``writer(record)``) or call :meth:`log` directly;
    :meth:`close` (or a ``with`` block) closes the files. ``notice`` receives the one-line
    message when TensorBoard was asked for but is not installed (default: standard error)."""

    def __init__(
        self,
        path: str | Path,
        *,
        tensorboard: str | Path | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = read_curve(self.path) if self.path.exists() else []
        self._offset = float(previous[-1].get("seconds") or 0.0) if previous else 0.0
        self._started = time.perf_counter()
        self._file: TextIO | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if _ends_mid_line(self.path):
            self._file.write("\n")  # a line cut short by a crash stays a line of its own
        self._tb: Any = None
        self.tensorboard_dir: Path | None = None
        if tensorboard is not None:
            self._tb = self._open_tensorboard(Path(tensorboard), notice)

    def _open_tensorboard(self, folder: Path, notice: Callable[[str], None] | None) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            say = notice or (lambda line: print(line, file=sys.stderr))
            say(
                f"promptatlas: TensorBoard is not installed (pip install tensorboard), so no "
                f"event files go to {folder}; the curve is still written to {self.path}"
            )
            return None
        self.tensorboard_dir = folder
        return SummaryWriter(log_dir=str(folder))

    @property
    def tensorboard_enabled(self) -> bool:
        return self._tb is not None

    def __call__(self, record: Mapping[str, Any]) -> None:
        """The step callback: ``record`` has ``step`` and any of loss, lr, dev, seconds and
        other numbers (logged too, under their own names)."""
        fields = {k: v for k, v in record.items() if k not in _KNOWN}
        self.log(
            int(record["step"]),
            loss=record.get("loss"),
            lr=record.get("lr"),
            dev=record.get("dev"),
            seconds=record.get("seconds"),
            **fields,
        )

    def log(
        self,
        step: int,
        *,
        loss: float | None = None,
        lr: float | None = None,
        dev: float | None = None,
        seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write one step's record (values that are None are left out) and return it."""
        if self._file is None:
            raise ValueError(f"the curve writer of {self.path} is closed")
        elapsed = (
            float(seconds)
            if seconds is not None
            else self._offset + time.perf_counter() - self._started
        )
        record: dict[str, Any] = {"step": int(step)}
        for key, value in (("loss", loss), ("lr", lr), ("dev", dev), *extra.items()):
            number = _number(value)
            if number is not None:
                record[key] = number
        record["seconds"] = round(elapsed, 3)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key in ("step", "seconds"):
                    continue
                tag = _TB_TAGS.get(key, f"train/{key}")
                self._tb.add_scalar(tag, value, global_step=record["step"])
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_curve(path: str | Path) -> list[dict[str, Any]]:
    """The records of a curve file in step order, the last record of each step (a resumed run
    repeats steps); lines that are not JSON objects with a step (a line cut short) are
    skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _series(records: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(int(record["step"]))
            ys.append(float(value))
    return xs, ys


def plot_curve(
    source: str | Path | Iterable[Mapping[str, Any]],
    out: str | Path,
    *,
    title: str | None = None,
    dpi: int = 130,
) -> Path:
    """Draw a curve file (or records) as a PNG: loss and dev score against the step on top,
    the learning rate below. Written atomically; returns ``out``."""
    from matplotlib.figure import Figure

    from promptatlas.io import atomic_file

    if isinstance(source, str | Path):
        records = read_curve(source)
        title = title if title is not None else Path(source).stem
    else:
        records = sorted((dict(r) for r in source), key=lambda r: int(r["step"]))
    fig = Figure(figsize=(6.0, 4.2), constrained_layout=True)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    xs, ys = _series(records, "loss")
    if xs:
        top.plot(xs, ys, color="tab:blue", linewidth=1.2, label="train loss")
    top.set_ylabel("loss")
    dev_x, dev_y = _series(records, "dev")
    if dev_x:
        right = top.twinx()
        right.plot(dev_x, dev_y, "o-", color="tab:orange", markersize=3, label="dev score")
        right.set_ylabel("dev score")
        best = max(range(len(dev_y)), key=dev_y.__getitem__)
        right.annotate(
            f"best {dev_y[best]:.3f}",
            (dev_x[best], dev_y[best]),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
        )
        handles = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        top.legend(handles=handles, loc="upper right", fontsize=8)
    elif xs:
        top.legend(loc="upper right", fontsize=8)
    lr_x, lr_y = _series(records, "lr")
    if lr_x:
        bottom.plot(lr_x, lr_y, color="tab:green", linewidth=1.0)
    bottom.set_ylabel("lr")
    bottom.set_xlabel("step")
    if not records:
        top.text(0.5, 0.5, "no steps recorded yet", ha="center", va="center",
                 transform=top.transAxes)  # fmt: skip
    if title:
        top.set_title(title)
    path = Path(out)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path
