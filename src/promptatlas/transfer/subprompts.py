"""Factorised prompts: a language sub-prompt followed by a task sub-prompt (thesis §4.1.2).

A factorised prompt has two named segments, ``lang`` then ``task`` (thesis: 10 + 10 positions):

* a **language prompt** is trained by next-token LM loss on raw text of one language, with a
  randomly initialised *frozen* task segment after it (Eq. 8) — :func:`train_language_prompt`;
* a **task sub-prompt** is trained on a task with that language segment frozen (Eq. 9) —
  :func:`task_prompt_from_language`, used by ``RunConfig(lang_prompt=...)``.

A language prompt is stored like any prompt (``prompt.safetensors`` + ``prompt.json``), with
``task = None`` and ``extra.kind = "language"``; its held-out LM loss before and after training
is in ``metrics``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from promptatlas.bank import (
    ResultsDB,
    StoredPrompt,
    check_prompt_target,
    load_prompt,
    read_metadata,
    save_prompt,
)
from promptatlas.configtools import ConfigBase, ConfigError, Precision, from_dict
from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import TextLMFormatter, collate
from promptatlas.models import DEFAULT_MODEL, ModelHandle, load_model
from promptatlas.models.precision import resolve_precision
from promptatlas.prompts import (
    PromptConfig,
    PromptedLM,
    SegmentConfig,
    SoftPrompt,
    check_context,
)
from promptatlas.prompts.config import PromptConfigError
from promptatlas.prompts.injection import autocast_dtype
from promptatlas.tasks import Example
from promptatlas.tasks.rawtext import load_raw_text, pack_lines
from promptatlas.training import (
    TrainConfig,
    checkpoint_dir_for,
    has_checkpoint,
    remove_checkpoint,
    train_prompt,
)
from promptatlas.training.curves import StepCallback

__all__ = [
    "LANG_SEGMENT",
    "TASK_SEGMENT",
    "LanguagePromptConfig",
    "LanguagePromptResult",
    "factorised_config",
    "is_factorised",
    "lm_loss",
    "task_prompt_from_language",
    "train_language_prompt",
]

LANG_SEGMENT = "lang"
TASK_SEGMENT = "task"


def factorised_config(
    base: PromptConfig,
    *,
    lang_length: int = 10,
    task_length: int = 10,
    train: str = TASK_SEGMENT,
) -> PromptConfig:
    """``base``'s method, kv mode, layers and init with segments ``lang`` + ``task``; only the
    segment named by ``train`` is trainable."""
    if train not in (LANG_SEGMENT, TASK_SEGMENT):
        raise PromptConfigError(f"train must be {LANG_SEGMENT!r} or {TASK_SEGMENT!r}")
    segments = (
        SegmentConfig(LANG_SEGMENT, lang_length, trainable=train == LANG_SEGMENT),
        SegmentConfig(TASK_SEGMENT, task_length, trainable=train == TASK_SEGMENT),
    )
    return dataclasses.replace(base, length=lang_length + task_length, segments=segments)


def is_factorised(prompt: SoftPrompt) -> bool:
    return prompt.segment_names() == [LANG_SEGMENT, TASK_SEGMENT]


def with_trainable(prompt: SoftPrompt, trainable: str) -> SoftPrompt:
    """A copy of a factorised prompt in which only segment ``trainable`` is trainable (the
    config records the flags, so a saved prompt says which part was trained)."""
    config = factorised_config(
        prompt.config,
        lang_length=prompt.config.segments[0].length,
        task_length=prompt.config.segments[1].length,
        train=trainable,
    )
    copy = SoftPrompt(config, prompt.geometry)
    copy.load_state_tensors(prompt.state_tensors())
    return copy


@dataclass(frozen=True)
class LanguagePromptConfig(ConfigBase):
    """Everything that determines a language prompt (saved next to it).

    prompt: method / kv / layers / init of the prompt (its length is ignored: the prompt is
        ``lang_length`` language positions + ``task_length`` frozen random task positions).
    text: text files or folders; empty = the bundled sample of ``lang``.
    max_length: tokens per training sequence (consecutive lines are packed up to it).
    heldout: fraction of the packed sequences kept out of training to measure the LM loss.
    """

    lang: str
    model: str = DEFAULT_MODEL
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lang_length: int = 10
    task_length: int = 10
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, batch_size=8, lr=0.03, warmup=0.1)
    )
    text: tuple[str, ...] = ()
    text_limit: int | None = None
    max_length: int = 64
    heldout: float = 0.05
    precision: Precision = "auto"  # "auto" (bf16 where native, else fp32), "fp32" or "bf16"
    device: str | None = None
    attn_implementation: str = "eager"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prompt, Mapping):
            object.__setattr__(self, "prompt", PromptConfig.from_dict(self.prompt, path="prompt"))
        object.__setattr__(self, "train", from_dict(TrainConfig, self.train, path="train"))
        object.__setattr__(self, "text", tuple(str(t) for t in self.text))
        object.__setattr__(self, "lang", str(self.lang).strip().lower())  # "KO" → "ko"
        if not self.lang:
            raise ConfigError("a language prompt needs a language code (e.g. 'ko')")
        if self.lang_length < 1 or self.task_length < 1:
            raise ConfigError("lang_length and task_length must be ≥ 1")
        if not 0 <= self.heldout < 0.5:
            raise ConfigError(f"heldout must be in [0, 0.5), got {self.heldout}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be ≥ 8 tokens, got {self.max_length}")

    @property
    def prompt_config(self) -> PromptConfig:
        return factorised_config(
            self.prompt,
            lang_length=self.lang_length,
            task_length=self.task_length,
            train=LANG_SEGMENT,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["prompt"] = self.prompt.to_dict()
        out["text"] = list(self.text)
        return out


@dataclass
class LanguagePromptResult:
    path: Path
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    steps: int
    seconds: float
    n_sequences: int

    def describe(self) -> str:
        """The held-out LM loss before → after, or why there is none."""
        if self.heldout_loss_before is None or self.heldout_loss_after is None:
            return (
                f"no held-out text ({self.n_sequences} packed sequences, too few to hold any "
                "out; give more text: --text, a larger --text-limit, or transfer.text in a grid)"
            )
        return f"held-out LM loss {self.heldout_loss_before:.3f} → {self.heldout_loss_after:.3f}"


@torch.no_grad()
def lm_loss(plm: PromptedLM, formatter: TextLMFormatter, texts: Sequence[str], batch: int) -> float:
    """Token-weighted mean next-token loss of ``texts`` under the prompted model."""
    total, count = 0.0, 0
    encoded = [formatter.encode(Example((t,), "")) for t in texts]
    pad = formatter.tokenizer.pad_token_id
    for i in range(0, len(encoded), batch):
        b = collate(encoded[i : i + batch], pad)
        n = int(b.target_mask[:, 1:].sum())
        total += float(target_loss(plm, b)) * n
        count += n
    return total / max(count, 1)


def train_language_prompt(
    cfg: LanguagePromptConfig,
    out: str | Path,
    *,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    progress: bool = True,
    overwrite: bool = False,
    step_callbacks: Sequence[StepCallback] = (),
) -> LanguagePromptResult:
    """Train the language segment of a factorised prompt on raw text (thesis Eq. 8) and store
    it at ``out``. The task segment is random (uniform ±init_range, seeded) and frozen.
    ``out`` is checked before the model loads; a prompt already there is replaced only with
    ``overwrite`` or when this call resumes the interrupted run that replaces it.
    ``step_callbacks`` receive each training step's record (e.g. a curve writer)."""
    out = Path(out)
    checkpoints = checkpoint_dir_for(out)
    replace = overwrite or has_checkpoint(checkpoints)
    check_prompt_target(out, overwrite=replace)
    handle = handle or load_model(
        cfg.model, device=cfg.device, attn_implementation=cfg.attn_implementation
    )
    lines = load_raw_text(cfg.lang, cfg.text, limit=cfg.text_limit)
    formatter = TextLMFormatter(handle.tokenizer, cfg.max_length, name=f"lm-{cfg.lang}")
    chunks = pack_lines(handle.tokenizer, lines, cfg.max_length - 1)
    n_held = math.floor(len(chunks) * cfg.heldout)
    # Every k-th chunk is held out, so held-out text spans the whole corpus.
    step = len(chunks) // n_held if n_held else 0
    held = [c for i, c in enumerate(chunks) if step and i % step == step - 1][:n_held]
    held_set = set(held)
    train_texts = [c for c in chunks if c not in held_set]
    check_context(
        cfg.prompt_config.length,
        handle,
        budget=cfg.max_length,
        task=formatter.name,
        option="--lang-length + --task-length",
    )
    prompt = SoftPrompt(cfg.prompt_config, handle.geometry)
    if cfg.prompt.resolved_init == "labels":
        raise ValueError("a language prompt has no label words: use init 'uniform' or 'vocab'")
    prompt.initialise(handle, generator=torch.Generator().manual_seed(cfg.train.seed))
    prompt = prompt.to(handle.device)
    plm = PromptedLM(handle, prompt, autocast_dtype=autocast_dtype(cfg.precision, handle.device))
    plm.head_autocast = True  # every token is a target: the LM head dominates (see logits)
    batch = max(cfg.train.batch_size, 8)
    before = lm_loss(plm, formatter, held, batch) if held else None
    result = train_prompt(
        plm,
        formatter,
        [Example((t,), "") for t in train_texts],
        cfg.train,
        checkpoint_dir=checkpoints,
        progress=progress,
        keep_checkpoint=True,  # until the prompt is stored
        step_callbacks=step_callbacks,
    )
    after = lm_loss(plm, formatter, held, batch) if held else None
    metrics: dict[str, Any] = {}
    if before is not None and after is not None:
        metrics["heldout"] = {
            "loss_untrained": before,
            "loss": after,
            "ppl_untrained": math.exp(min(before, 50.0)),
            "ppl": math.exp(min(after, 50.0)),
            "n": len(held),
        }
    resolved = resolve_precision(cfg.precision, handle.device)
    config = {**cfg.to_dict(), "resolved_precision": resolved}
    config["resolved_train"] = {"lr": result.lr, "objective": result.objective}
    save_prompt(
        out,
        prompt,
        handle,
        task=None,
        lang=cfg.lang,
        seed=cfg.train.seed,
        metrics=metrics,
        config=config,
        extra={
            "kind": "language",
            "history": result.history,
            "train_seconds": result.seconds,
            "steps": result.steps,
            "n_train_sequences": len(train_texts),
            "n_lines": len(lines),
        },
        overwrite=replace,
    )
    if db is not None:
        db.record(
            kind="lang-prompt",
            model=handle.name,
            task=None,
            lang=cfg.lang,
            method=cfg.prompt.method,
            split="heldout",
            metrics=metrics.get("heldout", {}),
            score=-after if after is not None else None,
            config=config,
            prompt_dir=str(out),
            seed=cfg.train.seed,
        )
    remove_checkpoint(checkpoints)
    return LanguagePromptResult(out, before, after, result.steps, result.seconds, len(chunks))


