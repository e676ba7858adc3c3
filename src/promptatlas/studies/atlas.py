"""The analyses of a set of stored prompts, each writing figures, CSV/JSON tables and a short
text summary into one folder (the ``promptatlas analyze …`` commands and the quickstart).

* :func:`analyze_attention` — variability per head of the base model on each task's inputs,
  KL(prompted ‖ base) per head for every prompt, their Pearson correlation per layer and layer
  group, per-layer KL curves (single- vs pair-input tasks; after task / language transfer);
* :func:`analyze_neurons` — ON scores between every pair of task prompts per layer, and
  source-vs-target ON without and with transfer;
* :func:`analyze_geometry` — isotropy and label space per layer, base vs prompted, and before vs
  after transfer;
* :func:`analyze_pca` — PCA of the prompt vectors (v2 per layer);
* :func:`select_compression_layers` — peak and trough layer groups from the attention KL curve,
  and an experiment file comparing v2 on them with full v2 and v1 (thesis Table 3).

Prompts come from the bank (:func:`load_bank`): any prompt directory, or folders holding them.
Analyses never train anything and read prompts only through the bank.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from promptatlas.analysis.attention import (
    AttentionChangeResult,
    AttentionVariabilityResult,
    CorrelationReport,
)
from promptatlas.analysis.geometry import IsotropyResult, LabelSpaceResult
from promptatlas.analysis.neurons import OnScores
from promptatlas.analysis.pca import PcaPanel
from promptatlas.bank import PromptMetadata, list_prompts, load_prompt
from promptatlas.configtools import ConfigBase, ConfigError, Precision
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.io import write_csv_atomic, write_json_atomic, write_text_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.prompts import SoftPrompt
from promptatlas.tasks import Example, TaskVariant, get_task, load_split

__all__ = [
    "AnalysisConfig",
    "AttentionAtlas",
    "BankEntry",
    "GeometryAtlas",
    "NeuronAtlas",
    "OnTransfer",
    "PcaAtlas",
    "PromptInfo",
    "analyze_attention",
    "analyze_geometry",
    "analyze_neurons",
    "analyze_pca",
    "compute_attention",
    "compute_geometry",
    "compute_neurons",
    "compute_pca",
    "load_bank",
    "select_compression_layers",
    "write_attention",
    "write_geometry",
    "write_neurons",
    "write_pca",
]

Log = Callable[[str], Any]


@dataclass(frozen=True)
class AnalysisConfig(ConfigBase):
    """Inputs of the input-dependent analyses.

    n_examples: inputs per task/language (first of the split); the streaming reducers keep
        memory flat, so more only costs time. n_tokens: attention-variability window (thesis:
        10; CommonGen 2, set automatically for cg). layers: restrict to these decoder layers.
    """

    n_examples: int = 64
    split: str = "test"
    batch_size: int = 16
    n_tokens: int = 10
    isotropy_pairs: int = 1000
    layer_groups: int = 4
    seed: int = 0
    data_dir: str | None = None
    # "bf16": the frozen model runs under bf16 autocast (≈3× faster on CPUs with bf16
    # instructions); base and prompted runs share it, so KL(base ‖ base) stays exactly 0.
    precision: Precision = "auto"  # "auto" (bf16 where native, else fp32), "fp32" or "bf16"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_examples < 2:
            raise ConfigError("n_examples must be ≥ 2")
        if self.batch_size < 1 or self.n_tokens < 2 or self.layer_groups < 1:
            raise ConfigError("batch_size ≥ 1, n_tokens ≥ 2 and layer_groups ≥ 1 are required")
        if self.split not in ("train", "dev", "test"):
            raise ConfigError(f"split must be train, dev or test, got {self.split!r}")


@dataclass
class BankEntry:
    """A stored prompt with what the analyses need to know about it."""

    name: str
    path: Path
    prompt: SoftPrompt
    meta: PromptMetadata
    kind: str  # "task", "language", "projected" …
    transfer: Mapping[str, Any] = field(default_factory=dict)  # metrics["transfer"] if any

    @property
    def task(self) -> str | None:
        return self.meta.task

    @property
    def lang(self) -> str | None:
        return self.meta.lang

    @property
    def method(self) -> str:
        return self.prompt.method

    @property
    def transfer_kind(self) -> str | None:
        kind = self.transfer.get("kind")
        return str(kind) if kind else None

    def variant(self) -> TaskVariant:
        if self.task is None or self.lang is None:
            raise ValueError(f"{self.path} is a language prompt; it has no task inputs")
        return get_task(self.task, self.lang)

    @property
    def format(self) -> FormatConfig:
        return self.meta.run.format


def load_bank(
    paths: Iterable[str | Path], handle: ModelHandle | None = None
) -> tuple[ModelHandle, list[BankEntry]]:
    """Load every prompt directory in ``paths`` (a prompt directory or a folder searched
    recursively). All prompts must belong to one model, which is loaded unless given."""
    dirs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "prompt.json").exists():
            dirs.append(path)
        elif path.is_dir():
            dirs += [p for p, _ in list_prompts(path)]
        else:
            raise FileNotFoundError(f"{path} is neither a prompt directory nor a folder")
    dirs = sorted(dict.fromkeys(dirs))
    if not dirs:
        raise FileNotFoundError(f"no prompt directories under {[str(p) for p in paths]}")
    from promptatlas.bank import read_metadata

    metas = [read_metadata(d) for d in dirs]
    models = sorted({m.model for m in metas})
    if handle is None:
        if len(models) > 1:
            raise ValueError(
                f"the prompts belong to several models {models}; analyse one model at a time"
            )
        handle = load_model(models[0])
    entries = []
    for d, meta in zip(dirs, metas, strict=True):
        stored = load_prompt(d, handle)
        transfer = meta.metrics.get("transfer") if isinstance(meta.metrics, dict) else None
        kind = str(meta.extra.get("kind", "task"))
        entries.append(
            BankEntry(d.name, d, stored.prompt.to(handle.device), meta, kind, transfer or {})
        )
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        # Same folder name in different places: qualify by the parent folder.
        for e in entries:
            e.name = f"{e.path.parent.name}/{e.name}"
    return handle, entries


def _task_entries(entries: Sequence[BankEntry]) -> list[BankEntry]:
    return [e for e in entries if e.task is not None and e.lang is not None]


# -- writing helpers -------------------------------------------------------------------------
def _csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    return write_csv_atomic(path, header, ([_cell(v) for v in row] for row in rows))


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _json(path: Path, data: Any) -> Path:
    return write_json_atomic(path, data)


def _floats(x: torch.Tensor | Sequence[float]) -> list[float]:
    return [float(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


class _Inputs:
    """Analysis batches per (task, language, format), built once and reused."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        self._examples: dict[tuple[str, str], list[Example]] = {}
        self._cache: dict[tuple[Any, ...], Any] = {}

    def examples(self, task: str, lang: str) -> list[Example]:
        key = (task, lang)
        if key not in self._examples:
            self._examples[key] = load_split(
                task,
                lang,
                self.cfg.split,  # type: ignore[arg-type]
                data_dir=self.cfg.data_dir,
                limit=self.cfg.n_examples,
            )
        return self._examples[key]

    def formatter(self, handle: ModelHandle, entry: BankEntry) -> TaskFormatter:
        return TaskFormatter(handle.tokenizer, entry.variant(), entry.format)

    def context(self, handle: ModelHandle, entry: BankEntry) -> Any:
        from promptatlas.analysis.capture import context_batches

        key = ("context", entry.task, entry.lang, repr(entry.format))
        if key not in self._cache:
            fmt = self.formatter(handle, entry)
            self._cache[key] = context_batches(
                fmt,
                self.examples(fmt.task.spec.name, fmt.task.lang),
                batch_size=self.cfg.batch_size,
            )
        return self._cache[key]

    def labels(self, handle: ModelHandle, entry: BankEntry) -> Any:
        from promptatlas.analysis.capture import label_word_batches

        key = ("labels", entry.task, entry.lang, repr(entry.format))
        if key not in self._cache:
            fmt = self.formatter(handle, entry)
            self._cache[key] = label_word_batches(
                fmt,
                self.examples(fmt.task.spec.name, fmt.task.lang),
                batch_size=self.cfg.batch_size,
                seed=self.cfg.seed,
            )
        return self._cache[key]


