"""Training a soft prompt on a frozen model.

Only prompt parameters get gradients (the model is frozen and in eval mode, so there is no
dropout). The data order is a pure function of (seed, epoch), so a resumed run replays exactly
the batches an uninterrupted run would have seen: same seed ⇒ same prompt bytes.

A resumable checkpoint is one safetensors file (``checkpoint.safetensors``): the prompt, the
optimiser's state tensors and the best-dev prompt as tensors, everything else (config
fingerprint, optimiser hyper-parameters, scheduler, step, history) as JSON in its header. It
holds no pickle, so opening a checkpoint someone shared cannot run code. It is written
atomically every ``checkpoint_every`` steps and when SIGINT/SIGTERM (Ctrl-C, ``kill``) stops a
run, which then ends at the end of the current step: a rerun resumes at that step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from tqdm.auto import tqdm

from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.predict import label_suffixes, rank_loss, target_loss
from promptatlas.evaluation.scoring import resolve_length_normalise
from promptatlas.formatting import EncodedExample, TaskFormatter, TextLMFormatter, collate
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example
from promptatlas.training.checkpoint_io import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from promptatlas.training.curves import StepCallback
from promptatlas.training.defaults import default_lr, defaults_for

__all__ = [
    "CHECKPOINT",
    "CheckpointError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingInterrupted",
    "checkpoint_dir_for",
    "has_checkpoint",
    "remove_checkpoint",
    "train_prompt",
]

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickles written before format 1; never opened
CHECKPOINT_FORMAT = 1


class TrainConfigError(ConfigError):
    """An invalid training configuration."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT/SIGTERM or KeyboardInterrupt.

    ``checkpoint``: the checkpoint file a rerun resumes from (None when none was written), at
    ``checkpoint_step`` of ``total`` steps; ``signum``: the signal, if one stopped the run."""

    def __init__(
        self,
        step: int,
        total: int,
        checkpoint: Path | None,
        checkpoint_step: int | None,
        signum: int | None = None,
    ) -> None:
        self.step = step
        self.total = total
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step
        self.signum = signum
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.checkpoint is None or self.checkpoint_step is None:
            return f"interrupted at step {self.step} of {self.total}; no checkpoint was written"
        return (
            f"interrupted at step {self.step} of {self.total}; checkpoint of step "
            f"{self.checkpoint_step} in {self.checkpoint.parent}: rerun the same command to resume"
        )


def checkpoint_dir_for(out: str | Path) -> Path:
    """The folder of the resumable checkpoint of output ``out``: ``.NAME.checkpoint`` beside it."""
    path = Path(out)
    return path.parent / f".{path.name}.checkpoint"


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint (a run there would resume)."""
    return (Path(directory) / CHECKPOINT).is_file()


