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
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.predict import label_suffixes, rank_loss, target_loss
from promptatlas.evaluation.scoring import resolve_length_normalise
from promptatlas.formatting import EncodedExample, TaskFormatter, TextLMFormatter, collate
from promptatlas.io import write_bytes_atomic
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example
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
_HEADER_KEY = "promptatlas_checkpoint"


class TrainConfigError(ConfigError):
    """An invalid training configuration."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (old pickle format, foreign or damaged file)."""


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


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
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


def _write_checkpoint(
    path: Path,
    header: dict[str, Any],
    prompt_tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    best_tensors: dict[str, torch.Tensor] | None,
) -> None:
    """One safetensors file: tensors + a JSON header; replaced atomically."""
    from safetensors.torch import save

    tensors = {f"prompt.{k}": v.detach().cpu().contiguous() for k, v in prompt_tensors.items()}
    if best_tensors is not None:
        tensors.update(
            {f"best.{k}": v.detach().cpu().contiguous() for k, v in best_tensors.items()}
        )
    opt = optimizer.state_dict()
    opt_state: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        plain: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        opt_state[str(index)] = plain
    header = {
        **header,
        "format": "promptatlas-checkpoint",
        "format_version": CHECKPOINT_FORMAT,
        "optimizer": {"param_groups": opt["param_groups"], "state": opt_state},
        "has_best": best_tensors is not None,
    }
    payload = save(tensors, metadata={_HEADER_KEY: json.dumps(header), "format": "pt"})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, payload)


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON header and the tensors of a checkpoint; CheckpointError if it is not one."""
    from safetensors import safe_open

    fix = f"delete {path.parent} to start the run over"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError, OSError, ValueError: not a safetensors file
        raise CheckpointError(
            f"{path} is not a promptatlas checkpoint or is damaged ({exc}); {fix}"
        ) from exc
    try:
        header = json.loads(meta[_HEADER_KEY])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is a safetensors file but not a promptatlas checkpoint; {fix}"
        ) from exc
    if not isinstance(header, dict) or header.get("format_version") != CHECKPOINT_FORMAT:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this promptatlas reads format "
            f"{CHECKPOINT_FORMAT}. Finish the run with the version that wrote it, or {fix}"
        )
    return header, tensors


def _optimizer_state(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {
        int(index): dict(values) for index, values in header["optimizer"]["state"].items()
    }
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": header["optimizer"]["param_groups"]}


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
) -> TrainResult:
    """Train ``plm.prompt`` in place on ``train``; returns the trained prompt and history.

    checkpoint_dir: where the resumable checkpoint lives; an existing checkpoint there is
        resumed (it must come from the same config). SIGINT/SIGTERM and KeyboardInterrupt write
        a checkpoint of the last complete step and raise :class:`TrainingInterrupted`.
        stop_after: stop after this many steps (simulates an interruption; the checkpoint is
        written first). keep_checkpoint: when finished, keep a checkpoint of the finished run
        (the caller removes it with :func:`remove_checkpoint` once the result is stored, so an
        interruption in between loses nothing); otherwise it is removed, folder included.
    """
    prompt = plm.prompt
    if prompt is None:
        raise TrainConfigError("nothing to train: the PromptedLM has no prompt")
    params = prompt.trainable_parameters()
    if not params:
        raise TrainConfigError("every prompt segment is frozen; nothing to train")
    if not train:
        raise TrainConfigError(f"no training examples for {formatter.name}")
    classification = (
        isinstance(formatter, TaskFormatter) and formatter.task.spec.kind == "classification"
    )
    lr, objective = resolve_training(config, prompt.method, formatter)
    rank = objective == "rank"
    if rank and not classification:
        raise TrainConfigError(
            f"objective 'rank' needs a classification task, not {formatter.name}; use 'lm'"
        )
    pad = formatter.tokenizer.pad_token_id
    if rank:
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
    else:
        encoded = [formatter.encode(ex) for ex in train]
    total = config.total_steps(len(encoded))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
    state: dict[str, Any] = {
        "step": 0,
        "history": [],
        "best": None,
        "best_step": None,
        "bad_evals": 0,
        "best_tensors": None,
        "stopped_early": False,
        # a committed step whose dev evaluation and record are not done yet (see finish_step)
        "pending": None,
    }
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt = folder / CHECKPOINT if folder is not None else None
    # The checkpoint interval does not change the result, so it is not part of the identity.
    fingerprint = _plain(
        {
            "train": {k: v for k, v in config.to_dict().items() if k != "checkpoint_every"},
            "n_train": len(encoded),
            "prompt": prompt.config.to_dict(),
        }
    )
    if folder is not None and (folder / LEGACY_CHECKPOINT).exists():
        raise CheckpointError(
            f"{folder / LEGACY_CHECKPOINT} is a checkpoint of an older promptatlas (a pickle, "
            "which is never opened because loading it could run arbitrary code); delete "
            f"{folder} to start the run over"
        )
    saved_step: int | None = None
    if ckpt is not None and ckpt.exists():
        header, tensors = _read_checkpoint(ckpt)
        if header.get("fingerprint") != fingerprint:
            raise TrainConfigError(
                f"{ckpt} belongs to a different configuration; delete {folder} or use another --out"
            )
        try:
            prompt.load_state_tensors(
                {k[len("prompt.") :]: v for k, v in tensors.items() if k.startswith("prompt.")}
            )
            optimizer.load_state_dict(_optimizer_state(header, tensors))
            scheduler.load_state_dict(header["scheduler"])
            state = dict(header["state"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{ckpt} is damaged ({exc}); delete {folder} to start over"
            ) from exc
        state["best_tensors"] = (
            {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
            if header.get("has_best")
            else None
        )
        saved_step = int(state["step"])

    def save_checkpoint() -> None:
        nonlocal saved_step
        if ckpt is None:
            return
        _write_checkpoint(
            ckpt,
            {
                "fingerprint": fingerprint,
                "scheduler": scheduler.state_dict(),
                "state": {k: v for k, v in state.items() if k != "best_tensors"},
            },
            prompt.state_tensors(),
            optimizer,
            state["best_tensors"],
        )
        saved_step = int(state["step"])

    def dev_score() -> float:
        assert dev is not None and isinstance(formatter, TaskFormatter)
        subset = list(dev)[: config.dev_limit] if config.dev_limit else list(dev)
        return evaluate(plm, formatter, subset, eval_config).score

    def gradients(step: int) -> float:
        """Forward and backward of one step; nothing that a checkpoint holds changes here."""
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(config.grad_accum):
            index = step * config.grad_accum + micro
            idx = _micro_batch(len(encoded), config.batch_size, config.seed, index)
            batch = collate([encoded[i] for i in idx], pad)
            if rank:
                raw = rank_loss(plm, batch, golds[idx], suffixes, length_normalise=normalise)
            else:
                raw = target_loss(plm, batch)
            loss = raw / config.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
        return loss_sum

    def commit(step: int, loss_sum: float) -> None:
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        state["step"] = step + 1
        state["pending"] = {
            "step": step + 1,
            "loss": loss_sum,
            "lr": float(scheduler.get_last_lr()[0]),
        }

    def finish_step() -> None:
        """Dev evaluation and the record of the committed step; the state changes at the end,
        so an interruption during evaluation leaves the step pending (redone on resume)."""
        record: dict[str, float] = dict(state["pending"])
        step = int(record["step"])
        updates: dict[str, Any] = {}
        if dev and config.eval_every and step % config.eval_every == 0:
            score = dev_score()
            record["dev"] = score
            if on_eval is not None:
                on_eval(step, score)
            if state["best"] is None or score > state["best"]:
                updates = {
                    "best": score,
                    "best_step": step,
                    "bad_evals": 0,
                    "best_tensors": prompt.state_tensors(),
                }
            else:
                updates = {"bad_evals": state["bad_evals"] + 1}
                if config.patience and updates["bad_evals"] >= config.patience:
                    updates["stopped_early"] = True
        state.update(updates, pending=None, history=[*state["history"], record])
        shown = {"loss": f"{record['loss']:.4f}"}
        if "dev" in record:
            shown["dev"] = f"{record['dev']:.3f}"
        bar.set_postfix(shown)
        bar.update(1)

    started = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=state["step"] - (1 if state["pending"] else 0),
        desc=f"train {formatter.name} {prompt.method}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    phase = "idle"
    with _deferred_signals(ckpt is not None) as stop:
        try:
            if state["pending"]:
                phase = "finish"
                finish_step()
            while state["step"] < total and not state["stopped_early"]:
                step = state["step"]
                phase = "gradients"
                loss_sum = gradients(step)
                phase = "commit"
                commit(step, loss_sum)
                phase = "finish"
                finish_step()
                phase = "idle"
                last = state["step"] == total or state["stopped_early"]
                due = config.checkpoint_every and state["step"] % config.checkpoint_every == 0
                interrupted = stop_after is not None and state["step"] >= stop_after
                if stop["signum"] is not None:
                    break
                if (due and not last) or interrupted:
                    save_checkpoint()
                if interrupted and not last:
                    break
            if stop["signum"] is not None:
                # Asked to stop (even after the last step: the caller's evaluation and saving
                # would follow); a rerun resumes here.
                save_checkpoint()
                raise TrainingInterrupted(
                    state["step"], total, ckpt, saved_step, signum=stop["signum"]
                )
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt as exc:
            # Before the optimiser step nothing has changed, and after it the step is pending:
            # either way the state is whole. Only an interrupt inside the update itself (a
            # second Ctrl-C at that instant) leaves the last checkpoint as it was.
            if ckpt is not None and phase != "commit":
                save_checkpoint()
            raise TrainingInterrupted(
                state["step"], total, ckpt, saved_step, signum=stop["signum"]
            ) from exc
        finally:
            bar.close()
    finished = state["step"] >= total or state["stopped_early"]
    if finished and state["best_tensors"] is not None:
        prompt.load_state_tensors(state["best_tensors"])
    if finished and folder is not None:
        if keep_checkpoint:
            save_checkpoint()
        else:
            remove_checkpoint(folder)
    return TrainResult(
        prompt=prompt,
        steps=state["step"],
        history=copy.deepcopy(state["history"]),
        best_dev=state["best"],
        best_step=state["best_step"],
        seconds=time.perf_counter() - started,
        stopped_early=bool(state["stopped_early"]),
        lr=lr,
        objective=objective,
    )