def _plm(handle: ModelHandle, prompt: SoftPrompt | None, cfg: AnalysisConfig) -> Any:
    from promptatlas.prompts import PromptedLM
    from promptatlas.prompts.injection import autocast_dtype

    return PromptedLM(handle, prompt, autocast_dtype=autocast_dtype(cfg.precision, handle.device))


def _group_name(entry: BankEntry) -> str:
    return f"{entry.task}-{entry.lang}"


def _by_inputs(entries: Sequence[BankEntry]) -> dict[str, list[BankEntry]]:
    """Task prompts grouped by the inputs they read (task, language and format)."""
    groups: dict[tuple[str, str], list[BankEntry]] = defaultdict(list)
    for e in entries:
        groups[(_group_name(e), repr(e.format))].append(e)
    names: dict[str, list[BankEntry]] = {}
    for (name, fmt), members in groups.items():
        clash = sum(1 for n, _ in groups if n == name) > 1
        names[f"{name}-{zlib.crc32(fmt.encode()) % 10_000}" if clash else name] = members
    return names


def _select_runs(result: Any, pick: Mapping[str, str], fields: Sequence[str]) -> Any:
    """A copy of a per-run result (isotropy, label space) with the runs ``pick`` names,
    renamed: {new name: run in ``result``}."""
    import dataclasses

    return dataclasses.replace(
        result, **{f: {new: getattr(result, f)[old] for new, old in pick.items()} for f in fields}
    )


def _style(entries: Sequence[BankEntry | PromptInfo]) -> dict[str, dict[str, str]]:
    return {
        e.name: {"task": e.task or "lang", "lang": e.lang or "", "method": e.method}
        for e in entries
    }


def _pair_task(entry: BankEntry) -> bool:
    return entry.variant().spec.n_inputs > 1


