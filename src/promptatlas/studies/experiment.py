"""Experiment files: a YAML study = tasks × languages × prompt methods × seeds on one model.

Example (see ``configs/quickstart.yaml``)::

    name: quickstart
    model: gemma-3-270m
    out: results/quickstart          # prompts go to <out>/bank/<task>-<lang>-<method>-s<seed>
    tasks: [sa, nli, sts]
    langs: [en, ko]
    seeds: [42]
    methods:                         # name → PromptConfig options
      v1: {method: v1, length: 20}
      v2: {method: v2, length: 20, kv: shared}
    train: {steps: 30, batch_size: 8, lr: 0.03}   # TrainConfig options for every method
    train_by_method: {v1: {lr: 0.3}}              # per-method overrides
    train_by_task: {nli: {batch_size: 32}, sa-ko: {steps: 90}}  # task or task-lang (method wins)
    format_by_task: {nli: {max_length: 150}}      # FormatConfig per task or task-lang
    eval: {batch_size: 16}
    train_limit: null
    test_limit: 100

Each cell is recorded in the results database under a key; a rerun skips finished cells, so
an interrupted study continues where it stopped. The results table (CSV + JSON) lists, per
task/language and method, the untrained and trained test scores.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptatlas.bank import PromptMetadata, ResultsDB, read_metadata
from promptatlas.configtools import (
    ConfigBase,
    ConfigError,
    Precision,
    check_fields,
    config_hash,
    from_dict,
)
from promptatlas.evaluation.confidence import Estimate
from promptatlas.evaluation.evaluate import EvalConfig, paired_gain, stored_examples
from promptatlas.formatting import FormatConfig, with_template
from promptatlas.io import write_text_atomic
from promptatlas.models import DEFAULT_MODEL, ModelHandle, load_model
from promptatlas.prompts import PromptConfig
from promptatlas.report.html import write_html
from promptatlas.runs.train import RunConfig, curve_path, dump_json, train_run
from promptatlas.tasks import get_task
from promptatlas.tasks.registry import task_fingerprint, task_name
from promptatlas.training import TrainConfig

__all__ = [
    "ExperimentConfig",
    "ExperimentError",
    "experiment_from_mapping",
    "load_experiment",
    "read_yaml",
    "run_experiment",
]


class ExperimentError(ConfigError):
    """An invalid experiment file."""


@dataclass(frozen=True)
class ExperimentConfig(ConfigBase):
    name: str
    tasks: tuple[str, ...]
    langs: tuple[str, ...]
    methods: Mapping[str, PromptConfig]
    model: str = DEFAULT_MODEL
    out: str = "results"
    seeds: tuple[int, ...] = (42,)
    train: Mapping[str, Any] = field(default_factory=dict)
    train_by_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    train_by_task: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eval: Mapping[str, Any] = field(default_factory=dict)
    format: Mapping[str, Any] = field(default_factory=dict)
    format_by_task: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data_dir: str | None = None
    train_limit: int | None = None
    dev_limit: int | None = 200
    test_limit: int | None = None
    device: str | None = None
    device_map: str | None = None  # "auto": a backbone larger than one GPU, over the GPUs
    skip: tuple[str, ...] = ()  # "task-lang" pairs to leave out
    # "auto": bf16 autocast where the hardware has native bf16, else fp32
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("langs", "skip"):  # "SA" = "sa", as everywhere
            names = tuple(str(v).strip().lower() for v in getattr(self, name))
            object.__setattr__(self, name, names)
        # "SA" = "sa"; a task file (tasks: [my-task.yaml]) is read, registered and named by
        # its task name.
        object.__setattr__(self, "tasks", tuple(task_name(str(t)) for t in self.tasks))
        for name in ("train_by_task", "format_by_task"):
            by_task = {str(k).strip().lower(): v for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, by_task)
        if not self.tasks or not self.langs or not self.methods:
            raise ExperimentError("an experiment needs tasks, langs and methods")
        unknown = set(self.train_by_method) - set(self.methods)
        if unknown:
            raise ExperimentError(f"train_by_method names unknown methods {sorted(unknown)}")
        pairs = {f"{t}-{lang}" for t in self.tasks for lang in self.langs}
        for name in ("train_by_task", "format_by_task"):  # a misspelt task would be ignored
            unknown = set(getattr(self, name)) - set(self.tasks)
            unknown -= pairs  # also "task-lang" keys (e.g. sa-ko)
            if unknown:
                raise ExperimentError(
                    f"{name} names tasks {sorted(unknown)} that are not in tasks "
                    f"({', '.join(self.tasks)}) or task-lang pairs"
                )
        for cell in self.cells():  # validate every run config up front, before any training
            fmt = self.run_config(*cell).format
            if fmt.template is not None:  # its slots against the task's inputs
                with_template(get_task(cell[0], cell[1]), fmt.template)

    def cells(self) -> list[tuple[str, str, str, int]]:
        return [
            (task, lang, method, seed)
            for task in self.tasks
            for lang in self.langs
            if f"{task}-{lang}" not in self.skip
            for method in self.methods
            for seed in self.seeds
        ]

    def run_config(self, task: str, lang: str, method: str, seed: int) -> RunConfig:
        train = {
            **self.train,
            **_for_pair(self.train_by_task, task, lang),
            **self.train_by_method.get(method, {}),
            "seed": seed,
        }
        return RunConfig(
            task=task,
            lang=lang,
            model=self.model,
            prompt=self.methods[method],
            train=from_dict(TrainConfig, train, path="train"),
            eval=from_dict(EvalConfig, self.eval, path="eval"),
            format=from_dict(
                FormatConfig,
                {**self.format, **_for_pair(self.format_by_task, task, lang)},
                path="format",
            ),
            data_dir=self.data_dir,
            train_limit=self.train_limit,
            dev_limit=self.dev_limit,
            test_limit=self.test_limit,
            device=self.device,
            device_map=self.device_map,
            precision=self.precision,
        )

    def cell_config(self, task: str, lang: str, method: str, seed: int) -> dict[str, Any]:
        """Every setting that determines a cell's result: its resolved run config (the device
        aside, which only decides where it runs)."""
        data = self.run_config(task, lang, method, seed).to_dict()
        data.pop("device", None)
        data.pop("device_map", None)  # where it runs, not what it computes
        fingerprint = task_fingerprint(task, lang, self.data_dir)  # a user task's file and data
        if fingerprint is not None:
            data["task_fingerprint"] = fingerprint
        return data

    def cell_key(self, task: str, lang: str, method: str, seed: int) -> str:
        """The results-database key of a cell: its name and a hash of :meth:`cell_config`, so
        a cell whose settings changed is not mistaken for a finished one."""
        cell = (task, lang, method, seed)
        name = f"{self.name}/{self.model}/{task}-{lang}/{method}/s{seed}"
        return f"{name}#{config_hash(self.cell_config(*cell))}"

    def prompt_dir(self, task: str, lang: str, method: str, seed: int) -> Path:
        return Path(self.out) / "bank" / f"{task}-{lang}-{method}-s{seed}"


_EXPERIMENT_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Parse and validate an experiment YAML file; errors name the file and the problem."""
    path = Path(path)
    return experiment_from_mapping(read_yaml(path), path)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; errors name the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"experiment file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path} must be a YAML mapping")
    return data


