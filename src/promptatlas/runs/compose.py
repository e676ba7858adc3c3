"""One composition run, shared by the CLI and the composition study (spec composition.md).

* :func:`compose_run` — one method (PT, SPoT-s, SPoT-m, ATTEMPT or AMP) over the task prompts
  of a bank in one language: target prompts saved like any prompt (``<out>/prompts/…``, with
  their method, sources and scores in the metadata), ``scores.json``/``scores.csv``, AMP's
  attention matrix (CSV + heatmap) and ψ, ATTEMPT's mixer, and ``run.json`` (the config, the
  library versions, the CPU and the precision the run actually used).
* :func:`ipt_fit_run` — IPT's autoencoder over many prompts of a bank, stored as a subspace
  directory (with the PCA of the intrinsic vectors beside it).
* :func:`ipt_tune_run` — intrinsic subspace tuning of one task in a stored subspace; the tuned
  prompt is stored as a prompt directory, with its recovery against a full prompt-tuning score.

CPU-sized settings. The papers' settings (AMP: lr 5e-5 for 10 epochs with 500 warm-up steps;
IPT: lr 3e-5 for 100k steps) barely move ψ or the autoencoder in the tens of steps a CPU run
affords: ψ starts at W_V = I and AdamW moves each weight by about lr per step, so 50 steps at
5e-5 change W_V by ≤ 0.0025 — the composed prompts stay the sources. :data:`CPU_AMP`,
:data:`CPU_ATTEMPT`, :data:`CPU_IPT` and :data:`CPU_IST` are the settings measured to move
in such a run (docs/composition.md, "CPU-sized settings"); the CLI uses them by default.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from promptatlas.bank import ResultsDB, list_prompts, save_prompt
from promptatlas.compose import (
    AMPConfig,
    AttemptConfig,
    ComposeError,
    IntrinsicSubspace,
    IPTConfig,
    ISTConfig,
    MethodScore,
    Source,
    SpotConfig,
    TaskData,
    fit_ipt,
    load_subspace,
    load_task_data,
    recovery,
    run_prompt_tuning,
    run_spot,
    save_subspace,
    sources_from_bank,
    train_amp,
    train_attempt,
    tune_intrinsic,
)
from promptatlas.configtools import ConfigBase, ConfigError, Precision, from_dict
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.formatting import FormatConfig
from promptatlas.io import write_csv_atomic, write_json_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.models.precision import autocast_dtype, hardware_info, resolve_precision
from promptatlas.outputs import check_output_path
from promptatlas.report.compose import (
    plot_attention_heatmap,
    plot_intrinsic_pca,
    write_attention_csv,
)
from promptatlas.tasks import get_task
from promptatlas.training import TrainConfig

__all__ = [
    "COMPOSE_METHODS",
    "CPU_AMP",
    "CPU_ATTEMPT",
    "CPU_IPT",
    "CPU_IST",
    "CPU_PT",
    "ComposeRunConfig",
    "ComposeRunResult",
    "IPTFitRunConfig",
    "IPTTuneRunConfig",
    "IPTTuneRunResult",
    "bank_inputs",
    "compose_run",
    "ipt_fit_run",
    "ipt_tune_run",
]

COMPOSE_METHODS: tuple[str, ...] = ("pt", "spot-s", "spot-m", "attempt", "amp")

# CPU-sized settings (see the module docstring and docs/composition.md): tens of steps of
# batch 8 on a 2-core CPU, fp32. AMP: no warm-up (a 500-step warm-up never ends in 60 steps)
# and lr 1e-3: on Gemma-3-270M (SA + NLI, English, 60 steps) 1e-3 composed SA at 79.5 (above
# its source prompt, 76.5) where 1e-2 scrambled the prompts (56.5) and 5e-5, the paper's, left
# ψ where it started (docs/composition.md).
CPU_AMP = AMPConfig(steps=60, batch_size=8, lr=1e-3, warmup_steps=0, schedule="constant")
CPU_ATTEMPT = AttemptConfig(steps=30, batch_size=8, lr=0.3, warmup_steps=0)
CPU_PT = TrainConfig(steps=30, batch_size=8)
CPU_IPT = IPTConfig(steps=300, batch_size=8, lr=1e-3, task_loss=False, max_grad_norm=1.0)
CPU_IST = ISTConfig(steps=30, batch_size=8, lr=0.1)

_TENSORS = "prompt.safetensors"


def _sub(cls: Any, value: Any, path: str) -> Any:
    return from_dict(cls, value, path=path)


def _names(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(str(v).strip().lower() for v in values)


@dataclass(frozen=True)
class ComposeRunConfig(ConfigBase):
    """One composition method over the task prompts of ``sources`` (a bank folder) in ``lang``.

    tasks: the target tasks (each needs its own source prompt in the bank: AMP composes it,
        SPoT-s weighs the sources by their similarity to it, and its frozen segments are the
        targets' template). source_tasks: which bank tasks are sources (default: every task
        prompt of ``lang``). source_seed: which seed's prompt of a task (default the lowest).
        source_method: only prompts of this method ("v1", "v2"; default any).
    format / eval: None = the stored ones (format: each target prompt's own; eval: the first
        prompt's).
    pt: prompt tuning of PT and both SPoT variants; amp / attempt: their settings;
    spot_source: SPoT-m's source ("task" or "task-lang"; default NLI in ``lang``).
    seed: every method's seed (overrides the seeds in pt / amp / attempt).
    The settings blocks default to the library's (the papers'); the CLI passes the CPU-sized
    ``CPU_*`` settings unless told otherwise.
    """

    method: Literal["pt", "spot-s", "spot-m", "attempt", "amp"]
    sources: str
    tasks: tuple[str, ...]
    lang: str
    model: str | None = None
    source_tasks: tuple[str, ...] | None = None
    source_seed: int | None = None
    source_method: str | None = None
    pt: TrainConfig = field(default_factory=TrainConfig)
    amp: AMPConfig = field(default_factory=AMPConfig)
    attempt: AttemptConfig = field(default_factory=AttemptConfig)
    spot_source: str | None = None
    format: FormatConfig | None = None
    eval: EvalConfig | None = None
    data_dir: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = 64
    test_limit: int | None = None
    seed: int = 42
    precision: Precision = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in COMPOSE_METHODS:
            raise ConfigError(f"method: one of {list(COMPOSE_METHODS)}, got {self.method!r}")
        blocks: dict[str, Any] = {"pt": TrainConfig, "amp": AMPConfig, "attempt": AttemptConfig}
        for name, cls in blocks.items():
            object.__setattr__(self, name, _sub(cls, getattr(self, name), name))
        optional: dict[str, Any] = {"format": FormatConfig, "eval": EvalConfig}
        for name, cls in optional.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _sub(cls, value, name))
        object.__setattr__(self, "lang", str(self.lang).strip().lower())
        object.__setattr__(self, "tasks", _names(self.tasks))
        object.__setattr__(self, "source_tasks", _names(self.source_tasks))
        if not self.tasks:
            raise ConfigError("tasks: give at least one target task")
        for task in self.tasks:
            get_task(task, self.lang)  # unknown names fail here, listing the valid ones
        for name in ("train_limit", "dev_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1 or None, got {value}")


@dataclass
class ComposeRunResult:
    """What a composition run wrote and scored."""

    out: Path
    method: str
    scores: list[MethodScore]
    prompts: dict[str, Path] = field(default_factory=dict)
    attention: torch.Tensor | None = None
    keys: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# -- inputs ---------------------------------------------------------------------------------------


def _bank_metas(
    root: str | Path,
    langs: Sequence[str] | None,
    tasks: Sequence[str] | None,
    method: str | None = None,
) -> list:
    found = []
    for path, meta in list_prompts(root):
        if meta.task is None or meta.lang is None:
            continue
        if method is not None and meta.prompt.get("method") != method:
            continue
        if langs is not None and meta.lang not in langs:
            continue
        if tasks is not None and meta.task not in tasks:
            continue
        found.append((path, meta))
    return found


def _no_prompts(root: str | Path, what: str) -> ComposeError:
    have = sorted({f"{m.task}-{m.lang}" for _, m in list_prompts(root) if m.task and m.lang})
    hint = f"it holds {', '.join(have)}" if have else "it holds no task prompts"
    return ComposeError(
        f"no {what} in the bank {root} ({hint}); train them first (`promptatlas train`, "
        "`promptatlas run configs/compose.yaml`) or choose another bank"
    )


def bank_inputs(
    root: str | Path,
    *,
    langs: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    model: str | None = None,
) -> tuple[str, Any]:
    """The model of a bank's task prompts (``model`` when given) and the stored run settings
    (format, evaluation options) of the first of them; fails before any model loads when the
    bank holds no matching prompt."""
    if not Path(root).expanduser().is_dir():
        raise ComposeError(f"the bank folder {root} does not exist")
    found = _bank_metas(root, langs, tasks)
    if not found:
        what = "task prompts" + (f" of {', '.join(langs)}" if langs else "")
        raise _no_prompts(root, what + (f" for {', '.join(tasks)}" if tasks else ""))
    models = sorted({m.model for _, m in found})
    if model is None and len(models) > 1:
        raise ComposeError(f"the bank {root} holds prompts of several models {models}; give one")
    return model or models[0], found[0][1].run


def _target_formats(
    metas: Sequence[Any],
    lang: str,
    tasks: Sequence[str],
    given: FormatConfig | None,
    fallback: FormatConfig,
) -> dict[str, FormatConfig]:
    """The input format of each target ("task-lang" → format): ``given`` for all when set,
    else the format stored with the target's own prompt (``metas``: the bank's prompts as
    (path, metadata); the lowest seed's)."""
    if given is not None:
        return {f"{t}-{lang}": given for t in tasks}
    stored: dict[str, tuple[int, FormatConfig]] = {}
    for _, meta in metas:
        if meta.lang != lang or meta.task not in tasks:
            continue
        seed = meta.seed if meta.seed is not None else -1
        key = f"{meta.task}-{meta.lang}"
        if key not in stored or seed < stored[key][0]:
            stored[key] = (seed, meta.run.format)
    return {f"{t}-{lang}": stored.get(f"{t}-{lang}", (0, fallback))[1] for t in tasks}


