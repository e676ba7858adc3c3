"""Transfer grids: every source × target cell of a study, resumable and shardable.

A grid file is an experiment file (see :mod:`promptatlas.studies.experiment`: tasks, langs, methods,
seeds, train/eval/format settings) with a ``transfer`` block::

    transfer:
      lang_length: 10          # factorised prompt = language 10 + task 10 positions (thesis)
      task_length: 10
      language: {steps: 40, batch_size: 8, lr: 0.03, max_length: 64}   # language prompts
      language_by_method: {v2: {lr: 0.01}}
      text: {ko: [../shared/data/ko/rawtext]}  # raw text per language (default: bundled)
      sources: [sa, nli]       # default: all tasks; targets likewise
      targets: [sa, nli]
      cross_task: true         # source task segment → target task (same language)
      cross_lang: true         # same task, other language (language segment trained)
      zero_shot: true          # cross-language zero-shot, source vs target language segment

Cells, in the order they run (each depends only on cells before it); :class:`CellKind` names
them, its values are the short words stored in cell keys and the results database:

1. ``LANGUAGE_PROMPT`` ("lang"): a language prompt per language × method × seed;
2. ``BASELINE`` ("base"): every task/language's own factorised prompt (language frozen);
3. ``CROSS_TASK`` ("task"): cross-task transfer source → target, per language;
4. ``CROSS_LANGUAGE`` ("language"): cross-language transfer, per task and language pair;
5. ``ZERO_SHOT`` ("zero"): zero-shot cross-language evaluation with the source or the target
   language segment.

Each finished cell is recorded in the results database under its key and skipped by later runs,
so an interrupted grid continues where it stopped. ``shard=(i, n)`` runs cells whose position
in that list is ≡ i (mod n); a missing dependency owned by another shard is built locally (same
seed ⇒ same prompt bytes, directories are written atomically), so shards can run on several
processes or machines at once and be merged through the database (``promptatlas runs merge``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptatlas.bank import ResultsDB, RunRecord, read_metadata
from promptatlas.configtools import (
    ConfigBase,
    check_fields,
    config_hash,
    from_dict,
)
from promptatlas.evaluation.evaluate import paired_gain, stored_examples
from promptatlas.io import atomic_directory, write_bytes_atomic, write_json_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.report.html import write_html
from promptatlas.report.transfer import TransferLayout, write_transfer_report
from promptatlas.runs.neurons import FindConfig, PerturbConfig
from promptatlas.runs.train import RunConfig, curve_path, recording_curve, train_run
from promptatlas.runs.transfer import transfer_run, zero_shot
from promptatlas.studies.executors import ExecutorSpec, Job, run_jobs
from promptatlas.studies.experiment import (
    ExperimentConfig,
    ExperimentError,
    experiment_from_mapping,
    read_yaml,
)
from promptatlas.studies.grid_compose import GridCompositionSpec
from promptatlas.tasks import get_task
from promptatlas.training import TrainConfig
from promptatlas.transfer.subprompts import LanguagePromptConfig, train_language_prompt

__all__ = [
    "Cell",
    "CellKind",
    "CellResult",
    "ExecutorSpec",
    "GridConfig",
    "TransferSpec",
    "grid_cells",
    "load_grid",
    "parse_shard",
    "remote_cell",
    "run_cell",
    "run_grid",
]


@dataclass(frozen=True)
class TransferSpec(ConfigBase):
    """The ``transfer`` block of a grid file (see the module docstring)."""

    lang_length: int = 10
    task_length: int = 10
    language: Mapping[str, Any] = field(default_factory=dict)
    language_by_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    text: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    text_limit: int | None = None
    max_length: int = 64
    sources: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    cross_task: bool = True
    cross_lang: bool = True
    zero_shot: bool = True
    # Also evaluate each transferred prompt before training (the zero-shot score of the
    # initialisation, e.g. an NLI prompt read as SA); costs one test evaluation per cell.
    evaluate_init: bool = True
    # Tasks of the cross-language and zero-shot cells (default: every task of the grid), and
    # the language segments zero-shot evaluates with.
    lang_tasks: tuple[str, ...] | None = None
    zero_shot_segments: tuple[str, ...] = ("source", "target")
    # Language directions of the cross-language and zero-shot cells, "src>tgt" (e.g. "en>ko");
    # default: every ordered pair of the grid's languages.
    lang_pairs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lang_length < 1 or self.task_length < 1:
            raise ExperimentError("transfer: lang_length and task_length must be ≥ 1")
        object.__setattr__(
            self,
            "text",
            {str(k).strip().lower(): tuple(str(p) for p in v) for k, v in self.text.items()},
        )
        bad = set(self.zero_shot_segments) - {"source", "target"}
        if bad or not self.zero_shot_segments:
            raise ExperimentError(
                "transfer.zero_shot_segments takes 'source' and/or 'target', got "
                f"{list(self.zero_shot_segments)}"
            )
        for name in ("sources", "targets", "lang_tasks"):  # task names: "SA" = "sa"
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(str(t).strip().lower() for t in value))
        if self.lang_pairs is not None:
            pairs = tuple(str(p).strip().lower().replace(" ", "") for p in self.lang_pairs)
            bad_pairs = [p for p in pairs if len(p.split(">")) != 2 or "" in p.split(">")]
            if bad_pairs:
                raise ExperimentError(
                    f"transfer.lang_pairs: {bad_pairs} are not 'source>target' language pairs; "
                    "write e.g. [en>ko]"
                )
            object.__setattr__(self, "lang_pairs", pairs)
        from_dict(TrainConfig, self.language, path="transfer.language")  # validate early
        for method, options in self.language_by_method.items():
            check_fields(TrainConfig, options, path=f"transfer.language_by_method.{method}")


@dataclass(frozen=True)
class SkillAnalysisSpec(ConfigBase):
    """``analysis.skill``: the skill neurons of one of the grid's own prompts (SPEC §6): the
    predictivity of every FFN neuron (``find``: :class:`~promptatlas.runs.neurons.FindConfig`)
    and one perturbation curve — skill neurons against the same per-layer number of random
    neurons and of the least predictive ones (``perturb``:
    :class:`~promptatlas.runs.neurons.PerturbConfig`) — into
    ``<out>/atlas/skill/<task>-<lang>/`` (``find/`` and ``perturb/``). ``task``/``lang``:
    which prompt (default: the grid's first task and language); the first method and seed.
    The grid's precision and data folder apply to both, and the grid's ``test_limit`` to the
    perturbation unless ``perturb.test_limit`` is set."""

    task: str | None = None
    lang: str | None = None
    find: FindConfig = field(default_factory=FindConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "find", from_dict(FindConfig, self.find, path="skill.find"))
        object.__setattr__(
            self, "perturb", from_dict(PerturbConfig, self.perturb, path="skill.perturb")
        )


@dataclass(frozen=True)
class IndicatorAnalysisSpec(ConfigBase):
    """``analysis.indicators``: every transferability indicator between the grid's own
    prompts, correlated (Spearman) with their zero-shot transfer T(s→t) = score(P_s on t) /
    score(P_t on t) on ``test_limit`` test examples of each target (SPEC B4;
    :func:`promptatlas.studies.skill.grid_indicators`), into ``<out>/atlas/indicators/``.
    ``skill``: also the skill-neuron indicators (predictivity of each classification prompt
    on ``train_limit`` + ``dev_limit`` examples; top ``p`` per layer)."""

    test_limit: int | None = 200
    train_limit: int = 128
    dev_limit: int = 128
    p: float = 0.01
    skill: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_limit is not None and self.test_limit < 1:
            raise ExperimentError("analysis.indicators.test_limit: ≥ 1, or null for all")
        if self.train_limit < 2 or self.dev_limit < 2:
            raise ExperimentError("analysis.indicators: train_limit and dev_limit ≥ 2")
        if not 0 < self.p <= 1:
            raise ExperimentError(f"analysis.indicators.p: a fraction in (0, 1], got {self.p}")


@dataclass(frozen=True)
class AnalysisSpec(ConfigBase):
    """The optional ``analysis`` block of a grid file: after the cells, analyse every prompt
    of the grid (attention, neurons, geometry, PCA; :mod:`promptatlas.studies.atlas`) into
    ``<out>/atlas``, choose v2 compression layers and write ``<out>/compression.yaml``.

    compression: when given, also run that compression study (v1, v2, v2 on peak layers, v2 on
    trough layers; thesis Table 3) with these experiment settings merged in (e.g. tasks,
    langs, train, test_limit).
    skill: when given, the skill neurons of one own prompt and their perturbation curve
    (:class:`SkillAnalysisSpec`, ``<out>/atlas/skill``).
    indicators: when given, the transferability indicators of the own prompts against their
    zero-shot transfer (:class:`IndicatorAnalysisSpec`, ``<out>/atlas/indicators``).
    compose: when given, AMP over the own prompts of one language and one IPT recovery number
    (:class:`~promptatlas.studies.grid_compose.GridCompositionSpec`, ``<out>/atlas/compose``)."""

    n_examples: int = 64
    batch_size: int = 16
    n_tokens: int = 10
    compression: Mapping[str, Any] | None = None
    skill: SkillAnalysisSpec | None = None
    indicators: IndicatorAnalysisSpec | None = None
    compose: GridCompositionSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compose is not None:
            object.__setattr__(
                self,
                "compose",
                from_dict(GridCompositionSpec, self.compose, path="analysis.compose"),
            )
        if self.n_examples < 2 or self.batch_size < 1:
            raise ExperimentError("analysis: n_examples ≥ 2 and batch_size ≥ 1 are required")
        if self.skill is not None:
            object.__setattr__(
                self, "skill", from_dict(SkillAnalysisSpec, self.skill, path="analysis.skill")
            )
        if self.indicators is not None:
            object.__setattr__(
                self,
                "indicators",
                from_dict(IndicatorAnalysisSpec, self.indicators, path="analysis.indicators"),
            )


class CellKind(enum.StrEnum):
    """What a grid cell does. The values are the words stored in cell keys, cell hashes and the
    results database (kept as they were, so earlier grids resume): "lang" is *training* a
    language prompt, "language" is *cross-language transfer*."""

    LANGUAGE_PROMPT = "lang"
    BASELINE = "base"
    CROSS_TASK = "task"
    CROSS_LANGUAGE = "language"
    ZERO_SHOT = "zero"


@dataclass(frozen=True)
class Cell:
    """One unit of grid work (``kind``: see :class:`CellKind`; its value is accepted too)."""

    kind: CellKind
    method: str
    seed: int
    lang: str  # the (target) language
    task: str | None = None  # the (target) task
    source_task: str | None = None
    source_lang: str | None = None
    lang_segment: str | None = None  # zero: "source" or "target"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CellKind(self.kind))

    @property
    def name(self) -> str:
        s = f"{self.method}/s{self.seed}"
        if self.kind is CellKind.LANGUAGE_PROMPT:
            return f"lang-{self.lang}/{s}"
        if self.kind is CellKind.BASELINE:
            return f"base/{self.task}-{self.lang}/{s}"
        if self.kind is CellKind.CROSS_TASK:
            return f"task/{self.source_task}-to-{self.task}-{self.lang}/{s}"
        if self.kind is CellKind.CROSS_LANGUAGE:
            return f"language/{self.task}-{self.source_lang}-to-{self.lang}/{s}"
        return f"zero/{self.task}-{self.source_lang}-to-{self.lang}/{self.lang_segment}/{s}"


@dataclass(frozen=True)
class GridConfig(ConfigBase):
    experiment: ExperimentConfig
    transfer: TransferSpec
    analysis: AnalysisSpec | None = None
    # Where the cells run (not part of any cell's identity: the results are the same).
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    _hashes: dict[Cell, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        langs = set(self.experiment.langs)
        for pair in self.transfer.lang_pairs or ():
            unknown = [lang for lang in pair.split(">") if lang not in langs]
            if unknown:
                raise ExperimentError(
                    f"transfer.lang_pairs: {pair!r} names {unknown}, not among the grid's "
                    f"languages {sorted(langs)}; add them to langs or drop the pair"
                )
        if self.analysis is not None and self.analysis.skill is not None:
            self.skill_cell()  # fails early on a prompt the grid does not train
        if self.analysis is not None and self.analysis.compose is not None:
            # Fails early on tasks, languages or an IPT target the grid has no own prompt for.
            self.analysis.compose.plan(self.own_prompts(), self.experiment.langs)

    def own_prompts(self) -> dict[str, Path]:
        """The grid's own task prompts of its first method and seed ("task-lang" → prompt
        directory), in the order of its tasks and languages."""
        exp = self.experiment
        method, seed = next(iter(exp.methods)), exp.seeds[0]
        cells = set(self.cells())
        out: dict[str, Path] = {}
        for lang in exp.langs:
            for task in exp.tasks:
                cell = Cell(CellKind.BASELINE, method, seed, lang, task=task)
                if cell in cells:
                    out[f"{task}-{lang}"] = self.path(cell)
        return out

    def skill_cell(self) -> Cell:
        """The own-prompt cell whose skill neurons ``analysis.skill`` finds."""
        assert self.analysis is not None and self.analysis.skill is not None
        exp, spec = self.experiment, self.analysis.skill
        task = (spec.task or exp.tasks[0]).lower()
        lang = (spec.lang or exp.langs[0]).lower()
        method, seed = next(iter(exp.methods)), exp.seeds[0]
        cell = Cell(CellKind.BASELINE, method, seed, lang, task=task)
        if cell not in self.cells():
            raise ExperimentError(
                f"analysis.skill: the grid trains no own {task}-{lang} prompt ({method}, seed "
                f"{seed}); choose one of its tasks {list(exp.tasks)} and languages "
                f"{list(exp.langs)} that is not skipped"
            )
        return cell

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def out(self) -> Path:
        return Path(self.experiment.out)

    def key(self, cell: Cell) -> str:
        """The results-database key of a cell: its name and :meth:`cell_hash`, so a cell whose
        settings (or whose inputs' settings) changed is run again, not mistaken for done."""
        return f"{self.name}/{self.experiment.model}/{cell.name}#{self.cell_hash(cell)}"

    def cell_config(self, cell: Cell) -> dict[str, Any]:
        """Every setting that determines a cell's result, with the hashes of the cells it
        depends on (the device, which only decides where it runs, and the paths of its inputs,
        which follow from the cells, aside)."""
        exp = self.experiment
        data: dict[str, Any]
        if cell.kind is CellKind.LANGUAGE_PROMPT:
            data = dataclasses.asdict(self.language_config(cell.lang, cell.method, cell.seed))
        elif cell.kind is CellKind.ZERO_SHOT:
            assert cell.task is not None
            run = exp.run_config(cell.task, cell.lang, cell.method, cell.seed)
            data = {
                "eval": dataclasses.asdict(run.eval),
                "test_limit": exp.test_limit,
                "data_dir": exp.data_dir,
            }
        else:
            assert cell.task is not None
            run = self.run_config(cell.task, cell.lang, cell.method, cell.seed)
            if cell.kind is not CellKind.BASELINE:
                run = dataclasses.replace(run, baseline=self.transfer.evaluate_init)
            data = run.to_dict()
            data.pop("lang_prompt", None)
        data.pop("device", None)
        data["cell"] = dataclasses.asdict(cell)
        data["dependencies"] = [self.cell_hash(dep) for dep in self.dependencies(cell)]
        return data

    def cell_hash(self, cell: Cell) -> str:
        """:func:`~promptatlas.configtools.config_hash` of :meth:`cell_config`."""
        if cell not in self._hashes:
            self._hashes[cell] = config_hash(self.cell_config(cell))
        return self._hashes[cell]

    # -- cells -----------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        exp, spec = self.experiment, self.transfer
        tasks = [t for t in exp.tasks]
        sources = list(spec.sources or tasks)
        targets = list(spec.targets or tasks)
        lang_tasks = list(spec.lang_tasks or tasks)
        directions = [
            (src, tgt)
            for src in exp.langs
            for tgt in exp.langs
            if src != tgt and (spec.lang_pairs is None or f"{src}>{tgt}" in spec.lang_pairs)
        ]
        out: list[Cell] = []
        for seed in exp.seeds:
            for method in exp.methods:
                out += [Cell(CellKind.LANGUAGE_PROMPT, method, seed, lang) for lang in exp.langs]
        for seed in exp.seeds:
            for method in exp.methods:
                out += [
                    Cell(CellKind.BASELINE, method, seed, lang, task)
                    for lang in exp.langs
                    for task in tasks
                    if self._present(task, lang)
                ]
        for seed in exp.seeds:
            for method in exp.methods:
                if spec.cross_task:
                    out += [
                        Cell(
                            CellKind.CROSS_TASK,
                            method,
                            seed,
                            lang,
                            tgt,
                            source_task=src,
                            source_lang=lang,
                        )
                        for lang in exp.langs
                        for src in sources
                        for tgt in targets
                        if src != tgt and self._present(src, lang) and self._present(tgt, lang)
                    ]
                if spec.cross_lang:
                    out += [
                        Cell(
                            CellKind.CROSS_LANGUAGE,
                            method,
                            seed,
                            tgt,
                            task,
                            source_task=task,
                            source_lang=src,
                        )
                        for task in lang_tasks
                        for src, tgt in directions
                        if self._present(task, src) and self._present(task, tgt)
                    ]
                if spec.zero_shot:
                    out += [
                        Cell(
                            CellKind.ZERO_SHOT,
                            method,
                            seed,
                            tgt,
                            task,
                            source_task=task,
                            source_lang=src,
                            lang_segment=segment,
                        )
                        for task in lang_tasks
                        for src, tgt in directions
                        if self._present(task, src)
                        and self._present(task, tgt)
                        and _same_labels(task, src, tgt)
                        for segment in spec.zero_shot_segments
                    ]
        return out

    def _present(self, task: str, lang: str) -> bool:
        return f"{task}-{lang}" not in self.experiment.skip

    def dependencies(self, cell: Cell) -> list[Cell]:
        m, s = cell.method, cell.seed
        if cell.kind is CellKind.LANGUAGE_PROMPT:
            return []
        if cell.kind is CellKind.BASELINE:
            return [Cell(CellKind.LANGUAGE_PROMPT, m, s, cell.lang)]
        assert cell.task is not None and cell.source_lang is not None
        source = Cell(CellKind.BASELINE, m, s, cell.source_lang, cell.source_task)
        target = Cell(CellKind.BASELINE, m, s, cell.lang, cell.task)
        if cell.kind is CellKind.CROSS_TASK:
            return [source, target]
        if cell.kind is CellKind.CROSS_LANGUAGE:
            return [source, Cell(CellKind.LANGUAGE_PROMPT, m, s, cell.lang), target]
        return [
            source,
            Cell(CellKind.LANGUAGE_PROMPT, m, s, cell.lang),
            target,
        ]  # zero: Δ vs the target's own

    # -- where things go -------------------------------------------------------------------
    def path(self, cell: Cell) -> Path:
        bank = self.out / "bank"
        suffix = f"{cell.method}-s{cell.seed}"
        if cell.kind is CellKind.LANGUAGE_PROMPT:
            return bank / f"lang-{cell.lang}-{suffix}"
        if cell.kind is CellKind.BASELINE:
            return bank / f"{cell.task}-{cell.lang}-{suffix}"
        if cell.kind is CellKind.CROSS_TASK:
            return self.out / "transfer" / f"{cell.source_task}-to-{cell.task}-{cell.lang}-{suffix}"
        if cell.kind is CellKind.CROSS_LANGUAGE:
            return self.out / "transfer" / f"{cell.task}-{cell.source_lang}-to-{cell.lang}-{suffix}"
        return self.out / "zero-shot" / f"{cell.name.replace('/', '_')}.json"

    def run_config(self, task: str, lang: str, method: str, seed: int) -> RunConfig:
        cfg = self.experiment.run_config(task, lang, method, seed)
        lang_prompt = self.path(Cell(CellKind.LANGUAGE_PROMPT, method, seed, lang))
        return dataclasses.replace(cfg, lang_prompt=str(lang_prompt))

    def language_config(self, lang: str, method: str, seed: int) -> LanguagePromptConfig:
        exp, spec = self.experiment, self.transfer
        train = {
            "steps": 100,
            "batch_size": 8,
            "lr": 0.03,
            "warmup": 0.1,
            **spec.language,
            **spec.language_by_method.get(method, {}),
            "seed": seed,
        }
        return LanguagePromptConfig(
            lang=lang,
            model=exp.model,
            prompt=exp.methods[method],
            lang_length=spec.lang_length,
            task_length=spec.task_length,
            train=from_dict(TrainConfig, train, path="transfer.language"),
            text=spec.text.get(lang, ()),
            text_limit=spec.text_limit,
            max_length=spec.max_length,
            precision=exp.precision,
            device=exp.device,
        )


def _same_labels(task: str, a: str, b: str) -> bool:
    """Zero-shot across languages answers with the source's label words, which needs the same
    label set (the thesis leaves out TC, whose topics differ, and the generation tasks)."""
    va, vb = get_task(task, a), get_task(task, b)
    return va.spec.kind == "classification" and set(va.labels) == set(vb.labels)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 ≤ i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 ≤ i < n")
    return i, n


def load_grid(path: str | Path) -> GridConfig:
    """Parse and validate a grid file; errors name the file and the problem."""
    path = Path(path)
    data = read_yaml(path)
    block = data.pop("transfer", None)
    if not isinstance(block, Mapping):
        raise ExperimentError(
            f"{path} has no 'transfer' block; it is a plain experiment file "
            "(run it with `promptatlas run`)"
        )
    analysis_block = data.pop("analysis", None)
    executor_block = data.pop("executor", None)
    exp = experiment_from_mapping(data, path)
    try:
        spec = from_dict(TransferSpec, block, path="transfer")
        analysis = (
            None
            if analysis_block is None
            else from_dict(AnalysisSpec, analysis_block, path="analysis")
        )
        executor = (
            ExecutorSpec()
            if executor_block is None
            else from_dict(ExecutorSpec, executor_block, path="executor")
        )
    except ValueError as exc:
        raise ExperimentError(f"{path}: {exc}") from None
    grid = GridConfig(exp, spec, analysis, executor)
    for name in ("sources", "targets"):
        bad = set(getattr(spec, name) or ()) - set(exp.tasks)
        if bad:
            raise ExperimentError(f"{path}: transfer {name} {sorted(bad)} are not in tasks")
    unknown_methods = set(spec.language_by_method) - set(exp.methods)
    if unknown_methods:
        raise ExperimentError(
            f"{path}: transfer language_by_method names unknown methods {sorted(unknown_methods)}"
        )
    return grid


@dataclass
class CellResult:
    """What a cell produced, as values: the driver stores it (see :func:`commit_cell`).

    ``records``: the results-database rows of the cell, the grid's own row (its key) last;
    ``files``: the cell's output files (its prompt directory or JSON file, its training curve)
    as bytes by path relative to the results folder, when the cell ran elsewhere (empty when it
    ran in the results folder itself); ``workspace``: the folder it ran in, written in the
    paths its files and rows hold (the driver puts the results folder in its place);
    ``worker``: the process that ran it and how many models that process loaded."""

    cell: Cell
    metrics: dict[str, Any]
    score: float | None
    records: list[dict[str, Any]]
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    workspace: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    """Stands in for the results database inside a cell: keeps the rows the runs record, so
    that only the driver writes the database."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, **row: Any) -> int:
        if row.get("prompt_dir") is not None:
            row["prompt_dir"] = str(row["prompt_dir"])
        self.rows.append(row)
        return len(self.rows)


class _CellWork:
    """One cell's computation (one method per cell kind), writing its outputs under
    ``grid.out`` (the results folder, or a scratch copy of its layout) and its database rows
    into a :class:`_Recorder`."""

    def __init__(
        self,
        grid: GridConfig,
        handle: Callable[[], ModelHandle],
        progress: bool,
        log: Callable[[str], Any],
        tensorboard: str | Path | None,
    ) -> None:
        self.grid, self._handle, self.progress, self.log = grid, handle, progress, log
        self.tensorboard = tensorboard
        self.db = _Recorder()

    @property
    def handle(self) -> ModelHandle:
        return self._handle()

    def curve(self, path: Path) -> dict[str, Any]:
        """The curve options of a training run writing ``path``."""
        tb = Path(self.tensorboard) / path.name if self.tensorboard else None
        return {"curve": curve_path(self.grid.out, path), "tensorboard": tb}

    def run(self, cell: Cell) -> CellResult:
        grid, exp = self.grid, self.grid.experiment
        path = grid.path(cell)
        started = time.perf_counter()
        run_kind = {
            CellKind.LANGUAGE_PROMPT: self._language_prompt,
            CellKind.BASELINE: self._baseline,
            CellKind.CROSS_TASK: self._transfer,
            CellKind.CROSS_LANGUAGE: self._transfer,
            CellKind.ZERO_SHOT: self._zero_shot,
        }[cell.kind]
        metrics, score = run_kind(cell, path)
        self.db.record(
            kind=f"grid-{cell.kind}",
            model=exp.model,
            task=cell.task,
            lang=cell.lang,
            method=cell.method,
            split="heldout" if cell.kind is CellKind.LANGUAGE_PROMPT else "test",
            metrics={**metrics, "cell": dataclasses.asdict(cell)},
            score=score,
            config={"grid": grid.name, "cell": dataclasses.asdict(cell)},
            prompt_dir=str(path),
            seed=cell.seed,
            key=grid.key(cell),
        )
        return CellResult(cell, metrics, score, self.db.rows, seconds=time.perf_counter() - started)

    # One method per cell kind: (metrics, score) of the cell written to ``path``.

    def _language_prompt(self, cell: Cell, path: Path) -> tuple[dict[str, Any], float | None]:
        options = self.curve(path)
        with recording_curve(options["curve"], tensorboard=options["tensorboard"]) as callbacks:
            res = train_language_prompt(
                self.grid.language_config(cell.lang, cell.method, cell.seed),
                path,
                handle=self.handle,
                db=self.db,  # type: ignore[arg-type]
                progress=self.progress,
                overwrite=True,  # the grid owns its folder; a cell not done is (re)built
                step_callbacks=callbacks,
            )
        metrics = {
            "heldout_loss_untrained": res.heldout_loss_before,
            "heldout_loss": res.heldout_loss_after,
        }
        self.log(f"    {res.describe()} ({res.steps} steps)")
        return metrics, -res.heldout_loss_after if res.heldout_loss_after is not None else None

    def _baseline(self, cell: Cell, path: Path) -> tuple[dict[str, Any], float | None]:
        assert cell.task is not None
        cfg = self.grid.run_config(cell.task, cell.lang, cell.method, cell.seed)
        run = train_run(
            cfg, path, handle=self.handle, db=self.db, progress=self.progress,  # type: ignore[arg-type]
            overwrite=True, **self.curve(path),
        )  # fmt: skip
        untrained = run.metrics.get("untrained_test", {})
        metrics = {
            **run.metrics["test"],
            "untrained": run.untrained.score if run.untrained else None,
            "untrained_ci": untrained.get("ci"),
            "untrained_examples": untrained.get("examples"),
            "gain": run.metrics.get("gain"),
            "dev_best": run.metrics.get("dev_best"),
        }
        score = run.trained.score
        self.log(f"    test {100 * score:.1f} ({run.steps} steps, {run.seconds:.0f}s)")
        return metrics, score

    def _transfer(self, cell: Cell, path: Path) -> tuple[dict[str, Any], float | None]:
        """Cross-task or cross-language transfer (the language segment is the target's own
        for cross-language cells)."""
        grid = self.grid
        assert cell.task is not None and cell.source_task is not None
        assert cell.source_lang is not None
        source = grid.path(
            Cell(CellKind.BASELINE, cell.method, cell.seed, cell.source_lang, cell.source_task)
        )
        baseline = grid.path(Cell(CellKind.BASELINE, cell.method, cell.seed, cell.lang, cell.task))
        lang_prompt = (
            grid.path(Cell(CellKind.LANGUAGE_PROMPT, cell.method, cell.seed, cell.lang))
            if cell.kind is CellKind.CROSS_LANGUAGE
            else None
        )
        cfg = grid.run_config(cell.task, cell.lang, cell.method, cell.seed)
        cfg = dataclasses.replace(cfg, baseline=grid.transfer.evaluate_init)
        moved = transfer_run(
            source,
            cfg,
            path,
            lang_prompt=lang_prompt,
            baseline_dir=baseline,
            handle=self.handle,
            db=None,
            progress=self.progress,
            overwrite=True,
            **self.curve(path),
        )
        test = moved.run.metrics["test"]
        metrics = {
            **moved.to_dict(),
            "n": test.get("n"),
            "ci": test.get("ci"),
            "examples": test.get("examples"),
        }
        delta = "" if moved.delta is None else f" ({100 * moved.delta:+.1f} vs baseline)"
        self.log(f"    test {100 * moved.score:.1f}{delta}")
        return metrics, moved.score

    def _zero_shot(self, cell: Cell, path: Path) -> tuple[dict[str, Any], float | None]:
        grid, exp = self.grid, self.grid.experiment
        assert cell.task is not None and cell.source_lang is not None
        source = grid.path(
            Cell(CellKind.BASELINE, cell.method, cell.seed, cell.source_lang, cell.task)
        )
        target_lang = grid.path(Cell(CellKind.LANGUAGE_PROMPT, cell.method, cell.seed, cell.lang))
        result = zero_shot(
            source,
            cell.task,
            cell.lang,
            lang_segment="target" if cell.lang_segment == "target" else "source",
            lang_prompt=target_lang,
            limit=exp.test_limit,
            data_dir=exp.data_dir,
            eval_config=exp.run_config(cell.task, cell.lang, cell.method, cell.seed).eval,
            handle=self.handle,
        )
        metrics = {**result.summary(), **result.extra}
        # zero-shot − the target's own trained prompt, paired over the same test examples
        baseline = grid.path(Cell(CellKind.BASELINE, cell.method, cell.seed, cell.lang, cell.task))
        if (baseline / "prompt.json").exists():
            base_meta = read_metadata(baseline).metrics
            metrics["baseline"] = base_meta.get("test", {}).get("score")
            metrics["delta_ci"] = paired_gain(
                result.examples, stored_examples(base_meta.get("test"))
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"cell": cell.name, "metrics": metrics})
        self.log(f"    zero-shot {100 * result.score:.1f}")
        return metrics, result.score


def run_cell(
    grid: GridConfig,
    cell: Cell,
    *,
    handle: Callable[[], ModelHandle],
    progress: bool = False,
    log: Callable[[str], Any] = print,
    tensorboard: str | Path | None = None,
) -> CellResult:
    """Run one cell in ``grid.out`` (whose dependencies' outputs are there) and return what it
    produced; nothing goes into a results database (the rows are in the result). ``handle``
    gives the model, loaded on first use."""
    return _CellWork(grid, handle, progress, log, tensorboard).run(cell)


# -- running a cell away from the results folder (an executor's worker) --------------------

_WORKER: dict[str, Any] = {"key": None, "handle": None, "loads": 0}


def _worker_handle(model: str, device: str | None) -> ModelHandle:
    """The model of this worker process: loaded once, reused by every cell it runs."""
    if _WORKER["key"] != (model, device):
        from promptatlas.console import quiet_libraries

        quiet_libraries()  # no loading bars from every worker in the driver's terminal
        _WORKER["handle"] = load_model(model, device=device)
        _WORKER["key"] = (model, device)
        _WORKER["loads"] += 1
    handle: ModelHandle = _WORKER["handle"]
    return handle


def _relocated(grid: GridConfig, out: Path) -> GridConfig:
    return dataclasses.replace(grid, experiment=dataclasses.replace(grid.experiment, out=str(out)))


def _outputs(grid: GridConfig, cell: Cell) -> list[Path]:
    """The files and folders a cell writes: its prompt directory or JSON file, its curve."""
    path = grid.path(cell)
    if cell.kind is CellKind.ZERO_SHOT:
        return [path]
    curve = curve_path(grid.out, path)
    return [path, curve, curve.with_suffix(".png")]


def _read_files(root: Path, paths: Sequence[Path]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in paths:
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for item in found:
            if item.is_file():
                files[item.relative_to(root).as_posix()] = item.read_bytes()
    return files


def _write_files(root: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def stored_result(grid: GridConfig, cell: Cell) -> CellResult:
    """A finished cell's outputs read back from the results folder, as a dependency's result
    for a cell that runs elsewhere."""
    return CellResult(
        cell, {}, None, [], files=_read_files(grid.out, _outputs(grid, cell)),
        workspace=str(grid.out),
    )  # fmt: skip


def remote_cell(task: tuple[Any, Any], needed: Mapping[Any, CellResult]) -> CellResult:
    """Run one cell in a scratch folder (an executor's work function): the dependencies'
    outputs (``needed``, results of other cells) are written there first, the cell runs on the
    worker's model, and its outputs come back as bytes in the result. ``task`` is
    ``((grid, cwd, tensorboard), cell)``."""
    import os
    import tempfile

    (grid, cwd, tensorboard), cell = task
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)  # relative data paths of the grid file, on the machine that has them
    exp = grid.experiment
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="promptatlas-cell-") as tmp:
        workspace = Path(tmp)
        for dep in needed.values():
            _write_files(workspace, _relocate_files(dep.files, dep.workspace, str(workspace)))
        local = _relocated(grid, workspace)
        result = run_cell(
            local, cell, handle=lambda: _worker_handle(exp.model, exp.device),
            progress=False, log=lines.append, tensorboard=tensorboard,
        )  # fmt: skip
        result.files = _read_files(workspace, _outputs(local, cell))
    result.workspace = str(workspace)
    result.lines = lines
    result.worker = {"pid": os.getpid(), "loads": _WORKER["loads"]}
    return result


def _json_text(text: str) -> str:
    return json.dumps(text)[1:-1]


def _relocate_files(files: Mapping[str, bytes], old: str | None, new: str) -> dict[str, bytes]:
    """``files`` with the paths under ``old`` in their JSON text moved under ``new``."""
    if not old or old == new:
        return dict(files)
    before, after = _json_text(old).encode(), _json_text(new).encode()
    return {
        name: data.replace(before, after) if name.endswith((".json", ".jsonl")) else data
        for name, data in files.items()
    }


def _relocate(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, Mapping):
        return {k: _relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_relocate(v, old, new) for v in value)
    return value


def commit_cell(grid: GridConfig, db: ResultsDB, result: CellResult) -> None:
    """Store a cell's result: its files into the results folder (a prompt directory replaced
    as a whole, atomically; other files atomically one by one), then its database rows, the
    grid's row last (so a cell is marked done only once everything is in place)."""
    records = result.records
    if result.files:
        out = str(grid.out)
        files = _relocate_files(result.files, result.workspace, out)
        path = grid.path(result.cell)
        prefix = path.relative_to(grid.out).as_posix() + "/"
        inside = {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
        if inside:
            with atomic_directory(path) as tmp:
                _write_files(tmp, inside)
        for name, data in files.items():
            if not name.startswith(prefix):
                target = grid.out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(target, data)
        if result.workspace:
            records = [_relocate(row, result.workspace, out) for row in records]
    for row in records:
        db.record(**row)


class _Runner:
    """The driver of a grid: which cells are done, and storing each cell's result. The local
    executor runs cells through :meth:`run` in this process, in the results folder."""

    def __init__(
        self,
        grid: GridConfig,
        db: ResultsDB,
        progress: bool,
        log: Callable[[str], Any],
        tensorboard: str | Path | None = None,
    ) -> None:
        self.grid, self.db, self.progress, self.log = grid, db, progress, log
        self.tensorboard = tensorboard
        self._handle: ModelHandle | None = None
        self.trained = 0
        self.workers: dict[int, int] = {}  # pid → model loads (cells run elsewhere)

    @property
    def handle(self) -> ModelHandle:
        if self._handle is None:
            exp = self.grid.experiment
            self._handle = load_model(exp.model, device=exp.device, device_map=exp.device_map)
        return self._handle

    def exists(self, cell: Cell) -> bool:
        """Whether the cell's output is on disk (from this or an earlier configuration)."""
        path = self.grid.path(cell)
        return (
            (path / "prompt.json").exists()
            if cell.kind is not CellKind.ZERO_SHOT
            else path.exists()
        )

    def done(self, cell: Cell) -> bool:
        return self.exists(cell) and self.db.has(self.grid.key(cell))

    def ensure(self, cell: Cell) -> None:
        if self.done(cell):
            return
        for dep in self.grid.dependencies(cell):
            self.ensure(dep)
        self.run(cell)

    def run(self, cell: Cell) -> None:
        """Run ``cell`` here, in the results folder, and store its result."""
        self.log(f"[{self.grid.name}] {cell.name}")
        result = run_cell(
            self.grid, cell, handle=lambda: self.handle, progress=self.progress, log=self.log,
            tensorboard=self.tensorboard,
        )  # fmt: skip
        self.store(result)

    def store(self, result: CellResult) -> None:
        commit_cell(self.grid, self.db, result)
        self.trained += 1
        if result.worker:
            self.log(f"[{self.grid.name}] {result.cell.name}")
            for line in result.lines:
                self.log(line)
            self.workers[result.worker["pid"]] = result.worker["loads"]
        self.log(f"    {result.seconds:.0f}s")

    def plan(self, todo: Sequence[Cell]) -> list[Cell]:
        """``todo`` with every dependency that is not done, in grid order (dependencies first)."""
        needed: set[Cell] = set()

        def add(cell: Cell) -> None:
            if cell in needed or self.done(cell):
                return
            needed.add(cell)
            for dep in self.grid.dependencies(cell):
                add(dep)

        for cell in todo:
            add(cell)
        return [c for c in self.grid.cells() if c in needed]

    def run_elsewhere(self, todo: Sequence[Cell], spec: ExecutorSpec) -> None:
        """Run ``todo`` (and the dependencies not done) through the executor ``spec``; finished
        dependencies are read from the results folder and passed to the cells as values."""
        import os

        cells = self.plan(todo)
        planned = set(cells)
        inputs = {
            dep: stored_result(self.grid, dep)
            for cell in cells
            for dep in self.grid.dependencies(cell)
            if dep not in planned
        }
        jobs = [
            Job(cell, tuple(self.grid.dependencies(cell)), cell, name=cell.name) for cell in cells
        ]
        shared = (self.grid, os.getcwd(), self.tensorboard)
        run_jobs(
            spec, jobs, remote_cell, on_result=lambda _, r: self.store(r), inputs=inputs,
            shared=shared, log=self.log,
        )  # fmt: skip
        if self.workers:
            self.log(
                f"[{self.grid.name}] {len(self.workers)} worker(s), model loads per worker: "
                + ", ".join(str(n) for n in sorted(self.workers.values()))
            )


def _analyse(
    grid: GridConfig,
    spec: AnalysisSpec,
    db: ResultsDB,
    runner: _Runner,
    progress: bool,
    log: Callable[[str], Any],
) -> None:
    """Analyse the grid's prompts (once: recorded under the grid's analysis key)."""
    from promptatlas.studies import atlas as suite
    from promptatlas.studies.experiment import load_experiment, run_experiment

    exp = grid.experiment
    settings = {
        "analysis": dataclasses.asdict(spec),
        "cells": [grid.cell_hash(c) for c in grid.cells()],
        "data_dir": exp.data_dir,
        "precision": exp.precision,
    }
    key = f"{grid.name}/{exp.model}/analysis#{config_hash(settings)}"
    atlas = grid.out / "atlas"
    compression = grid.out / "compression.yaml"
    if not db.has(key):
        started = time.perf_counter()
        log(f"[{grid.name}] analysing the prompts into {atlas}")
        _, entries = suite.load_bank(
            [p for p in (grid.out / "bank", grid.out / "transfer") if p.exists()], runner.handle
        )
        cfg = suite.AnalysisConfig(
            n_examples=spec.n_examples,
            batch_size=spec.batch_size,
            n_tokens=spec.n_tokens,
            data_dir=grid.experiment.data_dir,
            precision=grid.experiment.precision,
        )
        handle = runner.handle
        suite.analyze_attention(entries, handle, atlas / "attention", cfg, log=log)
        suite.analyze_neurons(entries, handle, atlas / "neurons", log=log)
        suite.analyze_geometry(entries, handle, atlas / "geometry", cfg, log=log)
        suite.analyze_pca(entries, atlas / "pca", log=log)
        overrides = {
            "name": f"{grid.name}-compression",
            "out": str(grid.out / "compression"),
            "precision": grid.experiment.precision,
            "format": dict(grid.experiment.format),
            # The grid's per-task formats (a cue on sa-en) for the compression's tasks.
            "format_by_task": _format_by_task_for(grid.experiment, spec.compression or {}),
            "eval": dict(grid.experiment.eval),
            "test_limit": grid.experiment.test_limit,
            # The grid's learning rates: v2 on a layer subset is trained like full v2.
            "train_by_method": {
                name: dict(grid.experiment.train_by_method.get(base, {}))
                for name, base in (
                    ("v1", "v1"),
                    ("v2", "v2"),
                    ("v2-peak", "v2"),
                    ("v2-trough", "v2"),
                )
            },
            **dict(spec.compression or {}),
        }
        attention = atlas / "attention"
        has_v2 = any(e.prompt.method == "v2" for e in entries)
        if spec.compression is not None and not has_v2:
            # The layers come from a v2 KL curve: train the study's own full v1 and v2 cells
            # first, analyse the v2 prompts' attention, then select (those cells are reused).
            attention = _v2_attention_for_compression(
                grid, overrides, atlas, runner, cfg, db, progress, log
            )
        suite.select_compression_layers(attention, compression, experiment=overrides, log=log)
        if spec.skill is not None:
            _skill_neurons(grid, spec.skill, atlas / "skill", runner.handle, log)
        if spec.indicators is not None:
            from promptatlas.studies.skill import grid_indicators

            ind = spec.indicators
            log(f"[{grid.name}] transferability indicators of the grid's own prompts")
            grid_indicators(
                grid.out,
                atlas / "indicators",
                p=ind.p,
                skill=ind.skill,
                train_limit=ind.train_limit,
                dev_limit=ind.dev_limit,
                transfer="zero-shot",
                test_limit=ind.test_limit,
                data_dir=exp.data_dir,
                handle=runner.handle,
                # the cells have just evaluated the own prompts on these test examples
                reuse_stored=True,
                log=lambda line: log(f"  {line}"),
            )
        if spec.compose is not None:
            _composition(grid, spec.compose, atlas / "compose", runner.handle, log)
        db.record(
            kind="grid-analysis",
            model=grid.experiment.model,
            task=None,
            lang=None,
            method=None,
            split=None,
            metrics={"seconds": time.perf_counter() - started, "prompts": len(entries)},
            config={"grid": grid.name, "analysis": dataclasses.asdict(spec)},
            prompt_dir=str(atlas),
            key=key,
        )
    if spec.compression is not None:
        log(f"[{grid.name}] compression study (thesis Table 3): {compression}")
        run_experiment(
            load_experiment(compression), db=db, handle=runner.handle, progress=progress, log=log
        )


def _skill_neurons(
    grid: GridConfig,
    spec: SkillAnalysisSpec,
    out: Path,
    handle: ModelHandle,
    log: Callable[[str], Any],
) -> None:
    """Find the skill neurons of one own prompt of the grid and perturb them (one curve)."""
    from promptatlas.runs.neurons import find_neurons, perturb_neurons_run

    cell = grid.skill_cell()
    task, lang, method = cell.task, cell.lang, cell.method
    exp = grid.experiment
    prompt_dir = grid.path(cell)
    where = out / f"{task}-{lang}"
    find = dataclasses.replace(spec.find, precision=exp.precision, data_dir=exp.data_dir)
    # Perturbation is evaluated on the grid's test examples unless the block says otherwise.
    limit = spec.perturb.test_limit if spec.perturb.test_limit is not None else exp.test_limit
    perturb = dataclasses.replace(
        spec.perturb, test_limit=limit, precision=exp.precision, data_dir=exp.data_dir
    )
    log(f"[{grid.name}] skill neurons of {task}-{lang} ({method}) → {where}")

    def indented(line: str) -> None:
        log(f"  {line}")

    find_neurons(prompt_dir, where / "find", find, handle=handle, log=indented)
    perturb_neurons_run(
        prompt_dir, where / "find", where / "perturb", perturb, handle=handle, log=indented
    )


def _composition(
    grid: GridConfig,
    spec: GridCompositionSpec,
    out: Path,
    handle: ModelHandle,
    log: Callable[[str], Any],
) -> None:
    """AMP over the grid's own prompts of one language and one IPT recovery number."""
    from promptatlas.studies.grid_compose import compose_own_prompts

    exp = grid.experiment
    name = next(iter(exp.methods))
    method = exp.methods[name].method
    log(f"[{grid.name}] composition of the grid's own prompts → {out}")
    compose_own_prompts(
        grid.out / "bank",
        grid.own_prompts(),
        out,
        spec,
        langs=exp.langs,
        handle=handle,
        seed=exp.seeds[0],
        method=method,
        data_dir=exp.data_dir,
        precision=exp.precision,
        dev_limit=exp.dev_limit,
        test_limit=exp.test_limit,
        log=lambda line: log(f"  {line}"),
    )


def _format_by_task_for(exp: ExperimentConfig, compression: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's ``format_by_task`` entries that name a task (or task-lang pair) of the
    compression study, so its prompts read their inputs as the grid's prompts did."""
    tasks = [str(t).lower() for t in compression.get("tasks", exp.tasks)]
    langs = [str(lang).lower() for lang in compression.get("langs", exp.langs)]
    names = set(tasks) | {f"{t}-{lang}" for t in tasks for lang in langs}
    return {k: dict(v) for k, v in exp.format_by_task.items() if k in names}


def _v2_attention_for_compression(
    grid: GridConfig,
    overrides: Mapping[str, Any],
    atlas: Path,
    runner: _Runner,
    cfg: Any,
    db: ResultsDB,
    progress: bool,
    log: Callable[[str], Any],
) -> Path:
    """Run the v1 and full-v2 cells of the compression study and analyse the attention of its
    v2 prompts into ``atlas/attention-v2`` (for a grid that trained no v2 prompt)."""
    from promptatlas.studies import atlas as suite
    from promptatlas.studies.experiment import experiment_from_mapping, run_experiment

    first = {
        **dict(overrides),
        "methods": {
            "v1": {"method": "v1", "length": 20},
            "v2": {"method": "v2", "length": 20, "kv": "shared"},
        },
        "train_by_method": {
            k: v for k, v in dict(overrides.get("train_by_method", {})).items() if k in ("v1", "v2")
        },
    }
    first.setdefault("model", grid.experiment.model)
    log(f"[{grid.name}] compression study, full v1 and v2 first (their v2 KL curve picks layers)")
    exp = experiment_from_mapping(first, grid.out / "compression.yaml")
    run_experiment(exp, db=db, handle=runner.handle, progress=progress, log=log)
    _, entries = suite.load_bank([Path(exp.out) / "bank"], runner.handle)
    v2 = [e for e in entries if e.prompt.method == "v2"]
    out = atlas / "attention-v2"
    suite.analyze_attention(v2, runner.handle, out, cfg, log=log)
    return out


def run_grid(
    grid: GridConfig,
    *,
    db: ResultsDB | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    log: Callable[[str], Any] = print,
    report: bool = True,
    executor: ExecutorSpec | None = None,
    tensorboard: str | Path | None = None,
    html: bool = True,
) -> int:
    """Run every cell of this shard that is not done yet; returns the number of cells run.
    With ``report`` the tables and heatmaps are (re)written from the database at the end, and
    with ``html`` the study's page ``<out>/index.html``.

    ``executor``: where the cells run (default: the grid file's ``executor`` block, else
    ``local``: one after another in this process; see :mod:`promptatlas.studies.executors`).
    Training curves go to ``<out>/curves/`` and, with ``tensorboard``, to TensorBoard event
    files in a subfolder per prompt of that folder."""
    owns_db = db is None
    db = ResultsDB() if db is None else db
    i, n = shard
    spec = executor if executor is not None else grid.executor
    try:
        runner = _Runner(grid, db, progress, log, tensorboard)
        cells = grid.cells()
        mine = [c for k, c in enumerate(cells) if k % n == i]
        todo = [c for c in mine if not runner.done(c)]
        reused = len(mine) - len(todo)
        changed = sum(runner.exists(c) for c in todo)
        where = f" (shard {i}/{n})" if n > 1 else ""
        log(
            f"[{grid.name}] {len(cells)} cells on {grid.experiment.model}{where}: "
            f"{reused} of {len(mine)} reused, {len(todo)} to run"
            + (f" ({changed} with changed settings)" if changed else "")
        )
        started = time.perf_counter()
        if spec.kind == "local":
            for cell in todo:
                runner.ensure(cell)
        elif todo:
            log(f"[{grid.name}] executor: {spec.kind}")
            runner.run_elsewhere(todo, spec)
        if report:
            rows = grid_cells(grid, db)
            written = write_transfer_report(rows, _layout(grid), grid.out / "report")
            log(f"[{grid.name}] report: {', '.join(str(p) for p in written)}")
        if grid.analysis is not None:
            if all(runner.done(c) for c in cells):
                _analyse(grid, grid.analysis, db, runner, progress, log)
            else:
                log(f"[{grid.name}] analysis waits until every shard's cells are done")
        if html and grid.out.is_dir():
            log(f"[{grid.name}] page: {write_html(grid.out)}")
        log(
            f"[{grid.name}] {runner.trained} cells run, {reused} reused, in "
            f"{time.perf_counter() - started:.0f}s"
        )
        return runner.trained
    finally:
        if owns_db:
            db.close()


def _layout(grid: GridConfig) -> TransferLayout:
    exp, spec = grid.experiment, grid.transfer
    return TransferLayout(
        name=grid.name,
        model=exp.model,
        methods=tuple(exp.methods),
        tasks=tuple(exp.tasks),
        langs=tuple(exp.langs),
        sources=tuple(spec.sources or exp.tasks),
        targets=tuple(spec.targets or exp.tasks),
        cross_task=spec.cross_task,
        cross_lang=spec.cross_lang,
        zero_shot=spec.zero_shot,
    )


def grid_cells(grid: GridConfig, db: ResultsDB) -> list[dict[str, Any]]:
    """One row per finished cell of ``grid`` (newest record per cell key)."""
    rows: list[dict[str, Any]] = []
    for cell in grid.cells():
        found = db.find(key=grid.key(cell), status="done", limit=1)
        if not found:
            continue
        rec: RunRecord = found[0]
        m = rec.metrics
        rows.append(
            {
                "kind": cell.kind,
                "method": cell.method,
                "seed": cell.seed,
                "source_task": cell.source_task,
                "source_lang": cell.source_lang,
                "task": cell.task,
                "lang": cell.lang,
                "lang_segment": cell.lang_segment,
                "score": rec.score,
                "baseline": m.get("baseline"),
                "delta": m.get("delta"),
                "relative": m.get("relative"),
                "zero_shot_init": m.get("zero_shot"),
                "untrained_score": m.get("untrained"),
                "steps_to_90": m.get("steps_to_90"),
                "baseline_steps_to_90": m.get("baseline_steps_to_90"),
                "prompt_dir": rec.prompt_dir,
                "n": m.get("n"),
                "ci": m.get("ci"),
                "untrained_ci": m.get("untrained_ci"),
                "gain": m.get("gain"),
                "delta_ci": m.get("delta_ci"),
                "vs_untrained": m.get("vs_untrained"),
            }
        )
    return rows
