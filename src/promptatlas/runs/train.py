"""End-to-end train and evaluate runs, shared by the CLI and experiment files.

A *run* = model + task/language + prompt config + training config. ``train_run`` evaluates
the untrained (initialised) prompt on test, trains it, evaluates it again, stores it in the
prompt bank with its full config, versions and metrics, and records both evaluations in the
results database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from promptatlas.bank import (
    ResultsDB,
    StoredPrompt,
    check_prompt_target,
    load_prompt,
    save_prompt,
    update_metrics,
)
from promptatlas.configtools import ConfigBase, ConfigError, Precision, from_dict
from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate, paired_gain
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.io import write_json_atomic
from promptatlas.launch import refuse_multi_process_launch
from promptatlas.models import DEFAULT_MODEL, ModelHandle, load_model
from promptatlas.models.precision import resolve_precision
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt, check_context
from promptatlas.prompts.injection import autocast_dtype
from promptatlas.tasks import Example, get_task, load_split
from promptatlas.training import (
    TrainConfig,
    checkpoint_dir_for,
    has_checkpoint,
    remove_checkpoint,
    train_prompt,
)
from promptatlas.training.curves import CurveWriter, StepCallback, plot_curve

__all__ = [
    "RunConfig",
    "RunResult",
    "curve_path",
    "evaluate_stored",
    "init_seed",
    "load_examples",
    "recording_curve",
    "tensorboard_available",
    "train_run",
]


def curve_path(results: str | Path, prompt_dir: str | Path) -> Path:
    """Where the training curve of the prompt at ``prompt_dir`` goes in a results folder:
    ``<results>/curves/<prompt directory name>.jsonl`` (its PNG beside it)."""
    return Path(results) / "curves" / f"{Path(prompt_dir).name}.jsonl"


def tensorboard_available(notice: bool = True) -> bool:
    """Whether TensorBoard event files can be written (``pip install promptatlas[tensorboard]``);
    with ``notice`` a missing install is said once, in one line, on standard error."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        if notice:
            print(
                "promptatlas: --tensorboard needs TensorBoard (pip install "
                "'promptatlas[tensorboard]'); training goes on, its curves are written as JSONL "
                "and PNG only",
                file=sys.stderr,
            )
        return False
    return True


@contextmanager
def recording_curve(
    curve: str | Path | None,
    *,
    tensorboard: str | Path | None = None,
    fresh: bool = False,
) -> Iterator[list[StepCallback]]:
    """The step callbacks that record a training curve: one JSON line per step in ``curve``
    (appended to on a resumed run; started over with ``fresh``) and TensorBoard event files in
    ``tensorboard``; when the block ends the curve is drawn as the PNG beside it. Yields no
    callback when ``curve`` is None."""
    if curve is None:
        yield []
        return
    path = Path(curve)
    if fresh:
        path.unlink(missing_ok=True)
    writer = CurveWriter(path, tensorboard=tensorboard, notice=lambda _: None)
    try:
        yield [writer]
    finally:
        writer.close()
        with contextlib.suppress(OSError, ValueError):  # a figure must not fail the run
            plot_curve(path, path.with_suffix(".png"))


def _sub(cls: Any, value: Any, path: str) -> Any:
    """A nested config given as a mapping (e.g. from YAML), checked strictly."""
    if cls is PromptConfig and isinstance(value, Mapping):
        return PromptConfig.from_dict(value, path=path)
    return from_dict(cls, value, path=path)