def pick_sources(sources: Sequence[Source], seed: int | None = None) -> list[Source]:
    """One source per task-lang: the one of ``seed``, else the lowest seed."""
    chosen: dict[str, Source] = {}
    for s in sources:
        if seed is not None and s.seed != seed and s.key in chosen:
            continue
        if s.key not in chosen or (seed is not None and s.seed == seed):
            chosen[s.key] = s
    return [chosen[k] for k in sorted(chosen)]


def _environment(precision: str, handle: ModelHandle) -> dict[str, Any]:
    from promptatlas.bank.store import versions

    return {
        "versions": versions(),
        "hardware": hardware_info(handle.device),
        "device": str(handle.device),
        "precision_requested": precision,
        "resolved_precision": resolve_precision(precision, handle.device),
    }


def _check_run_folder(out: Path, marker: str, overwrite: bool, what: str) -> Path:
    target = check_output_path(out, kind="folder", what=what)
    if (target / marker).exists() and not overwrite:
        raise ComposeError(
            f"{target} already holds a {what} ({marker}); use --overwrite to replace it or "
            "choose another --out"
        )
    return target


def _score_rows(scores: Sequence[MethodScore]) -> list[list[Any]]:
    return [[s.method, s.task, s.lang, s.seed, s.score, s.low, s.high, s.n] for s in scores]