def experiment_from_mapping(data: Mapping[str, Any], path: Path) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from parsed YAML (``path`` names the file in errors)."""
    try:
        methods = data.get("methods") or {}
        if isinstance(methods, Mapping):  # `v1:` with no options = the defaults
            methods = {
                name: PromptConfig.from_dict(opts or {}, path=f"methods.{name}")
                for name, opts in methods.items()
            }
        defaults = {"name": str(data.get("name") or path.stem), "seeds": (42,)}
        data = {
            **data,
            **{k: v for k, v in defaults.items() if data.get(k) is None},
            **{k: () for k in ("tasks", "langs", "skip") if data.get(k) is None},
            "methods": methods,
        }
        for key in data:
            if key not in _EXPERIMENT_KEYS and key in _TRAIN_KEYS:
                raise ConfigError(f"{key}: a training option; put it under train:")
        fields = check_fields(ExperimentConfig, data)
        # Each settings block is checked on its own, so errors name the block they are in.
        blocks = {"train": TrainConfig, "eval": EvalConfig, "format": FormatConfig}
        for block, cls in blocks.items():
            check_fields(cls, fields.get(block, {}), path=block)
        for block, cls in (
            ("train_by_method", TrainConfig),
            ("train_by_task", TrainConfig),
            ("format_by_task", FormatConfig),
        ):
            for key, value in fields.get(block, {}).items():
                check_fields(cls, value, path=f"{block}.{key}")
        return ExperimentConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ExperimentError(f"{path}: {exc}") from None


Cell = tuple[str, str, str, int]  # task, lang, method, seed


def _finished(exp: ExperimentConfig) -> list[tuple[Cell, PromptMetadata]]:
    """The experiment's cells that have a saved prompt, with its metadata (read once)."""
    return [
        (cell, read_metadata(exp.prompt_dir(*cell)))
        for cell in exp.cells()
        if (exp.prompt_dir(*cell) / "prompt.json").exists()
    ]


