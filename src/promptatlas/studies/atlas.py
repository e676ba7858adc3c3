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

from promptatlas.bank import (
    PromptMetadata,
    list_prompts,
    load_prompt,
)
from promptatlas.configtools import ConfigBase, ConfigError, Precision
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.io import write_csv_atomic, write_json_atomic, write_text_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.prompts import SoftPrompt
from promptatlas.tasks import Example, TaskVariant, get_task, load_split

__all__ = [
    "AnalysisConfig",
    "BankEntry",
    "analyze_attention",
    "analyze_geometry",
    "analyze_neurons",
    "analyze_pca",
    "load_bank",
    "select_compression_layers",
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


def _style(entries: Sequence[BankEntry]) -> dict[str, dict[str, str]]:
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


# -- attention -------------------------------------------------------------------------------
def analyze_attention(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    out: str | Path,
    cfg: AnalysisConfig | None = None,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """Variability, KL change and their correlation (see the module docstring)."""
    from promptatlas.analysis.attention import (
        AttentionChange,
        AttentionVariability,
        correlate_heads,
    )
    from promptatlas.analysis.capture import run_reducers
    from promptatlas.report import analysis as fig

    cfg = cfg or AnalysisConfig()
    out = Path(out)
    tasks = _task_entries(entries)
    if not tasks:
        raise ValueError("no task prompts to analyse (language prompts have no task inputs)")
    inputs = _Inputs(cfg)
    variability: dict[str, Any] = {}
    kl: dict[str, Any] = {}
    corr: dict[str, Any] = {}
    group_of: dict[str, str] = {}
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
        variability[group] = var.result()
        for e in members:
            group_of[e.name] = group
            kl[e.name] = changes[e.name].result()
            corr[e.name] = correlate_heads(
                variability[group].variability, kl[e.name].kl, groups=cfg.layer_groups
            )
    n_layers = handle.geometry.n_layers
    written: list[Path] = []
    written.append(
        _csv(
            out / "variability.csv",
            ["inputs", "layer", "head", "variability"],
            (
                (g, layer, h, float(v.variability[i, h]))
                for g, v in variability.items()
                for i, layer in enumerate(v.layers)
                for h in range(v.variability.shape[1])
            ),
        )
    )
    written.append(
        _csv(
            out / "kl_heads.csv",
            ["prompt", "layer", "head", "kl"],
            (
                (name, layer, h, float(r.kl[i, h]))
                for name, r in kl.items()
                for i, layer in enumerate(r.layers)
                for h in range(r.kl.shape[1])
            ),
        )
    )
    meta = {e.name: e for e in tasks}
    written.append(
        _csv(
            out / "kl_per_layer.csv",
            ["prompt", "task", "lang", "method", "transfer", *[f"L{i}" for i in range(n_layers)]],
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
        )
    )
    rows = []
    for name, rep in corr.items():
        rows.append((name, "all", "", rep.overall.r, rep.overall.p, rep.overall.n))
        for layer, c in zip(rep.layers, rep.per_layer, strict=True):
            rows.append((name, "layer", layer, c.r, c.p, c.n))
        for g, c in zip(rep.groups, rep.per_group, strict=True):
            rows.append((name, "group", f"{g[0]}-{g[-1]}", c.r, c.p, c.n))
    written.append(
        _csv(out / "correlation.csv", ["prompt", "scope", "layers", "r", "p", "n"], rows)
    )
    # Figures: variability per input set, KL curves, KL heads, correlation scatter.
    for group, v in variability.items():
        written.append(fig.plot_variability(v, out / f"variability_{group}.png", title=group))
    style = _style(tasks)
    plain = [e for e in tasks if not e.transfer]
    curves = {e.name: _floats(kl[e.name].per_layer) for e in plain}
    groups = {e.name: ("pair input" if _pair_task(e) else "single input") for e in plain}
    if curves:
        written.append(
            fig.plot_kl_per_layer(
                curves,
                out / "kl_per_layer.png",
                styles=style,
                groups=groups,
                title=f"Attention change per layer on {handle.name}",
            )
        )
        written.append(fig.plot_kl_heads({n: kl[n] for n in curves}, out / "kl_heads.png"))
    for kind, label in (("task", "task"), ("language", "language")):
        moved = [e for e in tasks if e.transfer_kind == kind]
        if moved:
            written.append(
                fig.plot_kl_per_layer(
                    {e.name: _floats(kl[e.name].per_layer) for e in moved},
                    out / f"kl_per_layer_after_{label}_transfer.png",
                    styles=style,
                    title=f"Attention change per layer after {label} sub-prompt transfer",
                )
            )
    for entry in tasks:
        written.append(
            fig.plot_correlation(
                variability[group_of[entry.name]],
                kl[entry.name],
                corr[entry.name],
                out / "correlation" / f"{entry.name.replace('/', '_')}.png",
                title=entry.name,
            )
        )
    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for e in plain:
        by_method[e.method].append(curves[e.name])
    mean_curves = {
        m: [sum(c) / len(c) for c in zip(*cs, strict=True)] for m, cs in by_method.items()
    }
    data = {
        "model": handle.name,
        "n_layers": n_layers,
        "config": cfg.__dict__,
        "variability_per_layer": {g: _floats(v.per_layer) for g, v in variability.items()},
        "kl_per_layer": {n: _floats(r.per_layer) for n, r in kl.items()},
        "mean_kl_per_layer": mean_curves,
        "prompts": {
            e.name: {
                "task": e.task,
                "lang": e.lang,
                "method": e.method,
                "transfer": e.transfer_kind,
                "path": str(e.path),
            }
            for e in tasks
        },
        "correlation": {
            n: {"r": rep.overall.r, "p": rep.overall.p, "n": rep.overall.n}
            for n, rep in corr.items()
        },
    }
    written.append(_json(out / "attention.json", data))
    lines = [f"Attention analysis of {len(tasks)} prompts on {handle.name} ({n_layers} layers)."]
    for g, v in variability.items():
        pl = _floats(v.per_layer)
        low, high = _argmin(pl), _argmin([-x for x in pl])
        lines.append(
            f"variability {g}: lowest at layer {low} ({pl[low]:.3f}), highest at layer {high} "
            f"({pl[high]:.3f}); thirds {_thirds(pl)}"
        )
    for m, curve in mean_curves.items():
        top = sorted(range(n_layers), key=lambda i: -curve[i])[:3]
        lines.append(
            f"{m}: mean KL per layer peaks at layers {top} (max {max(curve):.3f}); "
            f"thirds {_thirds(curve)}"
        )
    for n, rep in corr.items():
        lines.append(f"corr(variability, KL) {n}: r={rep.overall.r:.3f} p={rep.overall.p:.2g}")
    written.append(_summary(out / "summary.txt", lines))
    log(f"  attention: {len(written)} files in {out}")
    return data


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
def analyze_neurons(
    entries: Sequence[BankEntry],
    handle: ModelHandle,
    out: str | Path,
    *,
    log: Log = print,
) -> dict[str, Any]:
    """ON scores per layer between all task prompts of each method, and source-vs-target ON
    without and with transfer (last layer, as thesis Figures 24–25)."""
    from promptatlas.analysis.neurons import activation_states, on_score, on_scores
    from promptatlas.report import analysis as fig

    out = Path(out)
    tasks = _task_entries(entries)
    written: list[Path] = []
    data: dict[str, Any] = {"model": handle.name, "methods": {}, "transfer": []}
    pair_rows: list[Sequence[Any]] = []
    curve_rows: list[Sequence[Any]] = []
    states: dict[str, torch.Tensor] = {}
    for method in sorted({e.method for e in tasks}):
        group = [e for e in tasks if e.method == method]
        fmt = TaskFormatter(handle.tokenizer, group[0].variant(), group[0].format)
        log(f"  activation states of {len(group)} {method} prompts")
        states.update(activation_states(handle, {e.name: e.prompt for e in group}, fmt))
        plain = [e for e in group if not e.transfer]
        if len(plain) < 2:
            continue
        scores = on_scores({e.name: states[e.name] for e in plain})
        for kind in ("binary", "raw"):
            mean = _floats(scores.mean_over_pairs("binary" if kind == "binary" else "raw"))
            curve_rows += [(method, kind, layer, v) for layer, v in enumerate(mean)]
        for li in range(len(scores.layers)):
            for i, a in enumerate(scores.names):
                for j, b in enumerate(scores.names):
                    if i < j:
                        pair_rows.append(
                            (
                                method,
                                li,
                                a,
                                b,
                                float(scores.binary[li, i, j]),
                                float(scores.raw[li, i, j]),
                            )
                        )
        data["methods"][method] = {
            "prompts": scores.names,
            "mean_binary_per_layer": _floats(scores.mean_over_pairs("binary")),
            "mean_raw_per_layer": _floats(scores.mean_over_pairs("raw")),
        }
        written.append(fig.plot_on_scores(scores, out / f"on_scores_{method}.png", kind="binary"))
    # Source vs target, without (target trained from scratch) and with transfer.
    xs: list[float] = []
    ys: list[float] = []
    labels: list[str] = []
    for entry in tasks:
        if not entry.transfer:
            continue
        source, baseline = _source_of(entry, tasks), _baseline_of(entry, tasks)
        if source is None or baseline is None:
            continue
        without = float(on_score(states[source.name], states[baseline.name])[-1])
        with_t = float(on_score(states[source.name], states[entry.name])[-1])
        xs.append(without)
        ys.append(with_t)
        labels.append(f"{source.task}-{source.lang}→{entry.task}-{entry.lang} {entry.method}")
        data["transfer"].append(
            {
                "prompt": entry.name,
                "source": source.name,
                "baseline": baseline.name,
                "kind": entry.transfer_kind,
                "on_last_without": without,
                "on_last_with": with_t,
            }
        )
    if xs:
        written.append(fig.plot_on_transfer(xs, ys, labels, out / "on_transfer.png"))
    written.append(
        _csv(out / "on_pairs.csv", ["method", "layer", "a", "b", "binary", "raw"], pair_rows)
    )
    written.append(
        _csv(out / "on_per_layer.csv", ["method", "kind", "layer", "mean_over_pairs"], curve_rows)
    )
    written.append(_json(out / "neurons.json", data))
    lines = [f"ON scores of {len(tasks)} prompts on {handle.name}."]
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
    written.append(_summary(out / "summary.txt", lines))
    log(f"  neurons: {len(written)} files in {out}")
    return data


# -- geometry --------------------------------------------------------------------------------
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
    from promptatlas.analysis.capture import run_reducers
    from promptatlas.analysis.geometry import Isotropy, LabelSpace
    from promptatlas.report import analysis as fig

    cfg = cfg or AnalysisConfig()
    out = Path(out)
    tasks = _task_entries(entries)
    inputs = _Inputs(cfg)
    iso_rows: list[Sequence[Any]] = []
    label_rows: list[Sequence[Any]] = []
    written: list[Path] = []
    data: dict[str, Any] = {"model": handle.name, "isotropy": {}, "label_space": {}}
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
    for entry in tasks:
        baseline = _baseline_of(entry, tasks) if entry.transfer else None
        pick = {"base": "base", "prompted": entry.name}
        if baseline is not None:
            pick = {"base": "base", "before transfer": baseline.name, "after transfer": entry.name}
        iso = _select_runs(iso_by[entry.name], pick, ("random", "decoding", "random_all_pairs",
                                                      "decoding_all_pairs"))  # fmt: skip
        for run in iso.random:
            for i, layer in enumerate(iso.layers):
                iso_rows.append(
                    (entry.name, run, layer, float(iso.random[run][i]), float(iso.decoding[run][i]))
                )
        data["isotropy"][entry.name] = {
            run: {"random": _floats(iso.random[run]), "decoding": _floats(iso.decoding[run])}
            for run in iso.random
        }
        safe = entry.name.replace("/", "_")
        written.append(fig.plot_isotropy(iso, out / "isotropy" / f"{safe}.png", title=entry.name))
        if label_by[entry.name] is None:
            continue
        ls = _select_runs(label_by[entry.name], pick, ("gold", "non_gold"))
        for run in ls.gold:
            for i, layer in enumerate(ls.layers):
                label_rows.append(
                    (entry.name, run, layer, float(ls.gold[run][i]), float(ls.non_gold[run][i]))
                )
        data["label_space"][entry.name] = {
            run: {"gold": _floats(ls.gold[run]), "non_gold": _floats(ls.non_gold[run])}
            for run in ls.gold
        }
        written.append(
            fig.plot_label_space(ls, out / "label_space" / f"{safe}.png", title=entry.name)
        )
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
    lines = [
        f"Geometry of {len(tasks)} prompts on {handle.name} (hidden-state index 0 = embeddings)."
    ]
    lines.append("Per-layer curves summarised as means of the lower / middle / upper third:")
    plain = {e.name: e for e in tasks if not e.transfer}
    for method in sorted({e.method for e in plain.values()}):
        names = [n for n, e in plain.items() if e.method == method]
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
    written.append(_summary(out / "summary.txt", lines))
    log(f"  geometry: {len(written)} files in {out}")
    return data


# -- PCA -------------------------------------------------------------------------------------
def analyze_pca(
    entries: Sequence[BankEntry], out: str | Path, *, log: Log = print
) -> dict[str, Any]:
    """PCA of the prompt vectors per method (v2: one panel per layer); colour = task, marker
    = language; language prompts appear as task "lang"."""
    from promptatlas.analysis.pca import prompt_pca
    from promptatlas.report import analysis as fig

    out = Path(out)
    data: dict[str, Any] = {}
    rows: list[Sequence[Any]] = []
    written: list[Path] = []
    for method in sorted({e.method for e in entries}):
        group = [e for e in entries if e.method == method]
        if len(group) < 1:
            continue
        panels = prompt_pca({e.name: e.prompt for e in group})
        task_of = {e.name: (e.task or "lang") for e in group}
        lang_of = {e.name: (e.lang or "") for e in group}
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
            for name, coords in p.coords.items():
                for k, point in enumerate(coords):
                    rows.append(
                        (
                            method,
                            "" if p.layer is None else p.layer,
                            name,
                            k,
                            *[float(c) for c in point],
                        )
                    )
    written.append(
        _csv(out / "pca.csv", ["method", "layer", "prompt", "position", "pc1", "pc2"], rows)
    )
    written.append(_json(out / "pca.json", data))
    lines = [f"PCA of {len(entries)} prompts."]
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