def _write_scores(out: Path, scores: Sequence[MethodScore]) -> None:
    write_json_atomic(out / "scores.json", [s.to_dict() for s in scores])
    write_csv_atomic(
        out / "scores.csv",
        ["method", "task", "lang", "seed", "score", "low", "high", "n"],
        _score_rows(scores),
    )


# -- one method ------------------------------------------------------------------------------------


def compose_run(
    cfg: ComposeRunConfig,
    out: str | Path,
    *,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    overwrite: bool = False,
    key: str | None = None,
    log: Any = None,
) -> ComposeRunResult:
    """Run ``cfg.method`` and write its outputs into the folder ``out`` (see the module
    docstring). ``key``: the results-database key of the run (a study's unit key)."""
    say = log or (lambda *_: None)
    started = time.perf_counter()
    target = _check_run_folder(Path(out), "run.json", overwrite, "composition run folder")
    wanted = cfg.source_tasks
    model, stored = bank_inputs(cfg.sources, langs=[cfg.lang], tasks=wanted, model=cfg.model)
    metas = _bank_metas(cfg.sources, [cfg.lang], wanted, cfg.source_method)
    present = {f"{m.task}-{m.lang}" for _, m in metas}
    absent = [t for t in cfg.tasks if f"{t}-{cfg.lang}" not in present]
    if absent:  # before the model loads
        raise ComposeError(
            f"target task(s) {absent} have no task prompt of {cfg.lang} in {cfg.sources} "
            f"(it has {sorted(present)}); every target needs its own task prompt there"
        )
    handle = handle or load_model(model, device=cfg.device)
    sources = pick_sources(
        sources_from_bank(
            cfg.sources, handle, tasks=wanted, langs=[cfg.lang], method=cfg.source_method
        ),
        cfg.source_seed,
    )
    if not sources:
        raise _no_prompts(cfg.sources, f"task prompts of {cfg.lang} for {handle.name}")
    keys = [s.key for s in sources]
    missing = [t for t in cfg.tasks if f"{t}-{cfg.lang}" not in keys]
    if missing:
        raise ComposeError(
            f"target task(s) {missing} have no source prompt of {cfg.lang} in {cfg.sources} "
            f"(sources: {keys}); every target needs its own task prompt there"
        )
    # Each target reads its inputs as its own prompt did (a bank may hold a task with a cue
    # template beside tasks in the plain format), unless cfg.format says otherwise.
    fmts = _target_formats(metas, cfg.lang, cfg.tasks, cfg.format, stored.format)
    eval_cfg = cfg.eval or stored.eval
    autocast = autocast_dtype(cfg.precision, handle.device)
    data: dict[str, TaskData] = {
        k: load_task_data(
            handle,
            k.rsplit("-", 1)[0],
            cfg.lang,
            data_dir=cfg.data_dir,
            train_limit=cfg.train_limit,
            dev_limit=cfg.dev_limit,
            test_limit=cfg.test_limit,
            fmt=fmt,
        )
        for k, fmt in fmts.items()
    }
    own = {s.key: s for s in sources}
    seed = cfg.seed
    pt = dataclasses.replace(cfg.pt, seed=seed)
    result = ComposeRunResult(target, cfg.method, [], keys=keys)
    plain: dict[str, Any] = {}  # key → (SoftPrompt, extra)
    histories: dict[str, Any] = {}
    say(f"    {cfg.method} over {len(sources)} sources ({', '.join(keys)}) → {list(data)}")
    if cfg.method == "amp":
        amp = train_amp(
            handle, sources, data, dataclasses.replace(cfg.amp, seed=seed),
            eval_config=eval_cfg, autocast=autocast,
        )  # fmt: skip
        result.scores = [amp.scores[k] for k in data if k in amp.scores]
        result.attention = amp.attention
        histories["amp"] = amp.history
        for k in data:
            plain[k] = (
                amp.prompts[k],
                {"attention": dict(zip(keys, amp.attention[keys.index(k)].tolist(), strict=True))},
            )
        target.mkdir(parents=True, exist_ok=True)
        write_attention_csv(amp.attention.numpy(), keys, target / "attention.csv")
        plot_attention_heatmap(
            amp.attention.numpy(), keys, target / "attention.png",
            title=f"AMP attention ({handle.name}, {cfg.lang}, seed {seed})",
        )  # fmt: skip
        _save_tensors(
            {f"psi.{n}": p for n, p in amp.module.state_dict().items() if n != "sources"},
            target / "psi.safetensors",
        )
        result.extra.update(
            {"n_parameters": amp.n_parameters, "steps": amp.steps, "mixing": amp.extra["mixing"]}
        )
    else:
        for k, task_data in data.items():
            template = own[k].prompt
            if cfg.method == "attempt":
                att = train_attempt(
                    handle, sources, task_data, dataclasses.replace(cfg.attempt, seed=seed),
                    template=template, eval_config=eval_cfg, autocast=autocast,
                )  # fmt: skip
                if att.score is not None:
                    result.scores.append(att.score)
                histories[k] = att.history
                target.mkdir(parents=True, exist_ok=True)
                _save_tensors(
                    {n: p for n, p in att.plm.mixer.state_dict().items() if n != "sources"},
                    target / f"attempt-{k}.safetensors",
                )
                result.extra[k] = {
                    "sources": att.keys,
                    "mean_weights": dict(zip([*att.keys, "target"], att.weights, strict=False)),
                    "n_parameters": att.n_parameters,
                }
                continue
            if cfg.method == "pt":
                res = run_prompt_tuning(
                    handle, template, task_data, pt, eval_config=eval_cfg, autocast=autocast
                )
            else:
                spot = SpotConfig(mode=cfg.method[-1], source=cfg.spot_source, train=pt)  # type: ignore[arg-type]
                res = run_spot(
                    handle, sources, task_data, spot, template=template, eval_config=eval_cfg,
                    autocast=autocast,
                )  # fmt: skip
            result.scores.append(res.score)
            histories[k] = res.train.history
            plain[k] = (res.prompt, {"init": res.init})
    env = _environment(cfg.precision, handle)
    first = next(iter(fmts.values()))
    config = {
        **cfg.to_dict(),
        "format": dataclasses.asdict(first),
        "eval": dataclasses.asdict(eval_cfg),
        "resolved_precision": env["resolved_precision"],
    }
    if any(f != first for f in fmts.values()):
        config["format_by_target"] = {k: dataclasses.asdict(f) for k, f in fmts.items()}
    by_key = {s.key: s for s in result.scores}
    for k, (prompt, info) in plain.items():
        score = by_key.get(k)
        metrics = {"test": score.summary} if score is not None else {}
        task, lang = k.rsplit("-", 1)
        path = save_prompt(
            target / "prompts" / f"{k}-{cfg.method}-s{seed}",
            prompt.cpu(),
            handle,
            task=task,
            lang=lang,
            seed=seed,
            metrics=metrics,
            config={**config, "format": dataclasses.asdict(fmts[k])},
            extra={"compose": {"method": cfg.method, "sources": keys, **info}},
            overwrite=True,
        )
        result.prompts[k] = path
    result.seconds = time.perf_counter() - started
    target.mkdir(parents=True, exist_ok=True)
    _write_scores(target, result.scores)
    write_json_atomic(target / "history.json", histories)
    write_json_atomic(
        target / "run.json",
        {
            "config": config,
            "model": handle.name,
            "sources": [{"key": s.key, "seed": s.seed} for s in sources],
            "scores": [s.to_dict() for s in result.scores],
            "seconds": result.seconds,
            "extra": result.extra,
            **env,
        },
    )
    if db is not None:
        for s in result.scores:
            db.record(
                kind=f"compose-{cfg.method}",
                model=handle.name,
                task=s.task,
                lang=s.lang,
                method=cfg.method,
                split="test",
                metrics={**s.summary, "low": s.low, "high": s.high},
                config=config,
                prompt_dir=str(result.prompts.get(s.key, target)),
                seed=seed,
                key=key,
                score=s.score,
            )
    return result


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    from promptatlas.io import atomic_file

    with atomic_file(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tmp),
            metadata={"format": "pt"},
        )


