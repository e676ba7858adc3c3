"""The composition study: AMP's Table 1 on our model (spec composition.md §C, §D).

A composition file is a YAML mapping with a ``compose`` block (``configs/compose.yaml``)::

    name: compose
    model: gemma-3-270m
    out: results/compose
    langs: [en, ko]
    seeds: [42, 43, 44]              # seeds of every method (the table's mean ± std)
    format: {separator: "\\n", max_length: 64}
    eval: {batch_size: 32}
    dev_limit: 64
    test_limit: 300
    compose:
      sources:                       # the source prompts: one per task and language
        tasks: [sa, nli, sts]
        bank: null                   # a bank folder to take them from, else trained here
        prompt: {method: v1, length: 20}
        train: {steps: 45, batch_size: 8}
        seeds: [42]                  # more seeds give IPT more prompts; methods use the first
      targets: [sa, nli]             # default: every source task
      methods: [pt, spot-s, spot-m, attempt, amp]
      pt: {steps: 30, batch_size: 8}             # PT and both SPoT variants
      attempt: {steps: 30, batch_size: 8, lr: 0.3, warmup_steps: 0}
      amp: {steps: 60, batch_size: 8, lr: 0.01, warmup_steps: 0}
      ipt: {dims: [1, 2, 5], unseen: [sts], fit: {steps: 300}, tune: {steps: 30}}

Units, in the order they run: the source prompts (unless ``sources.bank``), then per language
× seed × method one composition run (:func:`promptatlas.runs.compose.compose_run` into
``<out>/runs/<method>-<lang>-s<seed>``), then per d_I the IPT fit and the recovery of every
target. Each finished unit is recorded in the results database under a key holding a hash of
its settings and skipped by later runs, so an interrupted study continues where it stopped
(``budget_s`` stops starting new units after that many seconds; rerun to go on). The report
(``<out>/report``) is rewritten from the finished units at the end: the comparison table per
language in AMP's Table 1 layout (mean ± std over seeds, with the per-seed 95% bootstrap
intervals in ``scores.csv``), AMP's attention heatmaps, and IPT's recovery against d_I.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptatlas.bank import ResultsDB
from promptatlas.compose import (
    AMPConfig,
    AttemptConfig,
    IPTConfig,
    ISTConfig,
    RecoveryResult,
    ipt_recovery,
    load_task_data,
    save_subspace,
    sources_from_bank,
)
from promptatlas.configtools import ConfigBase, ConfigError, Precision, config_hash, from_dict
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.formatting import FormatConfig
from promptatlas.io import write_csv_atomic, write_json_atomic
from promptatlas.models import DEFAULT_MODEL, ModelHandle, load_model
from promptatlas.models.precision import autocast_dtype
from promptatlas.prompts import PromptConfig
from promptatlas.report.compose import (
    comparison_markdown,
    comparison_table,
    plot_intrinsic_pca,
    plot_recovery_vs_dim,
    recovery_markdown,
    write_comparison_csv,
    write_recovery_csv,
)
from promptatlas.runs.compose import (
    COMPOSE_METHODS,
    ComposeRunConfig,
    compose_run,
    pick_sources,
)
from promptatlas.runs.train import RunConfig, train_run
from promptatlas.studies.experiment import ExperimentError, read_yaml
from promptatlas.tasks import get_task
from promptatlas.training import TrainConfig

__all__ = [
    "ComposeSpec",
    "CompositionConfig",
    "IPTSpec",
    "SourceSpec",
    "composition_from_mapping",
    "is_composition_file",
    "load_composition",
    "run_composition",
]


def _tasks(values: Any) -> tuple[str, ...]:
    return tuple(str(v).strip().lower() for v in values)


@dataclass(frozen=True)
class SourceSpec(ConfigBase):
    """The source prompts: trained here (``prompt``, ``train``, ``seeds``) unless ``bank``."""

    tasks: tuple[str, ...]
    bank: str | None = None
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(method="v1", length=20))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=45, batch_size=8))
    seeds: tuple[int, ...] = (42,)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tasks", _tasks(self.tasks))
        if isinstance(self.prompt, Mapping):
            object.__setattr__(
                self, "prompt", PromptConfig.from_dict(self.prompt, path="compose.sources.prompt")
            )
        object.__setattr__(
            self, "train", from_dict(TrainConfig, self.train, path="compose.sources.train")
        )
        if len(self.tasks) < 2:
            raise ExperimentError("compose.sources.tasks: composition needs two or more tasks")
        if not self.seeds:
            raise ExperimentError("compose.sources.seeds: give at least one seed")


@dataclass(frozen=True)
class IPTSpec(ConfigBase):
    """IPT's recovery study: one fit per d_I over the source prompts of every language and
    seed, except the ``unseen`` tasks; then IST of every target (seen and unseen) against the
    source prompt's own test score (full prompt tuning). ``controls``: also IST through a
    random decoder and dec(z) as the start of full prompt tuning (``pt`` settings)."""

    dims: tuple[int, ...] = (1, 2, 5, 10, 25)
    unseen: tuple[str, ...] = ()
    fit: IPTConfig = field(default_factory=IPTConfig)
    tune: ISTConfig = field(default_factory=ISTConfig)
    controls: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "fit", from_dict(IPTConfig, self.fit, path="compose.ipt.fit"))
        object.__setattr__(self, "tune", from_dict(ISTConfig, self.tune, path="compose.ipt.tune"))
        object.__setattr__(self, "unseen", _tasks(self.unseen))
        if not self.dims or any(d < 1 for d in self.dims):
            raise ExperimentError("compose.ipt.dims: one or more intrinsic dimensions ≥ 1")


@dataclass(frozen=True)
class ComposeSpec(ConfigBase):
    """The ``compose`` block (see the module docstring). Each settings block (``pt``,
    ``attempt``, ``amp``, ``ipt.fit``, ``ipt.tune``) starts from the library's defaults, which
    are the papers' (GPU-sized); a CPU run sets its own (``configs/compose.yaml``)."""

    sources: SourceSpec
    targets: tuple[str, ...] | None = None
    methods: tuple[str, ...] = COMPOSE_METHODS
    pt: TrainConfig = field(default_factory=TrainConfig)
    attempt: AttemptConfig = field(default_factory=AttemptConfig)
    amp: AMPConfig = field(default_factory=AMPConfig)
    spot_source: str | None = None
    ipt: IPTSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "sources", from_dict(SourceSpec, self.sources, path="sources"))
        for name, cls in (("pt", TrainConfig), ("attempt", AttemptConfig), ("amp", AMPConfig)):
            object.__setattr__(self, name, from_dict(cls, getattr(self, name), path=name))
        if self.ipt is not None:
            object.__setattr__(self, "ipt", from_dict(IPTSpec, self.ipt, path="ipt"))
        object.__setattr__(self, "methods", _tasks(self.methods))
        unknown = sorted(set(self.methods) - set(COMPOSE_METHODS))
        if unknown:
            raise ExperimentError(
                f"compose.methods: unknown {unknown}; choose from {list(COMPOSE_METHODS)}"
            )
        if self.targets is not None:
            object.__setattr__(self, "targets", _tasks(self.targets))
            bad = sorted(set(self.targets) - set(self.sources.tasks))
            if bad:
                raise ExperimentError(
                    f"compose.targets {bad} are not among compose.sources.tasks "
                    f"{list(self.sources.tasks)}: every target needs its own source prompt"
                )
        if self.ipt is not None:
            bad = sorted(set(self.ipt.unseen) - set(self.sources.tasks))
            if bad:
                raise ExperimentError(f"compose.ipt.unseen {bad} are not source tasks")


