"""Prompt transfer across tasks and languages (SPEC §4, thesis §4.1.2 and §5.3.1).

With factorised prompts (``lang`` + ``task`` segments, see :mod:`.subprompts`):

* **cross-task** (same language): the target task segment starts from the source task
  segment and is trained; the language segment stays frozen;
* **cross-language** (same task, other language): the source task segment stays frozen and the
  language segment — initialised from the target language's language prompt when one is
  given — is trained.

A prompt without segments (one ``task`` segment) is transferred whole as an initialisation
(Su et al. 2022) in both cases.

:func:`zero_shot` evaluates a prompt on another task or language without training, with the
source's label words and the source or the target language segment (thesis Tables 13–14).
:func:`steps_to_reach` gives the convergence measure: the first step whose dev score reaches a
fraction (90%) of the baseline's best dev score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from promptatlas.bank import (
    ResultsDB,
    StoredPrompt,
    check_prompt_target,
    load_prompt,
    read_metadata,
)
from promptatlas.evaluation.confidence import ExampleScores
from promptatlas.evaluation.evaluate import (
    EvalConfig,
    EvalResult,
    evaluate,
    paired_gain,
    stored_examples,
)
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.models import ModelHandle, load_model
from promptatlas.prompts import PromptedLM, SoftPrompt
from promptatlas.prompts.config import PromptConfigError
from promptatlas.prompts.injection import autocast_dtype
from promptatlas.runs.train import RunConfig, RunResult, train_run
from promptatlas.tasks import TaskVariant, get_task, load_split
from promptatlas.training import checkpoint_dir_for, has_checkpoint
from promptatlas.transfer.subprompts import (
    LANG_SEGMENT,
    TASK_SEGMENT,
    is_factorised,
    load_language_prompt,
    with_trainable,
)

__all__ = [
    "TransferKind",
    "TransferResult",
    "relative_score",
    "source_label_variant",
    "steps_to_reach",
    "transfer_kind",
    "transfer_prompt",
    "transfer_run",
    "zero_shot",
]

TransferKind = Literal["task", "language"]
CONVERGENCE_FRACTION = 0.9


def transfer_kind(source_task: str, source_lang: str, task: str, lang: str) -> TransferKind:
    """``task`` for another task in the same language, ``language`` for the same task in
    another language; anything else is not one transfer step."""
    if source_lang == lang and source_task != task:
        return "task"
    if source_task == task and source_lang != lang:
        return "language"
    if source_task == task:
        raise ValueError(
            f"the source prompt is already {task}-{lang}: nothing to transfer (train it instead)"
        )
    raise ValueError(
        f"{source_task}-{source_lang} → {task}-{lang} changes both task and language; transfer "
        "one at a time (e.g. first the task, then the language)"
    )


def transfer_prompt(
    source: SoftPrompt,
    kind: TransferKind,
    *,
    lang_segment: torch.Tensor | None = None,
) -> SoftPrompt:
    """The initial prompt of a transfer run (a copy; ``source`` is not modified).

    kind "task": train the task segment from the source's, language frozen. kind "language":
    train the language segment (from ``lang_segment``, the target language prompt's, when
    given), source task segment frozen. Unsegmented prompts are copied whole, all trainable.
    """
    if not is_factorised(source):
        if lang_segment is not None:
            raise PromptConfigError(
                "the source prompt has no language segment to replace; transfer it without a "
                "language prompt, or use a factorised source (trained with --lang-prompt)"
            )
        copy = SoftPrompt(source.config, source.geometry)
        copy.load_state_tensors(source.state_tensors())
        for name in copy.segment_names():
            copy.set_trainable(name, True)
        return copy
    trainable = TASK_SEGMENT if kind == "task" else LANG_SEGMENT
    copy = with_trainable(source, trainable)
    if lang_segment is not None:
        copy.set_segment(LANG_SEGMENT, lang_segment)
    return copy


def steps_to_reach(history: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """First step whose dev score is ≥ ``target`` (None if never reached); a 1e-9 tolerance
    keeps 0.9 × 0.8 from missing a dev score of exactly 0.72."""
    for record in history:
        score = record.get("dev")
        if score is not None and float(score) >= target - 1e-9:
            return int(record["step"])
    return None


def relative_score(score: float, baseline: float) -> float | None:
    return score / baseline if baseline else None


@dataclass
class TransferResult:
    run: RunResult
    kind: TransferKind
    source: str
    score: float
    baseline: float | None
    delta: float | None  # transferred − baseline
    relative: float | None  # transferred / baseline
    steps_to_90: int | None  # of the transfer run
    baseline_steps_to_90: int | None
    # transferred − baseline with its paired 95% bootstrap interval over the same test examples
    delta_ci: dict[str, Any] | None = None
    # transferred − the target's untrained prompt (the baseline's initialisation), paired
    vs_untrained: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "score": self.score,
            "baseline": self.baseline,
            "delta": self.delta,
            "relative": self.relative,
            "steps_to_90": self.steps_to_90,
            "baseline_steps_to_90": self.baseline_steps_to_90,
            "delta_ci": self.delta_ci,
            "vs_untrained": self.vs_untrained,
            "zero_shot": self.run.untrained.score if self.run.untrained else None,
            "prompt_dir": str(self.run.path),
        }


def _baseline_numbers(
    baseline_dir: str | Path | None,
) -> tuple[float | None, float | None, int | None, ExampleScores | None, ExampleScores | None]:
    """(test score, best dev score, steps to 90% of it, per-example test data, per-example
    test data of its untrained prompt) of a baseline prompt directory."""
    if baseline_dir is None:
        return None, None, None, None, None
    meta = read_metadata(baseline_dir)
    test = meta.metrics.get("test", {}).get("score")
    best = meta.metrics.get("dev_best", {}).get("score")
    steps = None
    if best is not None:
        steps = steps_to_reach(meta.extra.get("history", []), CONVERGENCE_FRACTION * best)
    return (
        test,
        best,
        steps,
        stored_examples(meta.metrics.get("test")),
        stored_examples(meta.metrics.get("untrained_test")),
    )


def transfer_run(
    source_dir: str | Path,
    cfg: RunConfig,
    out: str | Path,
    *,
    lang_prompt: str | Path | None = None,
    baseline_dir: str | Path | None = None,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    progress: bool = True,
    overwrite: bool = False,
    curve: str | Path | None = None,
    tensorboard: str | Path | None = None,
) -> TransferResult:
    """Transfer the prompt at ``source_dir`` to ``cfg.task``/``cfg.lang`` and train it.

    ``lang_prompt``: cross-language only — the target language's language prompt, whose
    language segment initialises the trained one. ``baseline_dir``: the target task's own
    prompt trained from scratch (same settings); with it the result has transferred − baseline
    and the convergence comparison (``cfg.train.eval_every`` must be > 0 for convergence).
    The untrained evaluation of the run is the zero-shot score of the initial prompt.
    ``out`` is checked before the model loads (see :func:`~promptatlas.runs.train.train_run`
    for ``overwrite``, ``curve`` and ``tensorboard``).
    """
    check_prompt_target(out, overwrite=overwrite or has_checkpoint(checkpoint_dir_for(out)))
    handle = handle or load_model(
        cfg.model,
        device=cfg.device,
        attn_implementation=cfg.attn_implementation,
        device_map=cfg.device_map,
    )
    source = load_prompt(source_dir, handle)
    meta = source.meta
    if meta.task is None or meta.lang is None:
        raise ValueError(
            f"{source_dir} is a language prompt; transfer a task prompt (train one with "
            "--lang-prompt)"
        )
    kind = transfer_kind(meta.task, meta.lang, cfg.task, cfg.lang)
    segment = None
    if lang_prompt is not None:
        if kind != "language":
            raise ValueError(
                "--lang-prompt is for cross-language transfer; cross-task transfer keeps the "
                "source's language segment"
            )
        segment = load_language_prompt(lang_prompt, handle).prompt.state_tensors()[LANG_SEGMENT]
    prompt = transfer_prompt(source.prompt, kind, lang_segment=segment).to(handle.device)
    # The run records the prompt actually trained (segments and trainable flags).
    cfg = dataclasses.replace(cfg, prompt=prompt.config, lang_prompt=None)
    source_name = f"{meta.task}-{meta.lang}"
    run = train_run(
        cfg, out, handle=handle, db=None, prompt=prompt, progress=progress, overwrite=overwrite,
        curve=curve, tensorboard=tensorboard,
    )  # fmt: skip
    base_test, base_best, base_steps, base_examples, untrained = _baseline_numbers(baseline_dir)
    steps = None
    if base_best is not None:
        history = read_metadata(out).extra.get("history", [])
        steps = steps_to_reach(history, CONVERGENCE_FRACTION * base_best)
    score = run.trained.score
    result = TransferResult(
        run=run,
        kind=kind,
        source=source_name,
        score=score,
        baseline=base_test,
        delta=score - base_test if base_test is not None else None,
        relative=relative_score(score, base_test) if base_test is not None else None,
        steps_to_90=steps,
        baseline_steps_to_90=base_steps,
        delta_ci=paired_gain(run.trained.examples, base_examples),
        vs_untrained=paired_gain(run.trained.examples, untrained),
    )
    from promptatlas.bank import update_metrics

    update_metrics(out, {"transfer": result.to_dict()})
    if db is not None:
        db.record(
            kind=f"transfer-{kind}",
            model=handle.name,
            task=cfg.task,
            lang=cfg.lang,
            method=prompt.method,
            split="test",
            metrics={**run.metrics["test"], "transfer": result.to_dict()},
            config={**cfg.to_dict(), "source": str(source_dir), "lang_prompt": lang_prompt},
            prompt_dir=str(out),
            seed=cfg.train.seed,
        )
    return result


def source_label_variant(source: TaskVariant, target: TaskVariant) -> TaskVariant:
    """``target`` with the label words of ``source`` when both have the same label keys (the
    same task in another language); otherwise ``target`` unchanged."""
    if source.spec.kind != "classification" or set(source.labels) != set(target.labels):
        return target
    return dataclasses.replace(target, verbalizers=source.verbalizers)


def zero_shot(
    prompt_dir: str | Path,
    task: str,
    lang: str,
    *,
    lang_segment: Literal["source", "target"] = "source",
    lang_prompt: str | Path | None = None,
    label_words: Literal["source", "target"] = "source",
    split: str = "test",
    limit: int | None = None,
    data_dir: str | None = None,
    eval_config: EvalConfig | None = None,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    fmt: FormatConfig | None = None,
) -> EvalResult:
    """Evaluate a stored task prompt on another task/language without training.

    lang_segment "target" swaps the prompt's language segment for the one in ``lang_prompt``
    (the target language's language prompt); "source" keeps the prompt as trained.
    label_words "source": classification uses the source task's label words when the label
    keys match (thesis §5.3.1: the model answers in the source language); otherwise, and for
    "target", the target's own. ``fmt``: the input format (default: the source prompt's; give
    the target's own when its inputs need another template or length). ``result.extra``
    records what was used.
    """
    meta = read_metadata(prompt_dir)
    handle = handle or load_model(meta.model)
    stored: StoredPrompt = load_prompt(prompt_dir, handle)
    if meta.task is None or meta.lang is None:
        raise ValueError(f"{prompt_dir} is a language prompt, not a task prompt")
    prompt = stored.prompt
    if lang_segment == "target":
        if lang_prompt is None:
            raise ValueError("lang_segment='target' needs the target language prompt (lang_prompt)")
        if not is_factorised(prompt):
            raise PromptConfigError(
                f"{prompt_dir} has no language segment to swap (segments "
                f"{prompt.segment_names()}); use a prompt trained with a language prompt"
            )
        target_lang = load_language_prompt(lang_prompt, handle)
        prompt.set_segment(LANG_SEGMENT, target_lang.prompt.state_tensors()[LANG_SEGMENT])
    elif lang_segment != "source":
        raise ValueError(f"lang_segment must be 'source' or 'target', got {lang_segment!r}")
    target = get_task(task, lang)
    source = get_task(meta.task, meta.lang)
    variant = source_label_variant(source, target) if label_words == "source" else target
    formatter = TaskFormatter(handle.tokenizer, variant, fmt or meta.run.format)
    examples = load_split(task, lang, split, data_dir=data_dir, limit=limit)  # type: ignore[arg-type]
    precision = meta.run.precision
    plm = PromptedLM(
        handle,
        prompt.to(handle.device),
        autocast_dtype=autocast_dtype("auto" if precision == "bf16" else precision, handle.device),
    )
    result = evaluate(plm, formatter, examples, eval_config)
    used = "source" if variant.verbalizers is source.verbalizers else "target"
    result.extra.update(
        {
            "source": f"{meta.task}-{meta.lang}",
            "lang_segment": lang_segment,
            "label_words": used,
            "prompt_dir": str(prompt_dir),
            "lang_prompt": str(lang_prompt) if lang_prompt else None,
        }
    )
    if db is not None:
        db.record(
            kind="zero-shot",
            model=handle.name,
            task=task,
            lang=lang,
            method=prompt.method,
            split=split,
            metrics={**result.summary(), **result.extra},
            config={
                "source": str(prompt_dir),
                "lang_segment": lang_segment,
                "lang_prompt": str(lang_prompt) if lang_prompt else None,
                "label_words": used,
                "limit": limit,
            },
            prompt_dir=str(prompt_dir),
            seed=meta.seed,
        )
    return result