def remove_checkpoint(directory: str | Path) -> None:
    """Delete the checkpoint in ``directory`` and the directory itself once it is empty (it is
    left in place if it holds anything else)."""
    folder = Path(directory)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # missing, or not empty: leave what is not ours
        folder.rmdir()


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Optimisation settings. Give ``steps`` or ``epochs`` (steps wins when both are set).

    lr: AdamW learning rate for the prompt (soft prompts want far larger rates than weights).
    objective: "lm" (the language-model loss on ``y <eos>``, SPEC §2) or "rank" (cross-entropy
        of the gold label among the task's labels, scored as rank classification scores them;
        classification only). See docs/defaults.md for what each learns in how many steps.
    warmup: fraction of the optimisation steps with linear warm-up; then ``schedule`` decay.
    eval_every: evaluate on dev every N steps (0 = only at the end); with ``patience`` the run
        stops after that many evaluations without improvement and keeps the best prompt.
    checkpoint_every: write a resumable checkpoint every N steps (0 = only when SIGINT/SIGTERM
        stops the run); it does not change the result, so a rerun may use another interval.
    """

    steps: int | None = 200
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None  # None: the method's default (promptatlas.training.defaults)
    weight_decay: float = 1e-5
    warmup: float = 0.1
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int = 0
    # "lm": −log p(y, eos) over the target tokens (SPEC §2); "rank": cross-entropy over the
    # task's labels of their rank-classification scores (classification tasks only); "auto":
    # the method's default for classification tasks, "lm" for generation and raw text.
    objective: Literal["auto", "lm", "rank"] = "auto"
    patience: int | None = None
    dev_limit: int | None = 200
    checkpoint_every: int = 50
    seed: int = 42

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps is None and self.epochs is None:
            raise TrainConfigError("give steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise TrainConfigError(f"steps must be ≥ 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise TrainConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise TrainConfigError("batch_size and grad_accum must be ≥ 1")
        if self.lr is not None and not 0 < self.lr < 10:
            raise TrainConfigError(f"lr must be in (0, 10), got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError(f"warmup is a fraction in [0, 1), got {self.warmup}")
        if self.objective not in ("auto", "lm", "rank"):
            raise TrainConfigError(
                f"objective must be 'auto', 'lm' or 'rank', got {self.objective!r}"
            )
        if self.schedule not in ("linear", "cosine", "constant"):
            raise TrainConfigError("schedule must be linear, cosine or constant")
        if self.checkpoint_every < 0:
            raise TrainConfigError(
                f"checkpoint_every must be ≥ 0 (0 = only when interrupted), got "
                f"{self.checkpoint_every}"
            )
        if self.patience is not None and (self.patience < 1 or self.eval_every < 1):
            raise TrainConfigError("patience needs eval_every ≥ 1 and patience ≥ 1")

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        per_epoch = math.ceil(n_train / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(per_epoch * float(self.epochs or 1)))


@dataclass
class TrainResult:
    prompt: SoftPrompt
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_dev: float | None = None
    best_step: int | None = None
    seconds: float = 0.0
    stopped_early: bool = False
    lr: float | None = None  # the learning rate used (the method default when config.lr=None)
    objective: str | None = None  # the objective used ("lm" or "rank")


def _micro_batch(n: int, size: int, seed: int, index: int) -> list[int]:
    """Indices of micro-batch ``index`` in a stream of per-epoch permutations."""
    per_epoch = math.ceil(n / size)
    epoch, j = divmod(index, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    return perm[j * size : (j + 1) * size]


def lr_factor(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier per step: linear warm-up over ``cfg.warmup`` of ``total``
    steps, then ``cfg.schedule`` (constant, linear or cosine decay)."""
    warm = round(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


def _plain(data: Any) -> Any:
    """``data`` as JSON sees it (tuples → lists), for comparing with a stored header."""
    return json.loads(json.dumps(data))


@contextmanager
def _deferred_signals(enabled: bool) -> Iterator[dict[str, int | None]]:
    """While training, SIGINT/SIGTERM only ask the loop to stop at the end of the current step
    (so the checkpoint it writes is consistent); a second signal stops at once. Yields a dict
    whose "signum" is set when a stop was asked for. Only in the main thread (Python's rule)."""
    request: dict[str, int | None] = {"signum": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request["signum"] is not None:
            raise KeyboardInterrupt
        request["signum"] = signum
        print(
            "\npromptatlas: stopping after this step to save a checkpoint (press Ctrl-C again "
            "to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def resolve_training(
    config: TrainConfig, method: str, formatter: TaskFormatter | TextLMFormatter
) -> tuple[float, str]:
    """The learning rate and objective a run actually uses: the config's, or the method's
    defaults (:mod:`promptatlas.training.defaults`) where it says None / "auto"."""
    language = isinstance(formatter, TextLMFormatter)
    lr = config.lr if config.lr is not None else default_lr(method, language=language)
    objective: str = config.objective
    if objective == "auto":
        classification = (
            isinstance(formatter, TaskFormatter) and formatter.task.spec.kind == "classification"
        )
        objective = defaults_for(method).objective if classification else "lm"
    return lr, objective


# -- the pieces of a run ------------------------------------------------------------------------


@dataclass
class _TrainState:
    """What a checkpoint holds besides the tensors of the prompt and the optimiser.

    ``pending``: a committed step whose dev evaluation and record are not done yet (see
    :meth:`_Run.finish_step`); ``best_tensors``: the prompt at the best dev score so far."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    pending: dict[str, float] | None = None
    best_tensors: dict[str, torch.Tensor] | None = None

    _JSON: ClassVar[tuple[str, ...]] = (
        "step",
        "history",
        "best",
        "best_step",
        "bad_evals",
        "stopped_early",
        "pending",
    )

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._JSON}

    @classmethod
    def from_json(
        cls, data: dict[str, Any], best_tensors: dict[str, torch.Tensor] | None
    ) -> _TrainState:
        return cls(**{name: data[name] for name in cls._JSON}, best_tensors=best_tensors)


@dataclass
class _Batches:
    """The encoded training set and the loss of a micro-batch under the run's objective.

    For the "rank" objective the examples are encoded as contexts (room left for the longest
    label) and scored against every label's ``suffixes``; ``golds`` are the label indices."""

    encoded: list[EncodedExample]
    pad: int
    golds: torch.Tensor | None = None
    suffixes: Any = None
    normalise: bool = False

    def loss(self, plm: PromptedLM, idx: list[int]) -> torch.Tensor:
        batch = collate([self.encoded[i] for i in idx], self.pad)
        if self.golds is not None:
            return rank_loss(
                plm, batch, self.golds[idx], self.suffixes, length_normalise=self.normalise
            )
        return target_loss(plm, batch)


def _encode(
    formatter: TaskFormatter | TextLMFormatter,
    train: Sequence[Example],
    objective: str,
    eval_config: EvalConfig | None,
) -> _Batches:
    pad = formatter.tokenizer.pad_token_id
    if objective != "rank":
        return _Batches([formatter.encode(ex) for ex in train], pad)
    assert isinstance(formatter, TaskFormatter)
    score_eos = bool(eval_config is not None and eval_config.score_eos)
    suffixes = label_suffixes(formatter, score_eos)
    reserve = max(len(x) for x in suffixes)
    labels = list(formatter.task.labels)
    encoded = []
    for ex in train:
        ctx = formatter.encode_context(ex, reserve=reserve)
        encoded.append(EncodedExample(tuple(ctx), len(ctx)))
    golds = torch.tensor([labels.index(str(ex.label)) for ex in train])
    normalise = resolve_length_normalise(eval_config, formatter)
    return _Batches(encoded, pad, golds, suffixes, normalise)


class _Checkpoints:
    """The resumable checkpoint of a run in ``folder`` (None: the run keeps none).

    The file layout is :mod:`promptatlas.training.checkpoint_io`'s: the prompt (``prompt.``),
    the best-dev prompt (``best.``) and the optimiser's tensors; the JSON header holds the
    configuration ``fingerprint``, the optimiser's structure, the scheduler and the state."""

    def __init__(self, folder: str | Path | None, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.path = self.folder / CHECKPOINT if self.folder is not None else None
        self.fingerprint = fingerprint
        self.saved_step: int | None = None  # the step of the last checkpoint written or read
        if self.folder is not None and (self.folder / LEGACY_CHECKPOINT).exists():
            raise CheckpointError(
                f"{self.folder / LEGACY_CHECKPOINT} is a checkpoint of an older promptatlas (a "
                "pickle, which is never opened because loading it could run arbitrary code); "
                f"delete {self.folder} to start the run over"
            )

    def _read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert self.path is not None
        fix = f"delete {self.folder} to start the run over"
        tensors, header = load_checkpoint(self.path, fix=fix)
        if header.get("format_version") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{self.path} has checkpoint format {header.get('format_version')!r}; this "
                f"promptatlas reads format {CHECKPOINT_FORMAT}. Finish the run with the version "
                f"that wrote it, or {fix}"
            )
        return tensors, header

    def resume(
        self,
        prompt: SoftPrompt,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> _TrainState | None:
        """Load the checkpoint into the prompt, optimiser and scheduler and return its state;
        None when there is no checkpoint."""
        if self.path is None or not self.path.exists():
            return None
        tensors, header = self._read()
        if header.get("fingerprint") != self.fingerprint:
            raise TrainConfigError(
                f"{self.path} belongs to a different configuration; delete {self.folder} or use "
                "another --out"
            )
        try:
            prompt.load_state_tensors(unprefixed("prompt.", tensors))
            optimizer.load_state_dict(optimizer_from_checkpoint(tensors, header["optimizer"]))
            scheduler.load_state_dict(header["scheduler"])
            best = unprefixed("best.", tensors) if header.get("has_best") else None
            state = _TrainState.from_json(dict(header["state"]), best)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{self.path} is damaged ({exc}); delete {self.folder} to start over"
            ) from exc
        self.saved_step = state.step
        return state

    def save(
        self,
        state: _TrainState,
        prompt: SoftPrompt,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        if self.path is None:
            return
        opt_tensors, opt_structure = optimizer_to_checkpoint(optimizer)
        tensors = {**prefixed("prompt.", prompt.state_tensors()), **opt_tensors}
        if state.best_tensors is not None:
            tensors.update(prefixed("best.", state.best_tensors))
        header = {
            "fingerprint": self.fingerprint,
            "scheduler": scheduler.state_dict(),
            "state": state.to_json(),
            "format": "promptatlas-checkpoint",
            "format_version": CHECKPOINT_FORMAT,
            "optimizer": opt_structure,
            "has_best": state.best_tensors is not None,
        }
        save_checkpoint(self.path, tensors, header)
        self.saved_step = state.step


def accumulate_gradients(
    plm: PromptedLM,
    batches: _Batches,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> float:
    """Zero the gradients, then forward and backward the ``config.grad_accum`` micro-batches of
    ``step`` (each example order a function of the seed and the step); the summed loss. Shared
    by prompt training and LoRA training."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        index = step * config.grad_accum + micro
        idx = _micro_batch(len(batches.encoded), config.batch_size, config.seed, index)
        loss = batches.loss(plm, idx) / config.grad_accum
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum


def apply_update(
    params: Sequence[torch.nn.Parameter],
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Clip the gradients (``config.max_grad_norm``), then the optimiser and scheduler step."""
    if config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    scheduler.step()


class _Run:
    """One training run: forward/backward, the optimiser step, the dev check and the record of
    each step. ``phase`` says where an interruption landed ("gradients", "commit", "finish",
    "idle")."""

    def __init__(
        self,
        plm: PromptedLM,
        formatter: TaskFormatter | TextLMFormatter,
        config: TrainConfig,
        batches: _Batches,
        state: _TrainState,
        *,
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        total: int,
        dev: Sequence[Example] | None,
        eval_config: EvalConfig | None,
        on_eval: Callable[[int, float], None] | None,
        step_callbacks: Sequence[StepCallback],
        bar: Any,
    ) -> None:
        self.plm, self.formatter, self.config = plm, formatter, config
        self.batches, self.state = batches, state
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.total = total
        self.dev, self.eval_config, self.on_eval = dev, eval_config, on_eval
        self.step_callbacks = tuple(step_callbacks)
        self.bar = bar
        self.phase = "idle"

    @property
    def prompt(self) -> SoftPrompt:
        assert self.plm.prompt is not None
        return self.plm.prompt

    @property
    def done(self) -> bool:
        return self.state.step >= self.total or self.state.stopped_early

    def gradients(self, step: int) -> float:
        """Forward and backward of one step; nothing that a checkpoint holds changes here."""
        return accumulate_gradients(self.plm, self.batches, self.config, self.optimizer, step)

    def commit(self, step: int, loss_sum: float) -> None:
        """The optimiser and scheduler step; the step is then pending until it is recorded."""
        apply_update(self.params, self.config, self.optimizer, self.scheduler)
        self.state.step = step + 1
        self.state.pending = {
            "step": step + 1,
            "loss": loss_sum,
            "lr": float(self.scheduler.get_last_lr()[0]),
        }

    def dev_score(self) -> float:
        assert self.dev is not None and isinstance(self.formatter, TaskFormatter)
        limit = self.config.dev_limit
        subset = list(self.dev)[:limit] if limit else list(self.dev)
        return evaluate(self.plm, self.formatter, subset, self.eval_config).score

    def dev_check(self, step: int, record: dict[str, float]) -> dict[str, Any]:
        """Evaluate on dev when due; the state updates it implies (best prompt, patience)."""
        cfg, state = self.config, self.state
        if not (self.dev and cfg.eval_every and step % cfg.eval_every == 0):
            return {}
        score = self.dev_score()
        record["dev"] = score
        if self.on_eval is not None:
            self.on_eval(step, score)
        if state.best is None or score > state.best:
            return {
                "best": score,
                "best_step": step,
                "bad_evals": 0,
                "best_tensors": self.prompt.state_tensors(),
            }
        updates: dict[str, Any] = {"bad_evals": state.bad_evals + 1}
        if cfg.patience and updates["bad_evals"] >= cfg.patience:
            updates["stopped_early"] = True
        return updates

    def finish_step(self) -> None:
        """Dev evaluation and the record of the committed step; the state changes at the end,
        so an interruption during evaluation leaves the step pending (redone on resume). The
        step callbacks then receive the record."""
        assert self.state.pending is not None
        record: dict[str, float] = dict(self.state.pending)
        updates = self.dev_check(int(record["step"]), record)
        history = [*self.state.history, record]
        for name, value in {**updates, "pending": None, "history": history}.items():
            setattr(self.state, name, value)
        for callback in self.step_callbacks:
            callback(dict(record))
        shown = {"loss": f"{record['loss']:.4f}"}
        if "dev" in record:
            shown["dev"] = f"{record['dev']:.3f}"
        self.bar.set_postfix(shown)
        self.bar.update(1)


def _steps(
    run: _Run,
    checkpoints: _Checkpoints,
    stop: dict[str, int | None],
    stop_after: int | None,
) -> None:
    """Run steps until the end, an early stop, ``stop_after`` steps or a stop signal, writing
    checkpoints every ``checkpoint_every`` steps (and at ``stop_after``)."""
    state, every = run.state, run.config.checkpoint_every
    if state.pending:
        run.phase = "finish"
        run.finish_step()
    while not run.done:
        step = state.step
        run.phase = "gradients"
        loss_sum = run.gradients(step)
        run.phase = "commit"
        run.commit(step, loss_sum)
        run.phase = "finish"
        run.finish_step()
        run.phase = "idle"
        last = run.done
        due = every and state.step % every == 0
        interrupted = stop_after is not None and state.step >= stop_after
        if stop["signum"] is not None:
            return
        if (due and not last) or interrupted:
            checkpoints.save(state, run.prompt, run.optimizer, run.scheduler)
        if interrupted and not last:
            return


def _train_until_stopped(run: _Run, checkpoints: _Checkpoints, stop_after: int | None) -> None:
    """:func:`_steps` with SIGINT/SIGTERM deferred to the end of a step: a stop signal or a
    KeyboardInterrupt writes a checkpoint of the last whole step and raises
    :class:`TrainingInterrupted`."""
    state = run.state

    def interrupted(signum: int | None) -> TrainingInterrupted:
        return TrainingInterrupted(
            state.step, run.total, checkpoints.path, checkpoints.saved_step, signum=signum
        )

    with _deferred_signals(checkpoints.path is not None) as stop:
        try:
            _steps(run, checkpoints, stop, stop_after)
            if stop["signum"] is not None:
                # Asked to stop (even after the last step: the caller's evaluation and saving
                # would follow); a rerun resumes here.
                checkpoints.save(state, run.prompt, run.optimizer, run.scheduler)
                raise interrupted(stop["signum"])
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt as exc:
            # Before the optimiser step nothing has changed, and after it the step is pending:
            # either way the state is whole. Only an interrupt inside the update itself (a
            # second Ctrl-C at that instant) leaves the last checkpoint as it was.
            if run.phase != "commit":
                checkpoints.save(state, run.prompt, run.optimizer, run.scheduler)
            raise interrupted(stop["signum"]) from exc
        finally:
            run.bar.close()


def _checked_prompt(
    plm: PromptedLM, formatter: TaskFormatter | TextLMFormatter, train: Sequence[Example]
) -> tuple[SoftPrompt, list[torch.nn.Parameter]]:
    """The prompt to train and its trainable parameters; TrainConfigError if there is none."""
    prompt = plm.prompt
    if prompt is None:
        raise TrainConfigError("nothing to train: the PromptedLM has no prompt")
    params = prompt.trainable_parameters()
    if not params:
        raise TrainConfigError("every prompt segment is frozen; nothing to train")
    if not train:
        raise TrainConfigError(f"no training examples for {formatter.name}")
    return prompt, list(params)


def train_prompt(
    plm: PromptedLM,
    formatter: TaskFormatter | TextLMFormatter,
    train: Sequence[Example],
    config: TrainConfig,
    *,
    dev: Sequence[Example] | None = None,
    eval_config: EvalConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    keep_checkpoint: bool = False,
    step_callbacks: Sequence[StepCallback] = (),
) -> TrainResult:
    """Train ``plm.prompt`` in place on ``train``; returns the trained prompt and history.

    checkpoint_dir: where the resumable checkpoint lives; an existing checkpoint there is
        resumed (it must come from the same config). SIGINT/SIGTERM and KeyboardInterrupt write
        a checkpoint of the last complete step and raise :class:`TrainingInterrupted`.
        stop_after: stop after this many steps (simulates an interruption; the checkpoint is
        written first). keep_checkpoint: when finished, keep a checkpoint of the finished run
        (the caller removes it with :func:`remove_checkpoint` once the result is stored, so an
        interruption in between loses nothing); otherwise it is removed, folder included.
    step_callbacks: called after each step with its record (``step``, ``loss``, ``lr`` and,
        on evaluation steps, ``dev``), e.g. a :class:`promptatlas.training.curves.CurveWriter`.
    """
    prompt, params = _checked_prompt(plm, formatter, train)
    classification = (
        isinstance(formatter, TaskFormatter) and formatter.task.spec.kind == "classification"
    )
    lr, objective = resolve_training(config, prompt.method, formatter)
    if objective == "rank" and not classification:
        raise TrainConfigError(
            f"objective 'rank' needs a classification task, not {formatter.name}; use 'lm'"
        )
    batches = _encode(formatter, train, objective, eval_config)
    total = config.total_steps(len(batches.encoded))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total))
    # The checkpoint interval does not change the result, so it is not part of the identity.
    fingerprint = _plain(
        {
            "train": {k: v for k, v in config.to_dict().items() if k != "checkpoint_every"},
            "n_train": len(batches.encoded),
            "prompt": prompt.config.to_dict(),
        }
    )
    checkpoints = _Checkpoints(checkpoint_dir, fingerprint)
    state = checkpoints.resume(prompt, optimizer, scheduler) or _TrainState()
    started = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=state.step - (1 if state.pending else 0),
        desc=f"train {formatter.name} {prompt.method}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    run = _Run(
        plm, formatter, config, batches, state, params=params, optimizer=optimizer,
        scheduler=scheduler, total=total, dev=dev, eval_config=eval_config, on_eval=on_eval,
        step_callbacks=step_callbacks, bar=bar,
    )  # fmt: skip

    _train_until_stopped(run, checkpoints, stop_after)
    if run.done and state.best_tensors is not None:
        prompt.load_state_tensors(state.best_tensors)
    if run.done and checkpoints.folder is not None:
        if keep_checkpoint:
            checkpoints.save(state, prompt, optimizer, scheduler)
        else:
            remove_checkpoint(checkpoints.folder)
    return TrainResult(
        prompt=prompt,
        steps=state.step,
        history=copy.deepcopy(state.history),
        best_dev=state.best,
        best_step=state.best_step,
        seconds=time.perf_counter() - started,
        stopped_early=bool(state.stopped_early),
        lr=lr,
        objective=objective,
    )