@dataclass(frozen=True)
class CompositionConfig(ConfigBase):
    """A composition study file (see the module docstring)."""

    name: str
    compose: ComposeSpec
    langs: tuple[str, ...]
    model: str = DEFAULT_MODEL
    out: str = "results/compose"
    seeds: tuple[int, ...] = (42,)
    format: FormatConfig = field(default_factory=FormatConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_dir: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = 64
    test_limit: int | None = None
    precision: Precision = "auto"
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "compose", from_dict(ComposeSpec, self.compose, path="compose"))
        object.__setattr__(self, "format", from_dict(FormatConfig, self.format, path="format"))
        object.__setattr__(self, "eval", from_dict(EvalConfig, self.eval, path="eval"))
        object.__setattr__(self, "langs", _tasks(self.langs))
        if not self.langs or not self.seeds:
            raise ExperimentError("a composition study needs langs and seeds")
        for task in self.compose.sources.tasks:
            for lang in self.langs:
                get_task(task, lang)  # unknown names fail here, listing the valid ones
        for name in ("train_limit", "dev_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be ≥ 1 or None, got {value}")

    # -- what runs where ------------------------------------------------------------------
    @property
    def targets(self) -> tuple[str, ...]:
        return self.compose.targets or self.compose.sources.tasks

    @property
    def bank(self) -> Path:
        """Where the source prompts are: the given bank, else ``<out>/bank``."""
        return Path(self.compose.sources.bank or Path(self.out) / "bank")

    def source_units(self) -> list[tuple[str, str, int]]:
        if self.compose.sources.bank:
            return []
        src = self.compose.sources
        return [(t, lang, s) for s in src.seeds for lang in self.langs for t in src.tasks]

    def source_config(self, task: str, lang: str, seed: int) -> RunConfig:
        src = self.compose.sources
        return RunConfig(
            task=task,
            lang=lang,
            model=self.model,
            prompt=src.prompt,
            train=dataclasses.replace(src.train, seed=seed),
            eval=self.eval,
            format=self.format,
            data_dir=self.data_dir,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
            test_limit=self.test_limit,
            baseline=False,
            precision=self.precision,
            device=self.device,
        )

    def source_path(self, task: str, lang: str, seed: int) -> Path:
        method = self.compose.sources.prompt.method
        return Path(self.out) / "bank" / f"{task}-{lang}-{method}-s{seed}"

    def method_units(self) -> list[tuple[str, str, int]]:
        return [
            (m, lang, s) for lang in self.langs for s in self.seeds for m in self.compose.methods
        ]

    def method_config(self, method: str, lang: str, seed: int) -> ComposeRunConfig:
        c = self.compose
        return ComposeRunConfig(
            method=method,  # type: ignore[arg-type]
            sources=str(self.bank),
            tasks=self.targets,
            lang=lang,
            model=self.model,
            source_tasks=c.sources.tasks,
            source_seed=c.sources.seeds[0],
            pt=c.pt,
            amp=c.amp,
            attempt=c.attempt,
            spot_source=c.spot_source,
            format=self.format,
            eval=self.eval,
            data_dir=self.data_dir,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
            test_limit=self.test_limit,
            seed=seed,
            precision=self.precision,
            device=self.device,
        )

    def method_path(self, method: str, lang: str, seed: int) -> Path:
        return Path(self.out) / "runs" / f"{method}-{lang}-s{seed}"

    def ipt_path(self, dim: int) -> Path:
        return Path(self.out) / "ipt" / f"d{dim}"

    # -- keys -----------------------------------------------------------------------------
    def _sources_hash(self) -> str:
        if self.compose.sources.bank:
            return f"bank:{Path(self.compose.sources.bank).absolute()}"
        return config_hash([self.source_config(*u).to_dict() for u in self.source_units()])

    def key(self, kind: str, name: str, settings: Any) -> str:
        data = {"settings": settings, "sources": self._sources_hash()}
        return f"{self.name}/{self.model}/{kind}/{name}#{config_hash(data)}"

    def source_key(self, task: str, lang: str, seed: int) -> str:
        cfg = self.source_config(task, lang, seed).to_dict()
        cfg.pop("device", None)
        return f"{self.name}/{self.model}/source/{task}-{lang}/s{seed}#{config_hash(cfg)}"

    def method_settings(self, method: str, lang: str, seed: int) -> dict[str, Any]:
        """The settings a method run reads (its config without the device and the other
        methods' sections: a changed AMP lr does not rerun PT)."""
        return _method_settings(method, self.method_config(method, lang, seed).to_dict())

    def method_key(self, method: str, lang: str, seed: int) -> str:
        settings = self.method_settings(method, lang, seed)
        return self.key("method", f"{method}/{lang}/s{seed}", settings)

    def ipt_key(self, dim: int) -> str:
        ipt = self.compose.ipt
        assert ipt is not None
        settings = {
            "dim": dim,
            "spec": dataclasses.asdict(ipt),
            "targets": self.targets,
            "langs": self.langs,
            "format": dataclasses.asdict(self.format),
            "limits": [self.train_limit, self.dev_limit, self.test_limit],
        }
        return self.key("ipt", f"d{dim}", settings)