def _table_rows(
    exp: ExperimentConfig, finished: list[tuple[Cell, PromptMetadata]]
) -> list[dict[str, Any]]:
    rows = []
    for (task, lang, method, seed), meta in finished:
        directory = exp.prompt_dir(task, lang, method, seed)
        history = meta.extra.get("history") or [{}]
        test = meta.metrics.get("test", {})
        base = meta.metrics.get("untrained_test", {})
        gain = meta.metrics.get("gain")  # trained − untrained with its paired 95% interval
        rows.append(
            {
                "task": task,
                "lang": lang,
                "method": method,
                "seed": seed,
                "metric": _metric_name(test, get_task(task, lang).spec.metric),
                "untrained": base.get("score"),
                "trained": test.get("score"),
                "gain": (test.get("score") - base.get("score"))
                if test.get("score") is not None and base.get("score") is not None
                else None,
                "trained_ci": test.get("ci"),
                "gain_ci": [gain["low"], gain["high"]] if gain else None,
                "significant": gain.get("significant") if gain else None,
                "accuracy": test.get("accuracy"),
                "n_test": test.get("n"),
                "loss_first": _round(history[0].get("loss")),
                "loss_last": _round(_mean([h.get("loss") for h in history[-10:]])),
                "params": meta.num_parameters,
                "train_seconds": round(float(meta.extra.get("train_seconds", 0.0)), 1),
                "prompt_dir": str(directory),
            }
        )
    return rows


def method_differences(finished: list[tuple[Cell, PromptMetadata]]) -> list[dict[str, Any]]:
    """Every pair of methods of the same task, language and seed: ``a − b`` of their trained
    test scores with a paired 95% bootstrap interval over the same test examples (``a`` before
    ``b`` in the experiment's method order: for the compression study v1 − v2, …, v2-peak −
    v2-trough). Pairs scored on different examples, or without per-example data, are left
    out."""
    by_cell: dict[tuple[str, str, int], list[tuple[str, Any]]] = {}
    for (task, lang, method, seed), meta in finished:
        test = meta.metrics.get("test", {})
        by_cell.setdefault((task, lang, seed), []).append((method, test))
    out = []
    for (task, lang, seed), entries in by_cell.items():
        for i, (a, test_a) in enumerate(entries):
            for b, test_b in entries[i + 1 :]:
                diff = paired_gain(stored_examples(test_a), stored_examples(test_b))
                if diff is None:
                    continue
                out.append(
                    {"task": task, "lang": lang, "seed": seed, "a": a, "b": b,
                     "difference": diff["value"], "ci": [diff["low"], diff["high"]],
                     "significant": diff["significant"], "n_test": diff["n"]}
                )  # fmt: skip
    return out