def _summary(path: Path, lines: Sequence[str]) -> Path:
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _plain_task_prompt(
    entries: Sequence[BankEntry],
    task: str | None,
    lang: str | None,
    method: str,
    exclude: BankEntry | None = None,
) -> BankEntry | None:
    """The task prompt trained from scratch (no transfer) for this task, language and method."""
    for other in entries:
        if (
            other is not exclude
            and not other.transfer
            and other.kind == "task"
            and (other.task, other.lang, other.method) == (task, lang, method)
        ):
            return other
    return None


def _baseline_of(entry: BankEntry, entries: Sequence[BankEntry]) -> BankEntry | None:
    """The prompt trained from scratch on the same task, language and method."""
    return _plain_task_prompt(entries, entry.task, entry.lang, entry.method, exclude=entry)


def _source_of(entry: BankEntry, entries: Sequence[BankEntry]) -> BankEntry | None:
    """The prompt a transferred prompt started from (its ``transfer.source`` "task-lang")."""
    task, _, lang = str(entry.transfer.get("source", "")).rpartition("-")
    return _plain_task_prompt(entries, task or None, lang or None, entry.method)


# -- what the writers know about a prompt ----------------------------------------------------
@dataclass(frozen=True)
class PromptInfo:
    """What the atlas writers need to know about one analysed prompt (no tensors)."""

    name: str
    task: str | None
    lang: str | None
    method: str
    path: Path
    transfer_kind: str | None = None  # "task" / "language" for a transferred prompt
    transferred: bool = False
    pair_input: bool = False  # a task whose examples have two input texts

    @classmethod
    def of(cls, entry: BankEntry) -> PromptInfo:
        return cls(
            name=entry.name,
            task=entry.task,
            lang=entry.lang,
            method=entry.method,
            path=entry.path,
            transfer_kind=entry.transfer_kind,
            transferred=bool(entry.transfer),
            pair_input=entry.task is not None and _pair_task(entry),
        )


# -- attention -------------------------------------------------------------------------------
def _layer_columns(n_layers: int) -> list[str]:
    return [f"L{i}" for i in range(n_layers)]


@dataclass
class AttentionAtlas:
    """Attention of a set of task prompts on one model: the base model's variability per head
    on each input set, each prompt's KL(prompted ‖ base) per head and their correlation."""

    model: str
    n_layers: int
    config: AnalysisConfig
    prompts: list[PromptInfo]
    variability: dict[str, AttentionVariabilityResult]  # input set → result
    kl: dict[str, AttentionChangeResult]  # prompt → result
    correlation: dict[str, CorrelationReport]  # prompt → variability vs KL
    inputs_of: dict[str, str]  # prompt → its input set