def is_composition_file(data: Mapping[str, Any]) -> bool:
    """Whether a parsed YAML file is a composition study (it has a ``compose`` block)."""
    return isinstance(data.get("compose"), Mapping)


_KEYS = {f.name for f in dataclasses.fields(CompositionConfig)}


def composition_from_mapping(data: Mapping[str, Any], path: Path) -> CompositionConfig:
    """A :class:`CompositionConfig` from parsed YAML; errors name the file and the field."""
    if not is_composition_file(data):
        raise ExperimentError(f"{path} has no 'compose' block; it is not a composition study")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ExperimentError(
            f"{path}: unknown key(s) {unknown} in a composition study; keys: {sorted(_KEYS)}"
        )
    try:
        values = {"name": str(data.get("name") or path.stem), **data}
        return CompositionConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ExperimentError(f"{path}: {exc}") from None


def load_composition(path: str | Path) -> CompositionConfig:
    """Parse and validate a composition study file."""
    path = Path(path)
    return composition_from_mapping(read_yaml(path), path)


# -- running ---------------------------------------------------------------------------------------


def _method_settings(method: str, config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out.pop("device", None)
    if out.get("source_method") is None:
        out.pop("source_method", None)  # unset: keys stay those of studies run before it existed
    uses = {"amp": ("amp",), "attempt": ("attempt",), "spot-m": ("pt", "spot_source")}
    for name in ("pt", "amp", "attempt", "spot_source"):
        if name not in uses.get(method, ("pt",)):
            out.pop(name, None)
    return out


class _Study:
    def __init__(
        self, cfg: CompositionConfig, db: ResultsDB, progress: bool, log: Callable[[str], Any]
    ):
        self.cfg, self.db, self.progress, self.log = cfg, db, progress, log
        self._handle: ModelHandle | None = None
        self.ran = 0

    @property
    def handle(self) -> ModelHandle:
        if self._handle is None:
            self._handle = load_model(self.cfg.model, device=self.cfg.device)
        return self._handle

    def source_done(self, unit: tuple[str, str, int]) -> bool:
        path = self.cfg.source_path(*unit)
        return (path / "prompt.json").exists() and self.db.has(self.cfg.source_key(*unit))

    def method_done(self, unit: tuple[str, str, int]) -> bool:
        path = self.cfg.method_path(*unit)
        if not ((path / "run.json").exists() and self.db.has(self.cfg.method_key(*unit))):
            return False
        # The folder must hold this unit's run: another study of the same name writing
        # elsewhere may have recorded the key while this folder holds an older setting.
        try:
            stored = json.loads((path / "run.json").read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not isinstance(stored, dict):
            return False
        expected = self.cfg.method_settings(*unit)
        found = _method_settings(unit[0], stored)

        def plain(value: Any) -> str:
            return json.dumps(value, sort_keys=True, default=str)

        # format and eval are stored resolved (defaults filled in), so they are not compared
        return all(
            plain(found.get(k)) == plain(v)
            for k, v in expected.items()
            if k not in ("format", "eval")
        )

    def ipt_done(self, dim: int) -> bool:
        path = self.cfg.ipt_path(dim)
        return (path / "recovery.json").exists() and self.db.has(self.cfg.ipt_key(dim))

    def run_source(self, unit: tuple[str, str, int]) -> None:
        task, lang, seed = unit
        self.log(f"[{self.cfg.name}] source prompt {task}-{lang} seed {seed}")
        res = train_run(
            self.cfg.source_config(*unit),
            self.cfg.source_path(*unit),
            handle=self.handle,
            db=self.db,
            progress=self.progress,
            overwrite=True,
        )
        self.db.record(
            kind="compose-source",
            model=self.cfg.model,
            task=task,
            lang=lang,
            method=self.cfg.compose.sources.prompt.method,
            split="test",
            metrics=res.metrics["test"],
            config={"study": self.cfg.name},
            prompt_dir=str(res.path),
            seed=seed,
            key=self.cfg.source_key(*unit),
        )
        self.log(f"    {100 * res.trained.score:.1f} ({res.steps} steps, {res.seconds:.0f}s)")

    def run_method(self, unit: tuple[str, str, int]) -> None:
        method, lang, seed = unit
        self.log(f"[{self.cfg.name}] {method} {lang} seed {seed}")
        res = compose_run(
            self.cfg.method_config(*unit),
            self.cfg.method_path(*unit),
            handle=self.handle,
            db=self.db,
            overwrite=True,
            key=self.cfg.method_key(*unit),
            log=self.log,
        )
        shown = ", ".join(f"{s.key} {100 * s.score:.1f}" for s in res.scores)
        self.log(f"    {shown} ({res.seconds:.0f}s)")

    def run_ipt(self, dim: int) -> None:
        cfg, ipt = self.cfg, self.cfg.compose.ipt
        assert ipt is not None
        self.log(f"[{cfg.name}] IPT d_I = {dim}")
        from promptatlas.compose import fit_ipt

        handle = self.handle
        every = sources_from_bank(
            cfg.bank, handle, tasks=cfg.compose.sources.tasks, langs=cfg.langs
        )
        fitted = [s for s in every if s.task not in ipt.unseen]
        autocast = autocast_dtype(cfg.precision, handle.device)

        def data(task: str, lang: str) -> Any:
            return load_task_data(
                handle, task, lang, data_dir=cfg.data_dir, train_limit=cfg.train_limit,
                dev_limit=cfg.dev_limit, test_limit=cfg.test_limit, fmt=cfg.format,
            )  # fmt: skip

        fit_data = {s.key: data(s.task, s.lang) for s in fitted} if ipt.fit.task_loss else {}
        fit_cfg = dataclasses.replace(ipt.fit, intrinsic_dim=dim)
        subspace = fit_ipt(
            handle, fitted, fit_data, fit_cfg, eval_config=cfg.eval, autocast=autocast
        )
        out = cfg.ipt_path(dim)
        save_subspace(
            subspace,
            out / "subspace",
            extra={
                "model": handle.name,
                "format": dataclasses.asdict(cfg.format),
                "eval": dataclasses.asdict(cfg.eval),
                "reconstruction_mse": subspace.reconstruction_error(fitted),
            },
        )
        own = {s.key: s for s in pick_sources(every, cfg.compose.sources.seeds[0])}
        targets = {
            f"{t}-{lang}": data(t, lang)
            for lang in cfg.langs
            for t in cfg.targets + tuple(u for u in ipt.unseen if u not in cfg.targets)
        }
        full = {k: self._stored_score(k) for k in targets}
        untrained = {k: u for k in targets if (u := self._stored_untrained(k)) is not None}
        result = ipt_recovery(
            handle,
            subspace,
            targets,
            full,
            ipt.tune,
            templates={k: own[k].prompt for k in targets},
            controls=ipt.controls,
            pt_train=dataclasses.replace(cfg.compose.pt, seed=ipt.tune.seed),
            eval_config=cfg.eval,
            autocast=autocast,
            untrained_scores=untrained,
        )
        write_json_atomic(
            out / "recovery.json",
            {
                **result.to_dict(),
                "fitted": [s.key for s in fitted],
                "reconstruction_mse": subspace.reconstruction_error(fitted),
                "vectors": subspace.vectors.tolist(),
                "tasks": subspace.tasks,
                "langs": subspace.langs,
            },
        )
        self.db.record(
            kind="compose-ipt",
            model=cfg.model,
            task=None,
            lang=None,
            method="ipt",
            split="test",
            metrics=result.to_dict(),
            config={"study": cfg.name, "dim": dim},
            prompt_dir=str(out),
            key=cfg.ipt_key(dim),
            score=(result.unseen or result.seen or {}).get("mean_ratio"),
        )
        self.log(f"    seen {result.seen} unseen {result.unseen}")

    def _stored_score(self, key: str) -> float:
        score = self._stored_metric(key, "test")
        if score is None:
            raise ExperimentError(f"the source prompt {key} in {self.cfg.bank} has no test score")
        return score

    def _stored_untrained(self, key: str) -> float | None:
        """The untrained prompt's test score stored with the source prompt ``key`` (None
        where its training did not evaluate the untrained prompt)."""
        return self._stored_metric(key, "untrained_test")

    def _stored_metric(self, key: str, name: str) -> float | None:
        """The score under metrics[``name``] of the bank's source prompt ``key`` ("task-lang")
        of the first source seed (None when no such prompt stores it)."""
        from promptatlas.bank import list_prompts

        task, lang = key.rsplit("-", 1)
        seed = self.cfg.compose.sources.seeds[0]
        for _, meta in list_prompts(self.cfg.bank):
            if (meta.task, meta.lang) == (task, lang) and meta.seed in (seed, None):
                score = (meta.metrics.get(name) or {}).get("score")
                if score is not None:
                    return float(score)
        return None


def _recovery_results(cfg: CompositionConfig) -> list[RecoveryResult]:
    from promptatlas.compose import RecoveryRow

    out: list[RecoveryResult] = []
    for dim in cfg.compose.ipt.dims if cfg.compose.ipt else ():
        path = cfg.ipt_path(dim) / "recovery.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = [
            RecoveryRow(**{k: v for k, v in r.items() if k not in ("recovery", "gain_recovery")})
            for r in data["rows"]
        ]
        out.append(RecoveryResult(int(data["intrinsic_dim"]), rows, data["seen"], data["unseen"]))
    return out


def write_report(cfg: CompositionConfig, log: Callable[[str], Any] = print) -> list[Path]:
    """The comparison tables (per language, markdown + CSV; every score with its interval in
    ``scores.csv``) and IPT's recovery table and figures, from the finished units' files."""
    report = Path(cfg.out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    scores: list[dict[str, Any]] = []
    for unit in cfg.method_units():
        path = cfg.method_path(*unit) / "scores.json"
        if path.exists():
            scores += json.loads(path.read_text(encoding="utf-8"))
    written: list[Path] = []
    header = ["method", "task", "lang", "seed", "score", "low", "high", "n"]
    written.append(
        write_csv_atomic(
            report / "scores.csv", header, [[s.get(h) for h in header] for s in scores]
        )
    )
    parts = [f"# {cfg.name}: {cfg.model}\n"]
    for lang in cfg.langs if cfg.compose.methods else ():  # no methods: IPT only
        methods = [m for m in COMPOSE_METHODS if m in cfg.compose.methods]  # Table 1 order
        table = comparison_table(scores, methods=methods, lang=lang, tasks=cfg.targets)
        written.append(write_comparison_csv(table, report / f"comparison-{lang}.csv"))
        text = comparison_markdown(table, paper=True)
        parts.append(f"\n## {lang} (×100; mean ± std over seeds {list(cfg.seeds)})\n\n{text}")
        log(f"[{cfg.name}] {lang}\n{text}")
    from promptatlas.io import write_text_atomic

    results = _recovery_results(cfg)
    if results:
        text = recovery_markdown(results)
        parts.append(f"\n## IPT recovery (×100)\n\n{text}")
        log(f"[{cfg.name}] IPT recovery\n{text}")
    md = report / "comparison.md"
    write_text_atomic(md, "".join(parts))
    written.append(md)
    if results:
        written.append(write_recovery_csv(results, report / "recovery.csv"))
        written.append(plot_recovery_vs_dim(results, report / "recovery-vs-dim.png"))
        for dim in cfg.compose.ipt.dims if cfg.compose.ipt else ():
            path = cfg.ipt_path(dim) / "recovery.json"
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                written.append(
                    plot_intrinsic_pca(
                        data["vectors"],
                        data["tasks"],
                        data["langs"],
                        report / f"intrinsic-pca-d{dim}.png",
                    )
                )
    return written


def run_composition(
    cfg: CompositionConfig,
    *,
    db: ResultsDB | None = None,
    handle: ModelHandle | None = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    budget_s: float | None = None,
    report: bool = True,
) -> int:
    """Run every unit not finished yet (sources, method runs, IPT), then write the report;
    returns the number of units run. ``budget_s``: start no new unit after that many seconds
    (the rest is left for the next call)."""
    owns_db = db is None
    db = ResultsDB() if db is None else db
    started = time.perf_counter()
    try:
        study = _Study(cfg, db, progress, log)
        study._handle = handle
        units: list[tuple[str, Any]] = [("source", u) for u in cfg.source_units()]
        units += [("method", u) for u in cfg.method_units()]
        units += [("ipt", d) for d in (cfg.compose.ipt.dims if cfg.compose.ipt else ())]
        done: dict[str, Callable[[Any], bool]] = {
            "source": study.source_done,
            "method": study.method_done,
            "ipt": study.ipt_done,
        }
        todo = [(kind, u) for kind, u in units if not done[kind](u)]
        log(
            f"[{cfg.name}] {len(units)} units on {cfg.model}: {len(units) - len(todo)} reused, "
            f"{len(todo)} to run"
        )
        run: dict[str, Callable[[Any], None]] = {
            "source": study.run_source,
            "method": study.run_method,
            "ipt": study.run_ipt,
        }
        left = 0
        for kind, unit in todo:
            if budget_s is not None and time.perf_counter() - started > budget_s:
                left += 1
                continue
            run[kind](unit)
            study.ran += 1
        if left:
            log(f"[{cfg.name}] time budget spent: {left} units left; rerun to continue")
        if report:
            written = write_report(cfg, log)
            log(f"[{cfg.name}] report: {', '.join(str(p) for p in written)}")
        log(
            f"[{cfg.name}] {study.ran} units run in {time.perf_counter() - started:.0f}s; "
            f"outputs in {cfg.out}"
        )
        return study.ran
    finally:
        if owns_db:
            db.close()