def format_differences(diffs: list[dict[str, Any]]) -> str:
    """One line per method pair: ``sa-en seed 42: v2-peak − v2-trough = +7.3* [4.0, 11.0]``
    (×100; ``*``: the paired interval excludes 0)."""
    return "\n".join(
        f"{d['task']}-{d['lang']} seed {d['seed']}: {d['a']} − {d['b']} = "
        + Estimate(d["difference"], d["ci"][0], d["ci"][1], d["n_test"]).format(signed=True)
        for d in diffs
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _for_pair(by_task: Mapping[str, Mapping[str, Any]], task: str, lang: str) -> dict[str, Any]:
    """A ``*_by_task`` table's settings for one pair: the task's, then the task-lang pair's
    over them."""
    return {**by_task.get(task, {}), **by_task.get(f"{task}-{lang}", {})}


def _metric_name(metrics: Mapping[str, Any], declared: str | None = None) -> str:
    """The name of the metric behind ``metrics["score"]``: the task's declared metric (SA's
    accuracy can equal its binary F1 by chance), else the one whose value it is."""
    if declared is not None and declared in metrics:
        return declared
    for name in ("binary_f1", "macro_f1", "f1", "coverage", "accuracy"):
        if name in metrics and metrics.get("score") == metrics.get(name):
            return name
    return "score"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text results table (scores ×100; 95% bootstrap intervals, the gain's paired)."""
    cols = [
        "task",
        "lang",
        "method",
        "seed",
        "metric",
        "untrained",
        "trained",
        "trained_ci",
        "gain",
        "gain_ci",
        "loss_first",
        "loss_last",
        "params",
        "train_seconds",
    ]

    def cell(v: Any, c: str) -> str:
        if isinstance(v, float) and c in ("untrained", "trained", "gain"):
            return f"{100 * v:.1f}"
        if c in ("trained_ci", "gain_ci") and v:
            return f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]"
        return "" if v is None else str(v)

    table = [[c for c in cols]] + [[cell(r.get(c), c) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_tables(exp: ExperimentConfig) -> tuple[Path, Path, str]:
    finished = _finished(exp)
    rows = _table_rows(exp, finished)
    out = Path(exp.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "results.csv", out / "results.json"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(csv_path, buffer.getvalue())
    diffs = method_differences(finished)
    dump_json(
        json_path,
        {"experiment": exp.name, "model": exp.model, "rows": rows, "method_differences": diffs},
    )
    table = format_table(rows)
    if diffs:
        table += "\nbetween methods (trained, paired 95% CI):\n" + format_differences(diffs)
    return csv_path, json_path, table


def run_experiment(
    exp: ExperimentConfig,
    *,
    db: ResultsDB | None = None,
    handle: ModelHandle | None = None,
    progress: bool = True,
    log: Any = print,
    tensorboard: str | Path | None = None,
    html: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell not finished yet, then write and return the results table.

    ``handle``: an already loaded model (it must be ``exp.model``); loaded when needed
    otherwise. Each run's training curve goes to ``<out>/curves/`` (JSONL and PNG) and, with
    ``tensorboard``, to TensorBoard event files in a subfolder per prompt there. With ``html``
    the study's page ``<out>/index.html`` is written at the end."""
    owns_db = db is None
    db = ResultsDB() if db is None else db
    started = time.perf_counter()
    try:
        cells = exp.cells()
        todo = [
            c
            for c in cells
            if not (db.has(exp.cell_key(*c)) and (exp.prompt_dir(*c) / "prompt.json").exists())
        ]
        reused = len(cells) - len(todo)
        changed = sum((exp.prompt_dir(*c) / "prompt.json").exists() for c in todo)
        log(
            f"[{exp.name}] {len(cells)} runs on {exp.model}: {reused} reused, {len(todo)} to run"
            + (f" ({changed} with changed settings)" if changed else "")
        )
        if handle is None and todo:
            handle = load_model(exp.model, device=exp.device, device_map=exp.device_map)
        for n, cell in enumerate(todo, 1):
            task, lang, method, seed = cell
            cfg = exp.run_config(*cell)
            log(f"[{exp.name}] ({n}/{len(todo)}) {task}-{lang} {method} seed {seed}")
            prompt_dir = exp.prompt_dir(*cell)
            result = train_run(
                cfg, prompt_dir, handle=handle, db=db, progress=progress, overwrite=True,
                curve=curve_path(exp.out, prompt_dir),
                tensorboard=Path(tensorboard) / prompt_dir.name if tensorboard else None,
            )  # fmt: skip
            db.record(
                kind="experiment-cell",
                model=exp.model,
                task=task,
                lang=lang,
                method=method,
                split="test",
                metrics=result.metrics["test"],
                config=cfg.to_dict(),
                prompt_dir=str(result.path),
                seed=seed,
                key=exp.cell_key(*cell),
            )
            base = result.untrained.score if result.untrained else float("nan")
            log(
                f"    untrained {100 * base:.1f} → trained {100 * result.trained.score:.1f} "
                f"({result.steps} steps, {result.seconds:.0f}s)"
            )
        csv_path, json_path, table = write_tables(exp)
        log(table)
        page = f"; page: {write_html(exp.out)}" if html else ""
        log(
            f"[{exp.name}] {len(todo)} runs run, {reused} reused; tables: {csv_path}, "
            f"{json_path}; prompts: {Path(exp.out) / 'bank'}{page}; "
            f"{time.perf_counter() - started:.0f}s"
        )
        return _table_rows(exp, _finished(exp))
    finally:
        if owns_db:
            db.close()