# -- IPT ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPTFitRunConfig(ConfigBase):
    """Fit IPT's autoencoder over the task prompts of the bank ``prompts`` (every seed of every
    task and language, filtered by ``tasks``/``langs``); ``exclude``: tasks or task-lang keys
    left out of the fit (the unseen tasks of a recovery study). The task-loss term needs each
    prompt's training data (format and limits as for composition runs)."""

    prompts: str
    ipt: IPTConfig = field(default_factory=IPTConfig)
    tasks: tuple[str, ...] | None = None
    langs: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    model: str | None = None
    format: FormatConfig | None = None
    data_dir: str | None = None
    train_limit: int | None = None
    precision: Precision = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ipt", _sub(IPTConfig, self.ipt, "ipt"))
        if self.format is not None:
            object.__setattr__(self, "format", _sub(FormatConfig, self.format, "format"))
        for name in ("tasks", "langs"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        object.__setattr__(self, "exclude", _names(self.exclude) or ())


def ipt_fit_run(
    cfg: IPTFitRunConfig,
    out: str | Path,
    *,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    key: str | None = None,
) -> IntrinsicSubspace:
    """Fit the subspace and store it at ``out`` (a subspace directory: ``subspace.json`` holds
    the fit config, the model, the prompts' format and evaluation options, versions, CPU and
    precision; ``intrinsic-pca.png`` beside it)."""
    from promptatlas.compose.ipt import SUBSPACE_METADATA, SUBSPACE_TENSORS

    target = check_output_path(
        out, kind="directory", what="IPT subspace directory",
        owned_files=(SUBSPACE_TENSORS, SUBSPACE_METADATA),
    )  # fmt: skip
    model, stored = bank_inputs(cfg.prompts, langs=cfg.langs, tasks=cfg.tasks, model=cfg.model)
    handle = handle or load_model(model, device=cfg.device)
    found = sources_from_bank(cfg.prompts, handle, tasks=cfg.tasks, langs=cfg.langs)
    sources = [s for s in found if s.task not in cfg.exclude and s.key not in cfg.exclude]
    if len(sources) < 2:
        raise _no_prompts(cfg.prompts, "two or more task prompts to fit a subspace on")
    fmt = cfg.format or stored.format
    data: dict[str, TaskData] = {}
    if cfg.ipt.task_loss:
        for s in sources:
            if s.key not in data:
                data[s.key] = load_task_data(
                    handle, s.task, s.lang, data_dir=cfg.data_dir, train_limit=cfg.train_limit,
                    dev_limit=1, test_limit=1, fmt=fmt,
                )  # fmt: skip
    started = time.perf_counter()
    subspace = fit_ipt(
        handle, sources, data, cfg.ipt, eval_config=stored.eval,
        autocast=autocast_dtype(cfg.precision, handle.device),
    )  # fmt: skip
    env = _environment(cfg.precision, handle)
    extra = {
        "run": cfg.to_dict(),
        "model": handle.name,
        "format": dataclasses.asdict(fmt),
        "eval": dataclasses.asdict(stored.eval),
        "reconstruction_mse": subspace.reconstruction_error(sources),
        "seconds": time.perf_counter() - started,
        "sources": [{"key": s.key, "seed": s.seed} for s in sources],
        **env,
    }
    save_subspace(subspace, target, extra=extra)
    plot_intrinsic_pca(
        subspace.vectors.numpy(), subspace.tasks, subspace.langs, target / "intrinsic-pca.png"
    )
    if db is not None:
        db.record(
            kind="ipt-fit",
            model=handle.name,
            task=None,
            lang=None,
            method=sources[0].prompt.method,
            split="train",
            metrics={"reconstruction_mse": extra["reconstruction_mse"], "n": len(sources)},
            config=extra["run"],
            prompt_dir=str(target),
            key=key,
        )
    return subspace


def subspace_info(directory: str | Path) -> dict[str, Any]:
    """The ``extra`` a fit run stored with a subspace (model, format, evaluation options)."""
    from promptatlas.compose.ipt import SUBSPACE_METADATA

    path = Path(directory) / SUBSPACE_METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ComposeError(
            f"{directory} is not an IPT subspace directory ({exc}); fit one with "
            "`promptatlas ipt fit`"
        ) from None
    return dict(meta.get("extra") or {})


@dataclass(frozen=True)
class IPTTuneRunConfig(ConfigBase):
    """Intrinsic subspace tuning of ``task``/``lang`` in the subspace stored at ``subspace``.

    template: a prompt directory whose frozen segments (e.g. its language segment) the tuned
        prompt keeps (default: the subspace's template). full: a prompt directory of the same
        task and language trained by full prompt tuning; its stored test score gives the
        recovery (IST / full)."""

    subspace: str
    task: str
    lang: str
    ist: ISTConfig = field(default_factory=ISTConfig)
    template: str | None = None
    full: str | None = None
    format: FormatConfig | None = None
    data_dir: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = 64
    test_limit: int | None = None
    precision: Precision = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "ist", _sub(ISTConfig, self.ist, "ist"))
        if self.format is not None:
            object.__setattr__(self, "format", _sub(FormatConfig, self.format, "format"))
        variant = get_task(self.task, self.lang)
        object.__setattr__(self, "task", variant.spec.name)
        object.__setattr__(self, "lang", variant.lang)


