"""Cross-model transfer end to end (Su et al. 2022; SPEC §4): train a projector from model A's
prompt space to model B's on one task, then carry other prompts of A over to B.

:func:`project_across_models`:

1. trains the projector (:mod:`.projector`) on the task of ``source_prompt`` (a prompt of model A)
   through frozen model B with the task loss, and saves it in ``<out>/projector``;
2. evaluates the projected training prompt on B (how well the projector learned its task);
3. for every prompt in ``apply`` (other tasks' prompts of A): projects it, evaluates it on B
   zero-shot, and — with ``init_steps > 0`` — trains it further on B as an initialisation,
   beside a prompt trained from a random initialisation for the same number of steps.

Every projected prompt is a normal prompt directory on model B (``<out>/prompts/...``); a
``summary.json`` holds the table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from promptatlas.bank import PromptExistsError, ResultsDB, list_prompts, load_prompt, save_prompt
from promptatlas.configtools import ConfigBase, ConfigError, Precision, from_dict
from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.models import ModelHandle, load_model
from promptatlas.outputs import check_output_path
from promptatlas.prompts import PromptedLM, SoftPrompt
from promptatlas.prompts.injection import autocast_dtype
from promptatlas.runs.train import RunConfig, dump_json, train_run
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig
from promptatlas.transfer.projector import (
    PROJECTOR_METADATA_FILE,
    ProjectorConfig,
    fit_projector_distance,
    project_prompt,
    save_projector,
    train_projector,
)

__all__ = ["ProjectConfig", "check_project_target", "distance_pairs", "project_across_models"]

PROJECTOR_CHECKPOINT = ".projector.checkpoint"


@dataclass(frozen=True)
class ProjectConfig(ConfigBase):
    """A cross-model transfer: source prompts of ``source_model`` → ``target_model``.

    source_prompt: the prompt (of the source model) whose task trains the projector.
    apply: further prompts of the source model to project (zero-shot and as initialisation).
    train: optimisation of the projector (an MLP wants a far smaller rate than a prompt).
    init_steps / init_train: training of each projected prompt on the target (0 = zero-shot
        only); the same steps from a random initialisation are the baseline.
    objective: "task" (default): the projector learns the task of ``source_prompt`` through
        the frozen target model; "distance" (Su et al.'s "Distance Minimizing", SPEC B5): it
        minimises MSE(Proj(P^A_t), P^B_t) over the tasks t of ``source_prompt`` and ``fit``,
        whose target-model prompts (same task, language and method) are found in
        ``target_bank``; no model runs while it fits (``train.steps`` full-batch steps at
        ``train.lr``).
    """

    source_model: str
    target_model: str
    source_prompt: str
    apply: tuple[str, ...] = ()
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=100, batch_size=8, lr=1e-3, warmup=0.1)
    )
    init_steps: int = 0
    init_train: Mapping[str, Any] = field(default_factory=dict)
    train_limit: int | None = None
    test_limit: int | None = 200
    precision: Precision = "auto"  # "auto" (bf16 where native, else fp32), "fp32" or "bf16"
    device: str | None = None
    objective: Literal["task", "distance"] = "task"
    fit: tuple[str, ...] = ()
    target_bank: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "apply", tuple(str(p) for p in self.apply))
        object.__setattr__(self, "fit", tuple(str(p) for p in self.fit))
        object.__setattr__(self, "train", from_dict(TrainConfig, self.train, path="train"))
        if self.objective not in ("task", "distance"):
            raise ConfigError(f"objective must be 'task' or 'distance', got {self.objective!r}")
        if self.objective == "distance" and not self.target_bank:
            raise ConfigError(
                "objective 'distance' needs target_bank: a folder with prompts of the target "
                "model for the same tasks as source_prompt and fit"
            )
        if self.objective == "distance" and (self.train.steps is None or self.train.lr is None):
            raise ConfigError("objective 'distance' needs train.steps and train.lr")
        if self.objective == "task" and (self.fit or self.target_bank):
            raise ConfigError("fit and target_bank apply to objective 'distance' only")
        if isinstance(self.projector, Mapping):
            object.__setattr__(self, "projector", ProjectorConfig.from_dict(self.projector))
        if self.init_steps < 0:
            raise ConfigError("init_steps must be ≥ 0")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["apply"] = list(self.apply)
        out["fit"] = list(self.fit)
        return out


def _format_of(meta_config: Mapping[str, Any]) -> FormatConfig:
    fmt = meta_config.get("format")
    return FormatConfig(**fmt) if isinstance(fmt, Mapping) else FormatConfig()


def check_project_target(
    out: str | Path, cfg: ProjectConfig | None = None, *, overwrite: bool = False
) -> Path:
    """Check the output folder of :func:`project_across_models` before any model loads.

    A folder that already holds a cross-model transfer is reused only for the same ``cfg`` (a
    rerun) or with ``overwrite``; otherwise :class:`~promptatlas.bank.PromptExistsError`."""
    target = check_output_path(out, kind="folder", what="cross-model transfer folder")
    if cfg is not None and cfg.objective == "distance" and not Path(str(cfg.target_bank)).is_dir():
        raise FileNotFoundError(
            f"--target-bank {cfg.target_bank} is not a folder; give the folder that holds the "
            f"{cfg.target_model} prompts of the tasks to fit"
        )
    meta_path = target / "projector" / PROJECTOR_METADATA_FILE
    if overwrite or not meta_path.is_file():
        return target
    try:
        stored = json.loads(meta_path.read_text(encoding="utf-8"))["extra"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        stored = None
    same = cfg is not None and stored == json.loads(json.dumps(cfg.to_dict(), default=str))
    if not same:
        raise PromptExistsError(
            f"--out {target} already holds a cross-model transfer with other settings "
            f"({meta_path.relative_to(target)}); pass --overwrite to replace its projector and "
            "prompts, or choose another --out"
        )
    return target


def project_across_models(
    cfg: ProjectConfig,
    out: str | Path,
    *,
    source_handle: ModelHandle | None = None,
    target_handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    progress: bool = True,
    log: Any = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the cross-model transfer described in the module docstring; returns the summary.

    ``out`` is checked first (:func:`check_project_target`); the prompts inside it belong to
    this transfer and are replaced when it runs again."""
    out = check_project_target(out, cfg, overwrite=overwrite)
    source_handle = source_handle or load_model(cfg.source_model, device=cfg.device)
    target_handle = target_handle or load_model(cfg.target_model, device=cfg.device)
    autocast = autocast_dtype(cfg.precision, target_handle.device)
    stored = load_prompt(cfg.source_prompt, source_handle)
    meta = stored.meta
    if meta.task is None or meta.lang is None:
        raise ValueError(f"{cfg.source_prompt} is a language prompt; give a task prompt")
    fmt = _format_of(meta.config)
    variant = get_task(meta.task, meta.lang)
    formatter = TaskFormatter(target_handle.tokenizer, variant, fmt)
    train = load_split(meta.task, meta.lang, "train", limit=cfg.train_limit)
    if cfg.objective == "distance":
        pairs = distance_pairs(cfg, source_handle, target_handle)
        log(
            f"projector {cfg.source_model} → {cfg.target_model} by distance minimisation over "
            f"{len(pairs)} task prompt pairs ({', '.join(pairs)}; {cfg.train.steps} steps)"
        )
        started = time.perf_counter()
        projector, history = fit_projector_distance(
            list(pairs.values()),
            projector_config=cfg.projector,
            steps=int(cfg.train.steps or 0),
            lr=float(cfg.train.lr or 0.0),
            seed=cfg.train.seed,
            warmup=cfg.train.warmup,
            schedule=cfg.train.schedule,
            max_grad_norm=cfg.train.max_grad_norm,
            weight_decay=cfg.train.weight_decay,
        )
        projector = projector.to(target_handle.device)
        seconds = time.perf_counter() - started
    else:
        log(
            f"projector {cfg.source_model} → {cfg.target_model} on {variant.name} "
            f"({stored.prompt.method}, {cfg.train.steps} steps)"
        )
        projector, result = train_projector(
            stored.prompt,
            target_handle,
            formatter,
            train,
            cfg.train,
            projector_config=cfg.projector,
            autocast_dtype=autocast,
            progress=progress,
            checkpoint_dir=out / PROJECTOR_CHECKPOINT,
        )
        history, seconds = result.history, result.seconds
    save_projector(
        out / "projector",
        projector,
        source_model=source_handle.name,
        target_model=target_handle.name,
        source_geometry=source_handle.geometry,
        target_geometry=target_handle.geometry,
        prompt_config=stored.prompt.config,
        extra={
            "config": cfg.to_dict(),
            "history": history,
            "train_seconds": seconds,
        },
    )
    rows: list[dict[str, Any]] = []
    for directory in (cfg.source_prompt, *cfg.apply):
        rows.append(
            _carry_over(
                cfg, directory, projector, source_handle, target_handle, out, autocast, db, progress
            )
        )
        r = rows[-1]
        line = f"  {r['prompt']}: source model {_pct(r['source_score'])}, projected zero-shot "
        line += _pct(r["zero_shot"])
        if r.get("from_projection") is not None:
            line += (
                f", +{cfg.init_steps} steps from projection {_pct(r['from_projection'])} vs "
                f"from random {_pct(r['from_random'])}"
            )
        log(line)
    summary = {
        "source_model": source_handle.name,
        "target_model": target_handle.name,
        "projector_task": variant.name,
        "projector_objective": cfg.objective,
        "projector_loss_first": history[0]["loss"] if history else None,
        "projector_loss_last": history[-1]["loss"] if history else None,
        "projector_seconds": seconds,
        "rows": rows,
    }
    dump_json(out / "summary.json", summary)
    return summary


def distance_pairs(
    cfg: ProjectConfig, source_handle: ModelHandle, target_handle: ModelHandle
) -> dict[str, tuple[SoftPrompt, SoftPrompt]]:
    """The (source-model prompt, target-model prompt) pairs a distance-minimising projector
    fits: for ``source_prompt`` and each ``fit`` prompt, the prompt in ``target_bank`` trained
    on the target model for the same task, language and method (the first by path if there
    are several). Keyed ``task-lang``."""
    assert cfg.target_bank is not None
    bank = [
        (d, m)
        for d, m in list_prompts(cfg.target_bank)
        if m.task is not None and m.model_fingerprint == target_handle.fingerprint
    ]
    pairs: dict[str, tuple[SoftPrompt, SoftPrompt]] = {}
    for directory in (cfg.source_prompt, *cfg.fit):
        stored = load_prompt(directory, source_handle)
        meta = stored.meta
        if meta.task is None or meta.lang is None:
            raise ValueError(f"{directory} is a language prompt; give task prompts to fit")
        method = stored.prompt.method
        want = stored.prompt.config
        match = [
            d
            for d, m in bank
            if (m.task, m.lang, m.prompt_config.method) == (meta.task, meta.lang, method)
            and m.prompt_config.length == want.length
            and m.prompt_config.kv == want.kv
            and (method == "v1" or m.prompt_config.layers is None)
        ]
        if not match:
            raise ValueError(
                f"{cfg.target_bank} holds no {method} prompt of {meta.task}-{meta.lang} with "
                f"{want.length} positions trained on {target_handle.name}; train one there "
                f"(promptatlas train --model {cfg.target_model} --task {meta.task} "
                f"--lang {meta.lang} --method {method}) "
                "or drop that prompt from the fit"
            )
        key = f"{meta.task}-{meta.lang}"
        if key in pairs:
            raise ValueError(f"two fit prompts are of {key}; give one prompt per task")
        pairs[key] = (stored.prompt, load_prompt(match[0], target_handle).prompt)
    return pairs


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _carry_over(
    cfg: ProjectConfig,
    directory: str,
    projector: Any,
    source_handle: ModelHandle,
    target_handle: ModelHandle,
    out: Path,
    autocast: torch.dtype | None,
    db: ResultsDB | None,
    progress: bool,
) -> dict[str, Any]:
    stored = load_prompt(directory, source_handle)
    meta = stored.meta
    if meta.task is None or meta.lang is None:
        raise ValueError(f"{directory} is a language prompt; give task prompts to --apply")
    projected = project_prompt(projector, stored.prompt, target_handle.geometry)
    variant = get_task(meta.task, meta.lang)
    fmt = _format_of(meta.config)
    formatter = TaskFormatter(target_handle.tokenizer, variant, fmt)
    test = load_split(meta.task, meta.lang, "test", limit=cfg.test_limit)
    eval_cfg = EvalConfig(**meta.config.get("eval", {})) if meta.config.get("eval") else None
    zero = evaluate(
        PromptedLM(target_handle, projected, autocast_dtype=autocast), formatter, test, eval_cfg
    )
    name = f"{meta.task}-{meta.lang}-{stored.prompt.method}"
    target_dir = out / "prompts" / name
    row: dict[str, Any] = {
        "prompt": str(directory),
        "task": meta.task,
        "lang": meta.lang,
        "method": stored.prompt.method,
        "source_score": meta.metrics.get("test", {}).get("score"),
        "zero_shot": zero.score,
        "projected_dir": str(target_dir),
    }
    save_prompt(
        target_dir,
        projected,
        target_handle,
        task=meta.task,
        lang=meta.lang,
        seed=meta.seed,
        metrics={"test": zero.summary()},
        config={"projected_from": str(directory), "format": dataclasses.asdict(fmt)},
        extra={"kind": "projected", "source_model": source_handle.name},
        overwrite=True,
    )
    if db is not None:
        db.record(
            kind="projected-zero-shot",
            model=target_handle.name,
            task=meta.task,
            lang=meta.lang,
            method=stored.prompt.method,
            split="test",
            metrics={**zero.metrics, "n": zero.n},
            config={"source": str(directory), "source_model": source_handle.name},
            prompt_dir=str(target_dir),
            seed=meta.seed,
        )
    if cfg.init_steps:
        train_cfg = TrainConfig(
            **{
                **dataclasses.asdict(TrainConfig(steps=cfg.init_steps, lr=0.03)),
                **cfg.init_train,
                "steps": cfg.init_steps,
            }
        )
        run_cfg = RunConfig(
            task=meta.task,
            lang=meta.lang,
            model=target_handle.name,
            prompt=projected.config,
            train=train_cfg,
            format=fmt,
            test_limit=cfg.test_limit,
            train_limit=cfg.train_limit,
            baseline=False,
            precision=cfg.precision,
        )
        from_projection = train_run(
            run_cfg,
            out / "prompts" / f"{name}-trained",
            handle=target_handle,
            prompt=projected,
            db=db,
            progress=progress,
            overwrite=True,
        )
        # The baseline: one plain trainable prompt of the same size from the uniform init.
        plain = dataclasses.replace(
            projected.config, segments=(), length=projected.length, init="uniform"
        )
        from_random = train_run(
            dataclasses.replace(run_cfg, prompt=plain),
            out / "prompts" / f"{name}-random-init",
            handle=target_handle,
            db=db,
            progress=progress,
            overwrite=True,
        )
        row["from_projection"] = from_projection.trained.score
        row["from_random"] = from_random.trained.score
    return row