def analyze_attention(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    out: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """Variability, KL change and their correlation (see the module docstring)."""
    return write_attention(compute_attention(entries, handle, cfg, log=log), out, log=log)


def compute_attention(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    cfg: AnalysisConfig | None = None,
    *,
    log: Log = print,
) -> AttentionAtlas:
    """:class:`AttentionAtlas` of the task prompts among ``entries``; writes nothing."""
    from promptatlas.analysis.attention import (
        AttentionChange,
        AttentionVariability,
        correlate_heads,
    )
    from promptatlas.analysis.capture import run_reducers

    cfg = cfg or AnalysisConfig()
    tasks = _task_entries(entries)
    if not tasks:
        raise ValueError("no task prompts to analyse (language prompts have no task inputs)")
    inputs = _Inputs(cfg)
    result = AttentionAtlas(
        handle.name, handle.geometry.n_layers, cfg, [PromptInfo.of(e) for e in tasks], {}, {}, {},
        {},
    )  # fmt: skip
    layers = list(range(handle.geometry.n_layers))
    for group, members in _by_inputs(tasks).items():
        # One run per input set: the base model's passes are shared by all its prompts.
        batches = inputs.context(handle, members[0])
        n_tokens = 2 if members[0].task == "cg" else cfg.n_tokens
        log(f"  attention on {group}: variability + KL of {len(members)} prompts")
        var = AttentionVariability(layers, n_tokens=n_tokens)
        changes = {e.name: AttentionChange(layers, prompted=f"p:{e.name}") for e in members}
        models = {"base": _plm(handle, None, cfg)}
        models.update({f"p:{e.name}": _plm(handle, e.prompt, cfg) for e in members})
        run_reducers(models, batches, [var, *changes.values()])
        result.variability[group] = var.result()
        for e in members:
            result.inputs_of[e.name] = group
            result.kl[e.name] = changes[e.name].result()
            result.correlation[e.name] = correlate_heads(
                result.variability[group].variability, result.kl[e.name].kl, groups=cfg.layer_groups
            )
    return result


def write_attention(result: AttentionAtlas, out: str | Path, *, log: Log = print) -> dict[str, Any]:
    """The attention tables (CSV), figures, ``attention.json`` and ``summary.txt`` of
    ``result`` in ``out``; returns what ``attention.json`` holds."""
    out = Path(out)
    written = _attention_tables(result, out)
    written += _attention_figures(result, out)
    data = _attention_data(result)
    written.append(_json(out / "attention.json", data))
    written.append(_summary(out / "summary.txt", _attention_summary(result, data)))
    log(f"  attention: {len(written)} files in {out}")
    return data


def _attention_tables(result: AttentionAtlas, out: Path) -> list[Path]:
    variability, kl, meta = result.variability, result.kl, {p.name: p for p in result.prompts}
    rows: list[tuple[Any, ...]] = []
    for name, rep in result.correlation.items():
        rows.append((name, "all", "", rep.overall.r, rep.overall.p, rep.overall.n))
        for layer, c in zip(rep.layers, rep.per_layer, strict=True):
            rows.append((name, "layer", layer, c.r, c.p, c.n))
        for g, c in zip(rep.groups, rep.per_group, strict=True):
            rows.append((name, "group", f"{g[0]}-{g[-1]}", c.r, c.p, c.n))
    return [
        _csv(
            out / "variability.csv",
            ["inputs", "layer", "head", "variability"],
            (
                (g, layer, h, float(v.variability[i, h]))
                for g, v in variability.items()
                for i, layer in enumerate(v.layers)
                for h in range(v.variability.shape[1])
            ),
        ),
        _csv(
            out / "kl_heads.csv",
            ["prompt", "layer", "head", "kl"],
            (
                (name, layer, h, float(r.kl[i, h]))
                for name, r in kl.items()
                for i, layer in enumerate(r.layers)
                for h in range(r.kl.shape[1])
            ),
        ),
        _csv(
            out / "kl_per_layer.csv",
            ["prompt", "task", "lang", "method", "transfer", *_layer_columns(result.n_layers)],
            (
                (
                    n,
                    meta[n].task,
                    meta[n].lang,
                    meta[n].method,
                    meta[n].transfer_kind or "",
                    *_floats(r.per_layer),
                )
                for n, r in kl.items()
            ),
        ),
        _csv(out / "correlation.csv", ["prompt", "scope", "layers", "r", "p", "n"], rows),
    ]


def _attention_figures(result: AttentionAtlas, out: Path) -> list[Path]:
    """Variability per input set, KL curves, KL heads, correlation scatter."""
    from promptatlas.report import analysis as fig

    written = [
        fig.plot_variability(v, out / f"variability_{group}.png", title=group)
        for group, v in result.variability.items()
    ]
    style = _style(result.prompts)
    plain = [p for p in result.prompts if not p.transferred]
    curves = {p.name: _floats(result.kl[p.name].per_layer) for p in plain}
    groups = {p.name: ("pair input" if p.pair_input else "single input") for p in plain}
    if curves:
        written.append(
            fig.plot_kl_per_layer(
                curves,
                out / "kl_per_layer.png",
                styles=style,
                groups=groups,
                title=f"Attention change per layer on {result.model}",
            )
        )
        written.append(fig.plot_kl_heads({n: result.kl[n] for n in curves}, out / "kl_heads.png"))
    for kind, label in (("task", "task"), ("language", "language")):
        moved = [p for p in result.prompts if p.transfer_kind == kind]
        if moved:
            written.append(
                fig.plot_kl_per_layer(
                    {p.name: _floats(result.kl[p.name].per_layer) for p in moved},
                    out / f"kl_per_layer_after_{label}_transfer.png",
                    styles=style,
                    title=f"Attention change per layer after {label} sub-prompt transfer",
                )
            )
    for prompt in result.prompts:
        written.append(
            fig.plot_correlation(
                result.variability[result.inputs_of[prompt.name]],
                result.kl[prompt.name],
                result.correlation[prompt.name],
                out / "correlation" / f"{prompt.name.replace('/', '_')}.png",
                title=prompt.name,
            )
        )
    return written


def _attention_data(result: AttentionAtlas) -> dict[str, Any]:
    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for p in result.prompts:
        if not p.transferred:
            by_method[p.method].append(_floats(result.kl[p.name].per_layer))
    mean_curves = {
        m: [sum(c) / len(c) for c in zip(*cs, strict=True)] for m, cs in by_method.items()
    }
    return {
        "model": result.model,
        "n_layers": result.n_layers,
        "config": result.config.__dict__,
        "variability_per_layer": {g: _floats(v.per_layer) for g, v in result.variability.items()},
        "kl_per_layer": {n: _floats(r.per_layer) for n, r in result.kl.items()},
        "mean_kl_per_layer": mean_curves,
        "prompts": {
            p.name: {
                "task": p.task,
                "lang": p.lang,
                "method": p.method,
                "transfer": p.transfer_kind,
                "path": str(p.path),
            }
            for p in result.prompts
        },
        "correlation": {
            n: {"r": rep.overall.r, "p": rep.overall.p, "n": rep.overall.n}
            for n, rep in result.correlation.items()
        },
    }


def _attention_summary(result: AttentionAtlas, data: Mapping[str, Any]) -> list[str]:
    n_layers = result.n_layers
    lines = [
        f"Attention analysis of {len(result.prompts)} prompts on {result.model} "
        f"({n_layers} layers)."
    ]
    for g, v in result.variability.items():
        pl = _floats(v.per_layer)
        low, high = _argmin(pl), _argmin([-x for x in pl])
        lines.append(
            f"variability {g}: lowest at layer {low} ({pl[low]:.3f}), highest at layer {high} "
            f"({pl[high]:.3f}); thirds {_thirds(pl)}"
        )
    for m, curve in data["mean_kl_per_layer"].items():
        top = sorted(range(n_layers), key=lambda i: -curve[i])[:3]
        lines.append(
            f"{m}: mean KL per layer peaks at layers {top} (max {max(curve):.3f}); "
            f"thirds {_thirds(curve)}"
        )
    for n, rep in result.correlation.items():
        lines.append(f"corr(variability, KL) {n}: r={rep.overall.r:.3f} p={rep.overall.p:.2g}")
    return lines


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=lambda i: values[i])


