"""Training a soft prompt on a frozen model.

Only prompt parameters get gradients (the model is frozen and in eval mode, so there is no
dropout). The data order is a pure function of (seed, epoch), so a resumed run replays exactly
the batches an uninterrupted run would have seen: same seed ⇒ same prompt bytes.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import TaskFormatter, TextLMFormatter, collate
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "train_prompt"]

CHECKPOINT = "checkpoint.pt"


class TrainConfigError(ValueError):
    """An invalid training configuration."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Give ``steps`` or ``epochs`` (steps wins when both are set).

    lr: AdamW learning rate for the prompt (soft prompts want far larger rates than weights).
    warmup: fraction of the optimisation steps with linear warm-up; then ``schedule`` decay.
    eval_every: evaluate on dev every N steps (0 = only at the end); with ``patience`` the run
        stops after that many evaluations without improvement and keeps the best prompt.
    checkpoint_every: write a resumable checkpoint every N steps (0 = never).
    """

    steps: int | None = 200
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 0.03
    weight_decay: float = 1e-5
    warmup: float = 0.06
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int = 0
    patience: int | None = None
    dev_limit: int | None = 200
    checkpoint_every: int = 50
    seed: int = 42

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise TrainConfigError("give steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise TrainConfigError(f"steps must be ≥ 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise TrainConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise TrainConfigError("batch_size and grad_accum must be ≥ 1")
        if not 0 < self.lr < 10:
            raise TrainConfigError(f"lr must be in (0, 10), got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError(f"warmup is a fraction in [0, 1), got {self.warmup}")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise TrainConfigError("schedule must be linear, cosine or constant")
        if self.patience is not None and (self.patience < 1 or self.eval_every < 1):
            raise TrainConfigError("patience needs eval_every ≥ 1 and patience ≥ 1")

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        per_epoch = math.ceil(n_train / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(per_epoch * float(self.epochs or 1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    prompt: SoftPrompt
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_dev: float | None = None
    best_step: int | None = None
    seconds: float = 0.0
    stopped_early: bool = False


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


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
) -> TrainResult:
    """Train ``plm.prompt`` in place on ``train``; returns the trained prompt and history.

    checkpoint_dir: where the resumable checkpoint lives; an existing checkpoint there is
        resumed (it must come from the same config). stop_after: stop after this many steps
        (simulates an interruption; the checkpoint is written first).
    """
    prompt = plm.prompt
    if prompt is None:
        raise TrainConfigError("nothing to train: the PromptedLM has no prompt")
    params = prompt.trainable_parameters()
    if not params:
        raise TrainConfigError("every prompt segment is frozen; nothing to train")
    if not train:
        raise TrainConfigError(f"no training examples for {formatter.name}")
    encoded = [formatter.encode(ex) for ex in train]
    pad = formatter.tokenizer.pad_token_id
    total = config.total_steps(len(encoded))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
    state: dict[str, Any] = {
        "step": 0,
        "history": [],
        "best": None,
        "best_step": None,
        "bad_evals": 0,
        "best_tensors": None,
        "stopped_early": False,
    }
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    fingerprint = {
        "train": config.to_dict(),
        "n_train": len(encoded),
        "prompt": prompt.config.to_dict(),
    }
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != fingerprint:
            raise TrainConfigError(
                f"{ckpt} belongs to a different configuration; delete it or use another --out"
            )
        prompt.load_state_tensors(saved["prompt"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(
            {
                "fingerprint": fingerprint,
                "prompt": prompt.state_tensors(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
            ckpt,
        )

    def dev_score() -> float:
        assert dev is not None and isinstance(formatter, TaskFormatter)
        subset = list(dev)[: config.dev_limit] if config.dev_limit else list(dev)
        return evaluate(plm, formatter, subset, eval_config).score

    started = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=state["step"],
        desc=f"train {formatter.name} {prompt.method}",
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )
    try:
        while state["step"] < total and not state["stopped_early"]:
            step = state["step"]
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in range(config.grad_accum):
                index = step * config.grad_accum + micro
                idx = _micro_batch(len(encoded), config.batch_size, config.seed, index)
                batch = collate([encoded[i] for i in idx], pad)
                loss = target_loss(plm, batch) / config.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            state["step"] = step + 1
            record: dict[str, float] = {
                "step": step + 1,
                "loss": loss_sum,
                "lr": float(scheduler.get_last_lr()[0]),
            }
            if dev and config.eval_every and (step + 1) % config.eval_every == 0:
                score = dev_score()
                record["dev"] = score
                if on_eval is not None:
                    on_eval(step + 1, score)
                if state["best"] is None or score > state["best"]:
                    state.update(
                        best=score,
                        best_step=step + 1,
                        bad_evals=0,
                        best_tensors=prompt.state_tensors(),
                    )
                else:
                    state["bad_evals"] += 1
                    if config.patience and state["bad_evals"] >= config.patience:
                        state["stopped_early"] = True
            state["history"].append(record)
            shown = {"loss": f"{loss_sum:.4f}"}
            if "dev" in record:
                shown["dev"] = f"{record['dev']:.3f}"
            bar.set_postfix(shown)
            bar.update(1)
            last = state["step"] == total or state["stopped_early"]
            due = config.checkpoint_every and state["step"] % config.checkpoint_every == 0
            interrupted = stop_after is not None and state["step"] >= stop_after
            if (due and not last) or interrupted:
                save_checkpoint()
            if interrupted and not last:
                break
    finally:
        bar.close()
    finished = state["step"] >= total or state["stopped_early"]
    if finished and state["best_tensors"] is not None:
        prompt.load_state_tensors(state["best_tensors"])
    if finished and ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return TrainResult(
        prompt=prompt,
        steps=state["step"],
        history=copy.deepcopy(state["history"]),
        best_dev=state["best"],
        best_step=state["best_step"],
        seconds=time.perf_counter() - started,
        stopped_early=bool(state["stopped_early"]),
    )