@dataclass(frozen=True)
class RunConfig(ConfigBase):
    """Everything that determines a training run (saved next to its outputs)."""

    task: str
    lang: str
    model: str = DEFAULT_MODEL
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    data_dir: str | None = None  # None = the bundled sample
    # A language prompt directory: train a factorised prompt, its language segment frozen
    # (thesis Eq. 9). Method, kv and layers then come from the language prompt.
    lang_prompt: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = 200
    test_limit: int | None = None
    baseline: bool = True  # also evaluate the untrained prompt on test
    precision: Precision = "auto"  # "auto" (bf16 where native, else fp32), "fp32" or "bf16"
    device: str | None = None
    # "auto": spread a backbone larger than one GPU over the GPUs (accelerate); see load_model
    device_map: str | None = None
    attn_implementation: str = "eager"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, cls in (
            ("prompt", PromptConfig),
            ("train", TrainConfig),
            ("eval", EvalConfig),
            ("format", FormatConfig),
        ):
            object.__setattr__(self, name, _sub(cls, getattr(self, name), name))
        variant = get_task(self.task, self.lang)  # fails early, listing valid names
        object.__setattr__(self, "task", variant.spec.name)  # "SA" → "sa"
        object.__setattr__(self, "lang", variant.lang)
        for name in ("train_limit", "dev_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1 or None, got {value}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["prompt"] = self.prompt.to_dict()
        return out


@dataclass
class RunResult:
    path: Path
    metrics: dict[str, Any]
    untrained: EvalResult | None
    trained: EvalResult
    steps: int
    seconds: float


def load_examples(cfg: RunConfig, split: str) -> list[Example]:
    limit = {"train": cfg.train_limit, "dev": cfg.dev_limit, "test": cfg.test_limit}[split]
    return load_split(cfg.task, cfg.lang, split, data_dir=cfg.data_dir, limit=limit)  # type: ignore[arg-type]


def _label_ids(formatter: TaskFormatter) -> list[int] | None:
    if formatter.task.spec.kind != "classification":
        return None
    return [i for ids in formatter.label_token_ids().values() for i in ids]


def init_seed(seed: int, task: str, lang: str) -> int:
    """The seed of a task prompt's initialisation: the run seed offset by the task and language,
    so that the prompts of one study (and a transfer's source and target) do not all start from
    the same random tensor. Deterministic across processes (CRC32, not ``hash``)."""
    return seed * 100_003 + zlib.crc32(f"{task}-{lang}".encode()) % 100_003


def build_prompt(cfg: RunConfig, handle: ModelHandle, formatter: TaskFormatter) -> SoftPrompt:
    """A freshly initialised prompt; deterministic in ``cfg.train.seed``, task and language
    (:func:`init_seed`). With ``cfg.lang_prompt``: the frozen language segment + a fresh task
    segment."""
    seed = init_seed(cfg.train.seed, cfg.task, cfg.lang)
    if cfg.lang_prompt is not None:
        from promptatlas.prompts.config import PromptConfigError
        from promptatlas.transfer.subprompts import task_prompt_from_language

        factorised = task_prompt_from_language(
            cfg.lang_prompt,
            handle,
            seed=seed,
            init=cfg.prompt.init,
            label_token_ids=_label_ids(formatter),
        )
        if factorised.method != cfg.prompt.method:
            raise PromptConfigError(
                f"the language prompt {cfg.lang_prompt} is a {factorised.method} prompt but the "
                f"run asks for {cfg.prompt.method}; use --method {factorised.method} or another "
                "language prompt"
            )
        check_context(
            factorised.length, handle, budget=formatter.max_length, task=formatter.task.name
        )
        return factorised
    # Before the tensors exist: a prompt that does not fit the model fails at once.
    check_context(cfg.prompt.length, handle, budget=formatter.max_length, task=formatter.task.name)
    prompt = SoftPrompt(cfg.prompt, handle.geometry)
    prompt.initialise(
        handle,
        generator=torch.Generator().manual_seed(seed),
        label_token_ids=_label_ids(formatter),
    )
    return prompt.to(handle.device)


def _summary(result: EvalResult) -> dict[str, Any]:
    return result.summary()


def train_run(
    cfg: RunConfig,
    out: str | Path,
    *,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    prompt: SoftPrompt | None = None,
    progress: bool = True,
    overwrite: bool = False,
    curve: str | Path | None = None,
    tensorboard: str | Path | None = None,
) -> RunResult:
    """Train one prompt and store it at ``out`` (see module docstring).

    ``prompt``: start from this prompt (e.g. a transferred initialisation) instead of a fresh
    one. An interrupted run resumes from its checkpoint (``.NAME.checkpoint`` beside ``out``)
    when called again. ``out`` is checked before the model loads; a prompt already there is
    replaced only with ``overwrite`` or when this call resumes the run that replaces it.
    ``curve``: a JSONL file that receives the training curve step by step (drawn as a PNG
    beside it at the end; see :func:`recording_curve`); ``tensorboard``: a folder for
    TensorBoard event files of the same curve.
    """
    refuse_multi_process_launch()  # N launched copies would race for ``out``
    out = Path(out)
    checkpoints = checkpoint_dir_for(out)
    resuming = has_checkpoint(checkpoints)
    replace = overwrite or resuming
    check_prompt_target(out, overwrite=replace)
    handle = handle or load_model(
        cfg.model,
        device=cfg.device,
        attn_implementation=cfg.attn_implementation,
        device_map=cfg.device_map,
    )
    task = get_task(cfg.task, cfg.lang)
    formatter = TaskFormatter(handle.tokenizer, task, cfg.format)
    train = load_examples(cfg, "train")
    dev = load_examples(cfg, "dev") if cfg.train.eval_every else None
    test = load_examples(cfg, "test")
    prompt = build_prompt(cfg, handle, formatter) if prompt is None else prompt
    plm = PromptedLM(handle, prompt, autocast_dtype=autocast_dtype(cfg.precision, handle.device))
    untrained = evaluate(plm, formatter, test, cfg.eval) if cfg.baseline else None
    with recording_curve(curve, tensorboard=tensorboard, fresh=not resuming) as callbacks:
        result = train_prompt(
            plm,
            formatter,
            train,
            cfg.train,
            dev=dev,
            eval_config=cfg.eval,
            checkpoint_dir=checkpoints,
            progress=progress,
            keep_checkpoint=True,  # until the prompt is stored: an interrupt loses nothing
            step_callbacks=callbacks,
        )
    trained = evaluate(plm, formatter, test, cfg.eval)
    metrics: dict[str, Any] = {"test": _summary(trained)}
    if untrained is not None:
        metrics["untrained_test"] = _summary(untrained)
        # trained − untrained on the same test examples, with a paired bootstrap interval
        gain = paired_gain(trained.examples, untrained.examples)
        if gain is not None:
            metrics["gain"] = gain
    if result.best_dev is not None:
        metrics["dev_best"] = {"score": result.best_dev, "step": result.best_step}
    config = cfg.to_dict()
    config["resolved_precision"] = resolve_precision(cfg.precision, handle.device)
    config["resolved_train"] = {"lr": result.lr, "objective": result.objective}
    save_prompt(
        out,
        prompt,
        handle,
        task=cfg.task,
        lang=cfg.lang,
        seed=cfg.train.seed,
        metrics=metrics,
        config=config,
        extra={
            "history": result.history,
            "train_seconds": result.seconds,
            "steps": result.steps,
            "n_train": len(train),
            "n_test": len(test),
        },
        overwrite=replace,
    )
    if db is not None:
        common: dict[str, Any] = {
            "model": handle.name,
            "task": cfg.task,
            "lang": cfg.lang,
            "method": prompt.method,
            "config": config,
            "seed": cfg.train.seed,
        }
        if untrained is not None:
            db.record(
                kind="eval-untrained",
                split="test",
                metrics=_summary(untrained),
                prompt_dir=str(out),
                **common,
            )
        trained_row = {**_summary(trained)}
        if "gain" in metrics:
            trained_row["gain"] = metrics["gain"]
        db.record(kind="train", split="test", metrics=trained_row, prompt_dir=str(out), **common)
    remove_checkpoint(checkpoints)
    return RunResult(out, metrics, untrained, trained, result.steps, result.seconds)


def eval_target(prompt_dir: str | Path, meta: Any, task: str | None, lang: str | None) -> Any:
    """The task variant a stored prompt is evaluated on: ``task``/``lang`` (zero-shot) or its
    own; unknown names and language prompts fail here, before any model loads."""
    task_name = task or meta.task
    lang_name = lang or meta.lang
    if task_name is None or lang_name is None:
        raise ValueError(
            f"{prompt_dir} records no task/language (a language prompt?); give --task and --lang"
        )
    return get_task(task_name, lang_name)


def warn_changed_data(prompt_dir: str | Path, meta: Any, data_dir: str | None = None) -> list[str]:
    """Warn (and return the descriptions) when data files of the prompt's task differ from the
    ones it was trained on (their SHA-256 in its metadata): its stored scores and new ones are
    then not comparable."""
    from promptatlas.tasks.registry import changed_data

    changes = changed_data(meta.data_files, meta.task, meta.lang, data_dir)
    if changes:
        warnings.warn(
            f"the data of task {meta.task}-{meta.lang} changed since {prompt_dir} was trained: "
            f"{'; '.join(changes)}. Its stored scores are not comparable with new ones",
            stacklevel=2,
        )
    return changes


def evaluate_stored(
    prompt_dir: str | Path,
    *,
    split: str = "test",
    handle: ModelHandle | None = None,
    task: str | None = None,
    lang: str | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    eval_config: EvalConfig | None = None,
    db: ResultsDB | None = None,
    check_model: bool = True,
    save: bool = True,
) -> EvalResult:
    """Evaluate a stored prompt on a split of its task (or another ``task``/``lang``, which
    is zero-shot transfer: label words of the *target* task's verbalizer)."""
    from promptatlas.bank import read_metadata

    meta = read_metadata(prompt_dir)
    variant = eval_target(prompt_dir, meta, task, lang)  # before the model loads
    task_name, lang_name = variant.spec.name, variant.lang
    if task_name == meta.task and lang_name == meta.lang:
        warn_changed_data(prompt_dir, meta, data_dir)
    handle = handle or load_model(meta.model)
    stored: StoredPrompt = load_prompt(prompt_dir, handle, check_model=check_model)
    formatter = TaskFormatter(handle.tokenizer, variant, meta.run.format)
    examples = load_split(task_name, lang_name, split, data_dir=data_dir, limit=limit)  # type: ignore[arg-type]
    # Re-evaluation runs at this machine's own precision ("auto"): a prompt trained under bf16
    # on a machine with native bf16 must not be emulated in bf16 elsewhere.
    plm = PromptedLM(
        handle,
        stored.prompt.to(handle.device),
        autocast_dtype=autocast_dtype("auto", handle.device),
    )
    result = evaluate(plm, formatter, examples, eval_config)
    if save and task_name == meta.task and lang_name == meta.lang:
        update_metrics(prompt_dir, {split: _summary(result)})
    if db is not None:
        db.record(
            kind="eval",
            model=handle.name,
            task=task_name,
            lang=lang_name,
            method=stored.prompt.method,
            split=split,
            metrics=_summary(result),
            config={
                "prompt_dir": str(prompt_dir),
                "limit": limit,
                "eval": dataclasses.asdict(eval_config or EvalConfig()),
            },
            prompt_dir=str(prompt_dir),
            seed=meta.seed,
        )
    return result


def dump_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_json_atomic(path, data)