def load_language_prompt(directory: str | Path, handle: ModelHandle) -> StoredPrompt:
    """Load a stored prompt that has a language segment (a language prompt, or any factorised
    prompt); the error says what the directory holds instead."""
    stored = load_prompt(directory, handle)
    if LANG_SEGMENT not in stored.prompt.segment_names():
        raise PromptConfigError(
            f"{directory} has segments {stored.prompt.segment_names()}, no {LANG_SEGMENT!r} "
            "segment: pass a language prompt made by `promptatlas lang-prompt`"
        )
    return stored


def task_prompt_from_language(
    lang_prompt_dir: str | Path,
    handle: ModelHandle,
    *,
    seed: int,
    task_length: int | None = None,
    init: str | None = None,
    label_token_ids: Sequence[int] | None = None,
) -> SoftPrompt:
    """A factorised prompt for task training (Eq. 9): the language segment of
    ``lang_prompt_dir`` (frozen) + a freshly initialised trainable task segment.

    Method, kv mode and layers follow the language prompt; ``task_length`` defaults to its task
    segment length and ``init`` to its init."""
    stored = load_language_prompt(lang_prompt_dir, handle)
    source = stored.prompt
    lang_len = dict((s.name, s.length) for s in source.config.segments)[LANG_SEGMENT]
    task_len = task_length or dict((s.name, s.length) for s in source.config.segments).get(
        TASK_SEGMENT, 10
    )
    base = source.config if init is None else dataclasses.replace(source.config, init=init)  # type: ignore[arg-type]
    config = factorised_config(base, lang_length=lang_len, task_length=task_len)
    prompt = SoftPrompt(config, handle.geometry)
    prompt.initialise(
        handle,
        generator=torch.Generator().manual_seed(seed),
        label_token_ids=label_token_ids,
        segments=[TASK_SEGMENT],
    )
    prompt.set_segment(LANG_SEGMENT, source.state_tensors()[LANG_SEGMENT])
    return prompt.to(handle.device)


def describe(directory: str | Path) -> str:
    """One line naming what a prompt directory holds (for logs and errors)."""
    meta = read_metadata(directory)
    kind = meta.extra.get("kind", "task")
    what = f"{meta.task}-{meta.lang}" if meta.task else f"language {meta.lang}"
    return f"{kind} prompt {what} ({meta.prompt.get('method')}, {meta.model})"