@dataclass
class IPTTuneRunResult:
    path: Path
    score: MethodScore
    full: float | None
    recovery: float | None
    seen: bool
    seconds: float


def _full_score(path: str | Path, task: str, lang: str) -> float:
    from promptatlas.bank import read_metadata

    meta = read_metadata(path)
    if (meta.task, meta.lang) != (task, lang):
        raise ComposeError(
            f"--full {path} is a {meta.task}-{meta.lang} prompt; give one of {task}-{lang}"
        )
    score = (meta.metrics.get("test") or {}).get("score")
    if score is None:
        raise ComposeError(f"{path} has no stored test score; evaluate it (`promptatlas eval`)")
    return float(score)


def ipt_tune_run(
    cfg: IPTTuneRunConfig,
    out: str | Path,
    *,
    handle: ModelHandle | None = None,
    db: ResultsDB | None = None,
    overwrite: bool = False,
    key: str | None = None,
) -> IPTTuneRunResult:
    """Tune z for the task with the decoder frozen; store dec(z) as a prompt directory at
    ``out`` (its metadata: z, the subspace, the score, the recovery, versions, precision)."""
    from promptatlas.bank import check_prompt_target, load_prompt

    check_prompt_target(Path(out), overwrite=overwrite)
    info = subspace_info(cfg.subspace)
    full = _full_score(cfg.full, cfg.task, cfg.lang) if cfg.full else None  # before the model
    handle = handle or load_model(str(info.get("model") or "gemma-3-270m"), device=cfg.device)
    subspace = load_subspace(cfg.subspace, handle)
    template = load_prompt(cfg.template, handle).prompt if cfg.template else None
    stored_fmt = info.get("format")
    fmt = cfg.format or (FormatConfig(**stored_fmt) if stored_fmt else FormatConfig())
    eval_cfg = EvalConfig(**info["eval"]) if info.get("eval") else EvalConfig()
    data = load_task_data(
        handle, cfg.task, cfg.lang, data_dir=cfg.data_dir, train_limit=cfg.train_limit,
        dev_limit=cfg.dev_limit, test_limit=cfg.test_limit, fmt=fmt,
    )  # fmt: skip
    started = time.perf_counter()
    run = tune_intrinsic(
        handle, subspace, data, cfg.ist, template=template, eval_config=eval_cfg,
        autocast=autocast_dtype(cfg.precision, handle.device),
    )  # fmt: skip
    assert run.score is not None
    seconds = time.perf_counter() - started
    key_name = f"{cfg.task}-{cfg.lang}"
    seen = key_name in subspace.keys
    rec = recovery([run.score.score], [full])["mean_ratio"] if full else None
    env = _environment(cfg.precision, handle)
    config = {
        **cfg.to_dict(),
        "format": dataclasses.asdict(fmt),
        "eval": dataclasses.asdict(eval_cfg),
        "resolved_precision": env["resolved_precision"],
    }
    metrics: dict[str, Any] = {"test": run.score.summary}
    if full is not None:
        metrics["recovery"] = {"ist": run.score.score, "full": full, "recovery": rec, "seen": seen}
    path = save_prompt(
        out,
        run.prompt,
        handle,
        task=cfg.task,
        lang=cfg.lang,
        seed=cfg.ist.seed,
        metrics=metrics,
        config=config,
        extra={
            "ipt": {
                "subspace": str(Path(cfg.subspace).absolute()),
                "intrinsic_dim": subspace.intrinsic_dim,
                "z": run.z.tolist(),
                "seen": seen,
            },
            "history": run.history,
            "train_seconds": seconds,
            "hardware": env["hardware"],
        },
        overwrite=overwrite,
    )
    if db is not None:
        db.record(
            kind="ipt-tune",
            model=handle.name,
            task=cfg.task,
            lang=cfg.lang,
            method="ipt",
            split="test",
            metrics=metrics,
            config=config,
            prompt_dir=str(path),
            seed=cfg.ist.seed,
            key=key,
            score=run.score.score,
        )
    return IPTTuneRunResult(path, run.score, full, rec, seen, seconds)