def _thirds(curve: Sequence[float], fmt: str = ".3f") -> str:
    """Means of the lower, middle and upper third of a per-layer curve."""
    n = len(curve)
    parts = (curve[: n // 3], curve[n // 3 : 2 * n // 3], curve[2 * n // 3 :])
    return " / ".join(format(_mean(p), fmt) for p in parts)


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    return [_mean(list(v)) for v in zip(*curves, strict=True)]


def _gap(d: Mapping[str, Sequence[float]]) -> list[float]:
    return [g - n for g, n in zip(d["gold"], d["non_gold"], strict=True)]


# -- neurons ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnTransfer:
    """Last-layer ON between a transfer's source prompt and the target task's prompt: without
    transfer (the target's own prompt) and with it (the transferred prompt)."""

    prompt: str
    source: str
    baseline: str
    kind: str | None
    on_last_without: float
    on_last_with: float
    label: str  # "sa-en→nli-en v2"


@dataclass
class NeuronAtlas:
    """ON scores of a set of task prompts on one model: between the prompts of each method
    (methods with at least two prompts that were not transferred) and across transfers."""

    model: str
    prompts: list[PromptInfo]
    scores: dict[str, OnScores]  # method → pairwise ON per layer
    transfer: list[OnTransfer]


def analyze_neurons(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    out: str | Path,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """ON scores per layer between all task prompts of each method, and source-vs-target ON
    without and with transfer (last layer, as thesis Figures 24–25)."""
    return write_neurons(compute_neurons(entries, handle, log=log), out, log=log)


def compute_neurons(
    entries: Sequence[BankEntry], handle: ModelHandle, *, log: Log = print
) -> NeuronAtlas:
    """:class:`NeuronAtlas` of the task prompts among ``entries``; writes nothing."""
    from promptatlas.analysis.neurons import activation_states, on_score, on_scores

    tasks = _task_entries(entries)
    result = NeuronAtlas(handle.name, [PromptInfo.of(e) for e in tasks], {}, [])
    states: dict[str, torch.Tensor] = {}
    for method in sorted({e.method for e in tasks}):
        group = [e for e in tasks if e.method == method]
        fmt = TaskFormatter(handle.tokenizer, group[0].variant(), group[0].format)
        log(f"  activation states of {len(group)} {method} prompts")
        states.update(activation_states(handle, {e.name: e.prompt for e in group}, fmt))
        plain = [e for e in group if not e.transfer]
        if len(plain) >= 2:
            result.scores[method] = on_scores({e.name: states[e.name] for e in plain})
    # Source vs target, without (target trained from scratch) and with transfer.
    for entry in tasks:
        if not entry.transfer:
            continue
        source, baseline = _source_of(entry, tasks), _baseline_of(entry, tasks)
        if source is None or baseline is None:
            continue
        result.transfer.append(
            OnTransfer(
                prompt=entry.name,
                source=source.name,
                baseline=baseline.name,
                kind=entry.transfer_kind,
                on_last_without=float(on_score(states[source.name], states[baseline.name])[-1]),
                on_last_with=float(on_score(states[source.name], states[entry.name])[-1]),
                label=f"{source.task}-{source.lang}→{entry.task}-{entry.lang} {entry.method}",
            )
        )
    return result


def write_neurons(result: NeuronAtlas, out: str | Path, *, log: Log = print) -> dict[str, Any]:
    """The ON tables, figures, ``neurons.json`` and ``summary.txt`` of ``result`` in ``out``;
    returns what ``neurons.json`` holds."""
    from promptatlas.report import analysis as fig

    out = Path(out)
    written: list[Path] = []
    data: dict[str, Any] = {"model": result.model, "methods": {}, "transfer": []}
    pair_rows: list[Sequence[Any]] = []
    curve_rows: list[Sequence[Any]] = []
    for method, scores in result.scores.items():
        for kind in ("binary", "raw"):
            mean = _floats(scores.mean_over_pairs("binary" if kind == "binary" else "raw"))
            curve_rows += [(method, kind, layer, v) for layer, v in enumerate(mean)]
        for li in range(len(scores.layers)):
            for i, a in enumerate(scores.names):
                for j, b in enumerate(scores.names):
                    if i < j:
                        binary, raw = scores.binary[li, i, j], scores.raw[li, i, j]
                        pair_rows.append((method, li, a, b, float(binary), float(raw)))
        data["methods"][method] = {
            "prompts": scores.names,
            "mean_binary_per_layer": _floats(scores.mean_over_pairs("binary")),
            "mean_raw_per_layer": _floats(scores.mean_over_pairs("raw")),
        }
        written.append(fig.plot_on_scores(scores, out / f"on_scores_{method}.png", kind="binary"))
    data["transfer"] = [
        {k: v for k, v in dataclasses.asdict(t).items() if k != "label"} for t in result.transfer
    ]
    if result.transfer:
        xs = [t.on_last_without for t in result.transfer]
        ys = [t.on_last_with for t in result.transfer]
        labels = [t.label for t in result.transfer]
        written.append(fig.plot_on_transfer(xs, ys, labels, out / "on_transfer.png"))
    written.append(
        _csv(out / "on_pairs.csv", ["method", "layer", "a", "b", "binary", "raw"], pair_rows)
    )
    written.append(
        _csv(out / "on_per_layer.csv", ["method", "kind", "layer", "mean_over_pairs"], curve_rows)
    )
    written.append(_json(out / "neurons.json", data))
    written.append(_summary(out / "summary.txt", _neuron_summary(result, data)))
    log(f"  neurons: {len(written)} files in {out}")
    return data


def _neuron_summary(result: NeuronAtlas, data: Mapping[str, Any]) -> list[str]:
    lines = [f"ON scores of {len(result.prompts)} prompts on {result.model}."]
    for method, d in data["methods"].items():
        curve = d["mean_binary_per_layer"]
        lines.append(
            f"{method}: mean binary ON layer 0 {curve[0]:.3f}, layer 1 {curve[1]:.3f}, "
            f"min {min(curve):.3f} at layer {curve.index(min(curve))}, last {curve[-1]:.3f}"
        )
    if data["transfer"]:
        higher = sum(t["on_last_with"] > t["on_last_without"] for t in data["transfer"])
        lines.append(
            f"transfer: last-layer ON with transfer higher than without in {higher} of "
            f"{len(data['transfer'])} source→target pairs"
        )
    return lines


# -- geometry --------------------------------------------------------------------------------
_ISOTROPY_RUNS = ("random", "decoding", "random_all_pairs", "decoding_all_pairs")


@dataclass
class GeometryAtlas:
    """Isotropy and label space per layer of a set of task prompts on one model. Each prompt's
    results hold the runs it is compared on: "base" and "prompted", or for a transferred prompt
    "base", "before transfer" (the target's own prompt) and "after transfer"."""

    model: str
    prompts: list[PromptInfo]
    isotropy: dict[str, IsotropyResult]  # prompt → result
    label_space: dict[str, LabelSpaceResult]  # prompt → result (classification tasks only)


def analyze_geometry(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    out: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """Isotropy and label space per layer for every task prompt (base vs prompted), and for
    transferred prompts before (the target's own prompt) vs after transfer."""
    return write_geometry(compute_geometry(entries, handle, cfg, log=log), out, log=log)


def compute_geometry(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    cfg: AnalysisConfig | None = None,
    *,
    log: Log = print,
) -> GeometryAtlas:
    """:class:`GeometryAtlas` of the task prompts among ``entries``; writes nothing."""
    from promptatlas.analysis.capture import run_reducers
    from promptatlas.analysis.geometry import Isotropy, LabelSpace

    cfg = cfg or AnalysisConfig()
    tasks = _task_entries(entries)
    inputs = _Inputs(cfg)
    iso_by: dict[str, Any] = {}
    label_by: dict[str, Any] = {}
    for group, members in _by_inputs(tasks).items():
        # One run per input set: base and every prompt of that set side by side.
        runs: dict[str, SoftPrompt | None] = {"base": None}
        runs.update({e.name: e.prompt for e in members})
        log(f"  isotropy on {group}: base + {len(members)} prompts")
        models = {name: _plm(handle, prompt, cfg) for name, prompt in runs.items()}
        hidden = list(range(handle.geometry.n_layers + 1))
        iso_reducer = Isotropy(hidden, models, n_pairs=cfg.isotropy_pairs, seed=cfg.seed)
        run_reducers(models, inputs.context(handle, members[0]), [iso_reducer])
        iso = iso_reducer.result()
        ls = None
        if members[0].variant().spec.kind == "classification":
            log(f"  label space on {group}")
            ls_reducer = LabelSpace(hidden, models)
            run_reducers(models, inputs.labels(handle, members[0]), [ls_reducer])
            ls = ls_reducer.result()
        for e in members:
            iso_by[e.name], label_by[e.name] = iso, ls
    result = GeometryAtlas(handle.name, [PromptInfo.of(e) for e in tasks], {}, {})
    for entry in tasks:
        baseline = _baseline_of(entry, tasks) if entry.transfer else None
        pick = {"base": "base", "prompted": entry.name}
        if baseline is not None:
            pick = {"base": "base", "before transfer": baseline.name, "after transfer": entry.name}
        result.isotropy[entry.name] = _select_runs(iso_by[entry.name], pick, _ISOTROPY_RUNS)
        if label_by[entry.name] is not None:
            result.label_space[entry.name] = _select_runs(
                label_by[entry.name], pick, ("gold", "non_gold")
            )
    return result


def write_geometry(result: GeometryAtlas, out: str | Path, *, log: Log = print) -> dict[str, Any]:
    """The isotropy and label-space tables, figures, ``geometry.json`` and ``summary.txt`` of
    ``result`` in ``out``; returns what ``geometry.json`` holds."""
    from promptatlas.report import analysis as fig

    out = Path(out)
    iso_rows: list[Sequence[Any]] = []
    label_rows: list[Sequence[Any]] = []
    written: list[Path] = []
    data: dict[str, Any] = {"model": result.model, "isotropy": {}, "label_space": {}}
    for prompt in result.prompts:
        name = prompt.name
        iso = result.isotropy[name]
        for run in iso.random:
            for i, layer in enumerate(iso.layers):
                random, decoding = float(iso.random[run][i]), float(iso.decoding[run][i])
                iso_rows.append((name, run, layer, random, decoding))
        data["isotropy"][name] = {
            run: {"random": _floats(iso.random[run]), "decoding": _floats(iso.decoding[run])}
            for run in iso.random
        }
        safe = name.replace("/", "_")
        written.append(fig.plot_isotropy(iso, out / "isotropy" / f"{safe}.png", title=name))
        ls = result.label_space.get(name)
        if ls is None:
            continue
        for run in ls.gold:
            for i, layer in enumerate(ls.layers):
                label_rows.append(
                    (name, run, layer, float(ls.gold[run][i]), float(ls.non_gold[run][i]))
                )
        data["label_space"][name] = {
            run: {"gold": _floats(ls.gold[run]), "non_gold": _floats(ls.non_gold[run])}
            for run in ls.gold
        }
        written.append(fig.plot_label_space(ls, out / "label_space" / f"{safe}.png", title=name))
    written.append(
        _csv(
            out / "isotropy.csv",
            ["prompt", "run", "layer", "random_pairs", "decoding_vs_random"],
            iso_rows,
        )
    )
    written.append(
        _csv(out / "label_space.csv", ["prompt", "run", "layer", "gold", "non_gold"], label_rows)
    )
    written.append(_json(out / "geometry.json", data))
    written.append(_summary(out / "summary.txt", _geometry_summary(result, data)))
    log(f"  geometry: {len(written)} files in {out}")
    return data


def _geometry_summary(result: GeometryAtlas, data: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Geometry of {len(result.prompts)} prompts on {result.model} "
        "(hidden-state index 0 = embeddings)."
    ]
    lines.append("Per-layer curves summarised as means of the lower / middle / upper third:")
    plain = {p.name: p for p in result.prompts if not p.transferred}
    for method in sorted({p.method for p in plain.values()}):
        names = [n for n, p in plain.items() if p.method == method]
        for run in ("base", "prompted"):
            rnd = _mean_curve([data["isotropy"][n][run]["random"] for n in names])
            dec = _mean_curve([data["isotropy"][n][run]["decoding"] for n in names])
            lines.append(
                f"{method} {run}: isotropy (random pairs) {_thirds(rnd)}; decoding vs random "
                f"{_thirds(dec)}"
            )
            gaps = [_gap(data["label_space"][n][run]) for n in names if n in data["label_space"]]
            if gaps:
                lines.append(
                    f"{method} {run}: label gap gold − non-gold "
                    f"{_thirds(_mean_curve(gaps), '+.4f')}"
                )
    moved = [n for n in data["label_space"] if "after transfer" in data["label_space"][n]]
    if moved:
        after = [_gap(data["label_space"][n]["after transfer"])[-1] for n in moved]
        before = [_gap(data["label_space"][n]["before transfer"])[-1] for n in moved]
        wider = sum(a > b for a, b in zip(after, before, strict=True))
        lines.append(
            f"transfer: last-layer label gap after > before in {wider} of {len(moved)} "
            f"transferred prompts (mean {_mean(after):+.4f} vs {_mean(before):+.4f})"
        )
    return lines


# -- PCA -------------------------------------------------------------------------------------
@dataclass
class PcaAtlas:
    """PCA of the prompt vectors per method (v2: one panel per layer)."""

    prompts: list[PromptInfo]
    panels: dict[str, list[PcaPanel]]  # method → panels


def analyze_pca(
    entries: Sequence[BankEntry], out: str | Path, *, log: Log = print
) -> dict[str, Any]:
    """PCA of the prompt vectors per method (v2: one panel per layer); colour = task, marker
    = language; language prompts appear as task "lang"."""
    return write_pca(compute_pca(entries), out, log=log)


def compute_pca(entries: Sequence[BankEntry]) -> PcaAtlas:
    """:class:`PcaAtlas` of ``entries`` (task and language prompts); writes nothing."""
    from promptatlas.analysis.pca import prompt_pca

    result = PcaAtlas([PromptInfo.of(e) for e in entries], {})
    for method in sorted({e.method for e in entries}):
        group = [e for e in entries if e.method == method]
        result.panels[method] = prompt_pca({e.name: e.prompt for e in group})
    return result


def write_pca(result: PcaAtlas, out: str | Path, *, log: Log = print) -> dict[str, Any]:
    """The PCA figures, ``pca.csv``, ``pca.json`` and ``summary.txt`` of ``result`` in ``out``;
    returns what ``pca.json`` holds."""
    from promptatlas.report import analysis as fig

    out = Path(out)
    data: dict[str, Any] = {}
    rows: list[Sequence[Any]] = []
    written: list[Path] = []
    for method, panels in result.panels.items():
        group = [p for p in result.prompts if p.method == method]
        task_of = {p.name: (p.task or "lang") for p in group}
        lang_of = {p.name: (p.lang or "") for p in group}
        written.append(
            fig.plot_pca(panels, out / f"pca_{method}.png", task_of=task_of, lang_of=lang_of)
        )
        data[method] = [
            {
                "layer": p.layer,
                "explained_variance_ratio": [float(x) for x in p.explained_variance_ratio],
            }
            for p in panels
        ]
        for p in panels:
            layer = "" if p.layer is None else p.layer
            for name, coords in p.coords.items():
                for k, point in enumerate(coords):
                    rows.append((method, layer, name, k, *[float(c) for c in point]))
    written.append(
        _csv(out / "pca.csv", ["method", "layer", "prompt", "position", "pc1", "pc2"], rows)
    )
    written.append(_json(out / "pca.json", data))
    lines = [f"PCA of {len(result.prompts)} prompts."]
    for method, panels_ in data.items():
        first = panels_[0]["explained_variance_ratio"]
        lines.append(
            f"{method}: {len(panels_)} panel(s); explained variance of PC1+PC2 "
            f"{sum(first):.2f} (first panel)"
        )
    written.append(_summary(out / "summary.txt", lines))
    log(f"  pca: {len(written)} files in {out}")
    return data


# -- layer selection -------------------------------------------------------------------------
def select_compression_layers(
    attention_dir: str | Path,
    out_config: str | Path,
    *,
    method: str = "v2",
    size: int | None = None,
    experiment: Mapping[str, Any] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Pick peak and trough layer groups from the mean KL curve of the ``method`` prompts in
    an attention analysis, and write an experiment file that trains v1, full v2, v2 on the
    peak layers and v2 on the trough layers (thesis §5.3.2, Table 3).

    ``size``: layers per group (default half the depth, as the thesis: 12 of 24).
    ``experiment``: settings merged into the written file (tasks, langs, train, …); by
    default the tasks/languages of the analysed prompts with the quickstart's settings."""
    from promptatlas.analysis.layers import select_layers
    from promptatlas.report import analysis as fig

    attention_dir = Path(attention_dir)
    path = attention_dir / "attention.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; run `promptatlas analyze attention … --out "
            f"{attention_dir}` first"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    curves = data.get("mean_kl_per_layer", {})
    if method not in curves:
        if not curves:
            raise ValueError(f"{path} holds no KL curves")
        method = sorted(curves)[0]
    curve = curves[method]
    n_layers = int(data["n_layers"])
    selection = select_layers(curve, size=size or n_layers // 2)
    prompts = data.get("prompts", {}).values()
    tasks = sorted({p["task"] for p in prompts if p.get("task")})
    langs = sorted({p["lang"] for p in prompts if p.get("lang")})
    config: dict[str, Any] = {
        "name": "compression",
        "model": data["model"],
        "out": "results/compression",
        "tasks": tasks,
        "langs": langs,
        "seeds": [42],
        "methods": {
            "v1": {"method": "v1", "length": 20},
            "v2": {"method": "v2", "length": 20, "kv": "shared"},
            "v2-peak": {"method": "v2", "length": 20, "kv": "shared", "layers": selection.peak},
            "v2-trough": {"method": "v2", "length": 20, "kv": "shared", "layers": selection.trough},
        },
        "train": {"steps": 100, "batch_size": 8, "warmup": 0.1},
        "train_by_method": {
            "v1": {"lr": 0.1},
            "v2": {"lr": 0.01},
            "v2-peak": {"lr": 0.01},
            "v2-trough": {"lr": 0.01},
        },
        "test_limit": 200,
        **dict(experiment or {}),
    }
    header = (
        f"# v2 compression (thesis §5.3.2, Table 3): layer groups chosen from the {method} mean\n"
        f"# KL curve in {path}. peak = {selection.peak}; trough = {selection.trough};\n"
        f"# always kept: {selection.kept}. Run: promptatlas run {out_config}\n"
    )
    out_config = Path(out_config)
    out_config.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out_config, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    result = {"method": method, "selection": selection.to_dict(), "config": str(out_config)}
    _json(attention_dir / "layers.json", result)
    fig.plot_layer_selection(selection, attention_dir / "layer_selection.png")
    log(f"  layers: peak {selection.peak}, trough {selection.trough} → {out_config}")
    return result
