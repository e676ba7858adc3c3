"""Figures of the analyses of what soft prompts do inside the model (SPEC §5; thesis
Figures 10–29).

Every ``plot_*`` function takes result objects of :mod:`promptatlas.analysis` (plus names and
labels), writes one PNG atomically through :func:`~promptatlas.report.figures.save_figure`
and returns its path. Bad input (mismatched lengths or layers, unknown names) raises a
:class:`ValueError` that says what does not fit, before anything is drawn.

Conventions shared by all figures, so that figures can be read side by side:

* **colour = task**: fixed Okabe–Ito colours for the six bundled tasks (colour-blind safe),
  a stable hash-based colour from a second colour-blind-safe set for any other task;
* **marker and line style = language** (``en`` ● solid, ``ko`` ■ dashed) or, on request,
  **method** (``v1`` ▲ dotted, ``v2`` ● solid);
* prompt names in the bank's form ``task-lang-method[-sN]`` (or paths ending in one) are
  parsed for task, language and method (:func:`parse_prompt_name`); pass explicit
  :class:`PromptStyle` objects for anything else;
* layers run along the x axis (every layer is labelled up to 24 layers, every other one
  beyond); heatmaps put heads on the y axis and use viridis (perceptually uniform, readable in
  grey scale and by colour-blind readers); model runs (base / prompted / …) are black and
  then blue, vermillion, … in order.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from promptatlas.report.figures import save_figure, subplots
from promptatlas.tasks import TASKS

if TYPE_CHECKING:  # the analysis modules pull in transformers; figures only need the types
    from promptatlas.analysis.attention import (
        AttentionChangeResult,
        AttentionVariabilityResult,
        Correlation,
        CorrelationReport,
    )
    from promptatlas.analysis.geometry import IsotropyResult, LabelSpaceResult
    from promptatlas.analysis.layers import LayerSelection
    from promptatlas.analysis.neurons import OnScores
    from promptatlas.analysis.pca import PcaPanel

__all__ = [
    "LANG_LINESTYLES",
    "LANG_MARKERS",
    "METHOD_LINESTYLES",
    "METHOD_MARKERS",
    "TASK_COLOURS",
    "PromptStyle",
    "StyleSpec",
    "input_type_groups",
    "lang_marker",
    "parse_prompt_name",
    "plot_correlation",
    "plot_isotropy",
    "plot_kl_heads",
    "plot_kl_per_layer",
    "plot_label_space",
    "plot_layer_selection",
    "plot_on_scores",
    "plot_on_transfer",
    "plot_pca",
    "plot_variability",
    "prompt_style",
    "task_colour",
]

Values = Sequence[float] | np.ndarray | torch.Tensor
Encode = Literal["auto", "lang", "method", "both"]
R = TypeVar("R")

# -- palette and styles -----------------------------------------------------------------------

# Okabe & Ito (2008), minus yellow (too faint for lines on white).
TASK_COLOURS: Mapping[str, str] = {
    "sts": "#0072B2",  # blue
    "nli": "#D55E00",  # vermillion
    "sa": "#009E73",  # bluish green
    "tc": "#CC79A7",  # reddish purple
    "qa": "#E69F00",  # orange
    "cg": "#56B4E9",  # sky blue
}
# Paul Tol's "muted" set: colour-blind safe and distinct from the task colours above.
_EXTRA_COLOURS = ("#332288", "#882255", "#117733", "#999933", "#44AA99", "#AA4499", "#661100")
LANG_MARKERS: Mapping[str, str] = {"en": "o", "ko": "s"}
LANG_LINESTYLES: Mapping[str, str] = {"en": "-", "ko": "--"}
METHOD_MARKERS: Mapping[str, str] = {"v1": "^", "v2": "o"}
METHOD_LINESTYLES: Mapping[str, str] = {"v1": ":", "v2": "-"}
# Legend headings of (marker, line style) per encoding.
_HEADINGS: Mapping[str, tuple[str, str]] = {
    "lang": ("language", "language"),
    "method": ("method", "method"),
    "both": ("language", "method"),
}
_EXTRA_MARKERS = ("D", "v", "P", "X", "*", "<", ">")
_EXTRA_LINESTYLES = ("-.", ":", "--")
# Ordered things (layer groups, model runs): dark to light Okabe–Ito, then black.
_SERIES = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_MUTED = "#BBBBBB"
_PEAK, _TROUGH = "#D55E00", "#0072B2"
_CMAP = "viridis"


def _pick(options: Sequence[str], key: str) -> str:
    # crc32, not hash(): the same unknown name gets the same style in every process.
    return options[zlib.crc32(key.encode()) % len(options)]


def task_colour(task: str | None) -> str:
    """The colour of a task (fixed for the bundled tasks, stable per name otherwise)."""
    if task is None:
        return "#555555"
    return TASK_COLOURS.get(task, _pick(_EXTRA_COLOURS, task))


def lang_marker(lang: str | None) -> str:
    """The scatter marker of a language (● en, ■ ko, stable per name otherwise)."""
    if lang is None:
        return "o"
    return LANG_MARKERS.get(lang, _pick(_EXTRA_MARKERS, lang))


def _marker_of(key: str | None, kind: str) -> str:
    if key is None:
        return "o"
    table = LANG_MARKERS if kind == "lang" else METHOD_MARKERS
    return table.get(key, _pick(_EXTRA_MARKERS, key))


def _linestyle_of(key: str | None, kind: str) -> str:
    if key is None:
        return "-"
    table = LANG_LINESTYLES if kind == "lang" else METHOD_LINESTYLES
    return table.get(key, _pick(_EXTRA_LINESTYLES, key))


@dataclass(frozen=True)
class PromptStyle:
    """How one prompt is drawn. ``task``, ``marker_key`` and ``line_key`` (the language or
    method the marker and the line style show) let figures use a compact legend: one entry
    per task colour, marker and line style instead of one per prompt."""

    label: str
    colour: str
    marker: str = "o"
    linestyle: str = "-"
    task: str | None = None
    marker_key: str | None = None
    line_key: str | None = None


StyleSpec = PromptStyle | Mapping[str, str]
_DRAWING_KEYS = {"label": "label", "colour": "colour", "color": "colour", "marker": "marker",
                 "linestyle": "linestyle"}  # fmt: skip


def parse_prompt_name(name: str) -> tuple[str | None, str | None, str | None]:
    """``(task, language, method)`` read from a prompt name such as ``nli-en-v2-s0`` (the
    bank's naming) or a path ending in one; ``None`` for a part that is not recognised."""
    tokens = [t for t in re.split(r"[-_\s]+", Path(name).name.lower()) if t]
    task = next((t for t in tokens if t in TASKS), None)
    method = next((t for t in tokens if re.fullmatch(r"v\d+", t)), None)
    lang = next((t for t in tokens if t in LANG_MARKERS), None)
    if lang is None and task is not None:  # another language code right after the task
        after = tokens[tokens.index(task) + 1 :][:1]
        if after and re.fullmatch(r"[a-z]{2,3}", after[0]) and after[0] not in TASKS:
            lang = after[0]
    return task, lang, method


def prompt_style(
    name: str,
    *,
    encode: Encode = "lang",
    label: str | None = None,
    task: str | None = None,
    lang: str | None = None,
    method: str | None = None,
) -> PromptStyle:
    """The default style of a prompt: colour from its task; marker and line style from its
    language (``encode="lang"``), its method (``"method"``), or marker = language and line
    style = method (``"both"``; ``"auto"`` means ``"lang"`` for a single prompt). Task,
    language and method are parsed from ``name`` unless given."""
    parsed = parse_prompt_name(name)
    task, lang, method = task or parsed[0], lang or parsed[1], method or parsed[2]
    mode = "lang" if encode == "auto" else encode
    marker_kind = "method" if mode == "method" else "lang"
    line_kind = "lang" if mode == "lang" else "method"
    marker_key = lang if marker_kind == "lang" else method
    line_key = lang if line_kind == "lang" else method
    return PromptStyle(
        label or name,
        task_colour(task) if task else _pick(_EXTRA_COLOURS, name),
        _marker_of(marker_key, marker_kind),
        _linestyle_of(line_key, line_kind),
        task,
        marker_key,
        line_key,
    )


def _facts(name: str, spec: StyleSpec | None) -> tuple[str | None, str | None, str | None]:
    """(task, language, method) of a prompt: from a mapping spec where given, else parsed."""
    task, lang, method = parse_prompt_name(name)
    if isinstance(spec, Mapping):
        task = spec.get("task") or task
        lang = spec.get("lang") or lang
        method = spec.get("method") or method
    return task, lang, method


def _styles(
    names: Iterable[str], styles: Mapping[str, StyleSpec] | None, encode: Encode = "auto"
) -> tuple[dict[str, PromptStyle], tuple[str, str]]:
    """A style per prompt and the legend headings of (marker, line style).

    ``styles`` entries are :class:`PromptStyle` objects (used as they are) or mappings with
    any of ``task``, ``lang``, ``method`` (what to encode) and ``label``, ``colour``,
    ``marker``, ``linestyle`` (explicit drawing attributes). ``encode="auto"`` picks
    ``"both"`` when the prompts mix methods and languages, ``"method"`` when they mix
    methods only, else ``"lang"``: prompts never differ in a way the figure cannot show."""
    given = styles or {}
    names = list(names)
    mode: Encode = encode
    if mode == "auto":
        facts = [_facts(n, given.get(n)) for n in names]
        langs = {f[1] for f in facts if f[1]}
        methods = {f[2] for f in facts if f[2]}
        mode = ("both" if len(langs) > 1 else "method") if len(methods) > 1 else "lang"
    out: dict[str, PromptStyle] = {}
    for name in names:
        spec = given.get(name)
        if isinstance(spec, PromptStyle):
            out[name] = spec
            continue
        task, lang, method = _facts(name, spec)
        style = prompt_style(name, encode=mode, task=task, lang=lang, method=method)
        if isinstance(spec, Mapping):
            drawn = {_DRAWING_KEYS[k]: v for k, v in spec.items() if k in _DRAWING_KEYS}
            style = replace(style, **drawn)
        out[name] = style
    return out, _HEADINGS[mode]


def input_type_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Single- vs pair-input grouping of prompt names by their task (thesis Fig. 20: SA, TC,
    CG single; STS, NLI, QA pair). Names without a known task are left out."""
    groups: dict[str, list[str]] = {"single-input": [], "pair-input": []}
    for name in names:
        task = parse_prompt_name(name)[0]
        if task is not None:
            key = "single-input" if TASKS[task].n_inputs == 1 else "pair-input"
            groups[key].append(name)
    return {k: v for k, v in groups.items() if v}


def _run_colours(runs: Iterable[str]) -> dict[str, str]:
    """Model runs: ``base`` black, the others in series order (stable within a figure)."""
    out: dict[str, str] = {}
    others = iter(c for c in _SERIES if c != "#000000")
    for run in runs:
        if run not in out:
            out[run] = "#000000" if run == "base" else next(others, _pick(_EXTRA_COLOURS, run))
    return out


def _series_colours(n: int) -> list[str]:
    if n <= len(_SERIES):
        return list(_SERIES[:n])
    cmap = plt.get_cmap(_CMAP)
    return [str(to_hex(cmap(x))) for x in np.linspace(0.0, 0.85, n)]


# -- legends ----------------------------------------------------------------------------------


def _proxy(**kw: Any) -> Line2D:
    """A legend-only line (no data)."""
    return Line2D([], [], **kw)


def _header(text: str) -> Line2D:
    """A text-only legend entry that heads a block of entries."""
    return _proxy(linestyle="none", marker="none", label=text)


def _style_handles(
    styles: Sequence[PromptStyle], *, lines: bool, headings: tuple[str, str] = ("language",) * 2
) -> list[Any]:
    """One legend entry per prompt, or — when every prompt has a task, a marker key and a
    line key and no two share all three — one block per task colour, then the markers and
    line styles (``headings``: their titles; one combined block when they show the same)."""
    keys = [(s.task, s.marker_key, s.line_key) for s in styles]
    factorised = (
        len(styles) > 4 and all(None not in k for k in keys) and len(set(keys)) == len(keys)
    )
    if not factorised:
        return [
            _proxy(
                color=s.colour,
                marker=s.marker,
                markersize=5,
                linestyle=s.linestyle if lines else "none",
                label=s.label,
            )
            for s in styles
        ]
    grey = "0.35"
    tasks = {str(s.task): s.colour for s in reversed(styles)}  # first occurrence wins
    markers = {str(s.marker_key): (s.marker, s.linestyle) for s in reversed(styles)}
    handles: list[Any] = [_header("task")]
    for task, colour in reversed(list(tasks.items())):
        if lines:
            handles.append(_proxy(color=colour, linewidth=2.5, label=task))
        else:
            handles.append(_proxy(color=colour, marker="o", linestyle="none", label=task))
    combined = headings[0] == headings[1]
    handles.append(_header(headings[0]))
    for key, (marker, linestyle) in reversed(list(markers.items())):
        shown = linestyle if lines and combined else "none"
        handles.append(_proxy(color=grey, marker=marker, markersize=5, linestyle=shown, label=key))
    if lines and not combined:
        handles.append(_header(headings[1]))
        line_styles = {str(s.line_key): s.linestyle for s in reversed(styles)}
        for key, linestyle in reversed(list(line_styles.items())):
            handles.append(_proxy(color=grey, linewidth=1.5, linestyle=linestyle, label=key))
    return handles


def _run_legend(colours: Mapping[str, str], kind: str, solid: str, dashed: str) -> list[Any]:
    """Legend entries: one colour per model run, then what the solid and dashed lines are."""
    handles: list[Any] = [_header("model run")]
    handles += [_proxy(color=c, linewidth=2, label=run) for run, c in colours.items()]
    return [
        *handles,
        _header(kind),
        _proxy(color="0.35", marker="o", markersize=3, label=solid),
        _proxy(color="0.35", linestyle="--", label=dashed),
    ]


def _legend_right(ax: Axes, handles: Sequence[Any], **kw: Any) -> None:
    ax.legend(
        handles=list(handles),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize=8,
        frameon=False,
        **kw,
    )


# -- validation and conversion ----------------------------------------------------------------


def _array(x: Values | Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().cpu().double().numpy())
    return np.asarray(x, dtype=float)


def _curve(values: Values, n: int, what: str) -> np.ndarray:
    a = _array(values)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{what} has shape {a.shape}; expected {n} values (one per layer)")
    return a


def _matrix(values: Values, n_layers: int, what: str) -> np.ndarray:
    a = _array(values)
    if a.ndim != 2 or a.shape[0] != n_layers or a.shape[1] < 1:
        raise ValueError(f"{what} has shape {a.shape}; expected ({n_layers}, n_heads)")
    return a


def _named(results: R | Mapping[str, R], what: str) -> dict[str, R]:
    """A single result as ``{"": result}``, a mapping as a dict (non-empty)."""
    if isinstance(results, Mapping):
        named: dict[str, R] = dict(results)
        if not named:
            raise ValueError(f"no {what} results to plot")
        return named
    return {"": results}


def _of(what: str, key: str) -> str:
    return f"{what} of {key!r}" if key else what


def _common_layers(layer_lists: Iterable[Sequence[int]], what: str) -> list[int]:
    lists = [list(x) for x in layer_lists]
    if not lists or not lists[0]:
        raise ValueError(f"{what}: no layers")
    if any(x != lists[0] for x in lists[1:]):
        raise ValueError(f"{what}: the results cover different layers; plot them separately")
    return lists[0]


def _finite_max(arrays: Iterable[np.ndarray], default: float = 1.0) -> float:
    values = [float(np.max(a[np.isfinite(a)])) for a in arrays if np.isfinite(a).any()]
    top = max(values) if values else default
    return top if top > 0 else default


def _fmt_r(c: Correlation) -> str:
    if not math.isfinite(c.r):
        return "r = n/a"
    p = f"{c.p:.1e}" if c.p < 1e-3 else f"{c.p:.3f}"
    return f"r = {c.r:+.2f}, p = {p}"


def _span(layers: Sequence[int]) -> str:
    if not layers:
        return "–"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


# -- axes helpers -----------------------------------------------------------------------------


def _width(n_layers: int) -> float:
    """Figure width for a layer axis: every layer gets ~0.3 in."""
    return max(6.5, 2.5 + 0.3 * n_layers)


def _layer_axis(
    ax: Axes,
    layers: Sequence[int],
    *,
    positions: bool,
    label: str = "layer",
    max_labels: int = 24,
) -> None:
    """Integer layer ticks (every layer up to ``max_labels`` layers, every other one or
    sparser beyond). ``positions``: the data sit at 0..n-1 (heatmaps), not at the layer
    numbers."""
    step = max(1, math.ceil(len(layers) / max_labels))
    idx = list(range(0, len(layers), step))
    ticks = idx if positions else [layers[i] for i in idx]
    ax.set_xticks(ticks, labels=[str(layers[i]) for i in idx], fontsize=8)
    ax.set_xlabel(label)


def _head_heatmap(
    ax: Axes,
    values: np.ndarray,
    layers: Sequence[int],
    *,
    vmin: float = 0.0,
    vmax: float | None = None,
    annotate: bool | None = None,
) -> AxesImage:
    """Heads (y) × layers (x) heatmap of a (n_layers, n_heads) array; small grids (≤ 4 heads,
    ≤ 120 cells) carry their values."""
    data = np.asarray(values, dtype=float).T
    heads = data.shape[0]
    image = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        origin="lower",
        cmap=_CMAP,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    step = 1 if heads <= 16 else max(1, heads // 8)
    ax.set_yticks(range(0, heads, step), labels=[str(h) for h in range(0, heads, step)])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("head")
    _layer_axis(ax, layers, positions=True)
    if annotate is None:
        annotate = heads <= 4 and data.size <= 120
    if annotate:
        norm = image.norm
        for h in range(heads):
            for i in range(data.shape[1]):
                v = data[h, i]
                if np.isfinite(v):
                    dark = float(np.asarray(norm(v))) < 0.6  # viridis is dark at the low end
                    ax.text(
                        i,
                        h,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if dark else "black",
                    )
    return image


def _heatmap_height(heads: int) -> float:
    return min(4.5, 1.0 + 0.16 * heads)


def _hide_unused(axes: Sequence[Axes], used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


def _grid_shape(count: int, ncols: int | None, default: int) -> tuple[int, int]:
    cols = max(1, min(ncols or default, count))
    return math.ceil(count / cols), cols


# -- attention --------------------------------------------------------------------------------


def plot_variability(
    result: AttentionVariabilityResult | Mapping[str, AttentionVariabilityResult],
    path: str | Path,
    *,
    styles: Mapping[str, StyleSpec] | None = None,
    title: str | None = None,
) -> Path:
    """Attention variability of the base model per head (thesis Figs. 16 and 32): a heads ×
    layers heatmap and, below it, the per-layer mean over heads with the range over heads.

    A mapping of results (e.g. one per task data set) shows their mean in the heatmap and
    each data set's per-layer curve below (coloured by task)."""
    named = _named(result, "variability")
    layers = _common_layers((r.layers for r in named.values()), "variability")
    mats = [_matrix(r.variability, len(layers), _of("variability", k)) for k, r in named.items()]
    if len({m.shape for m in mats}) != 1:
        raise ValueError("variability results have different numbers of heads")
    mean = np.mean(mats, axis=0)
    n, heads = mean.shape
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(_width(n), _heatmap_height(heads) + 3.4),
        height_ratios=[_heatmap_height(heads), 2.4],
        constrained_layout=True,
    )
    image = _head_heatmap(top, mean, layers, vmax=max(_finite_max([mean]), 1e-12))
    # A colour bar above keeps the heatmap's x axis aligned with the curve's.
    fig.colorbar(image, ax=top, location="top", shrink=0.4, aspect=30, label="variability")
    top.set_xlabel("")
    x = np.arange(n)
    per_layer = np.nanmean(mean, axis=1)
    bottom.fill_between(
        x, np.nanmin(mean, 1), np.nanmax(mean, 1), color="0.85", label="range over heads"
    )
    if len(named) > 1:
        chosen, headings = _styles(named, styles)
        for (name, _), m in zip(named.items(), mats, strict=True):
            s = chosen[name]
            bottom.plot(x, m.mean(1), color=s.colour, linestyle=s.linestyle, linewidth=1, alpha=0.9)
        handles = _style_handles(list(chosen.values()), lines=True, headings=headings)
        handles.append(_proxy(color="black", linewidth=2.2, marker="o", label="mean"))
        handles.append(Patch(color="0.85", label="range over heads"))
        _legend_right(bottom, handles)
    bottom.plot(x, per_layer, color="black", linewidth=2.2, marker="o", markersize=3, label="mean")
    if len(named) == 1:
        bottom.legend(fontsize=8, frameon=False)
    bottom.set_ylabel("mean over heads")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    _layer_axis(bottom, layers, positions=True)
    detail = (
        f"mean over {len(named)} data sets"
        if len(named) > 1
        else f"{next(iter(named.values())).n_examples} inputs"
    )
    fig.suptitle(title or f"Attention variability per head, base model ({detail})", fontsize=11)
    return save_figure(fig, path)


def _group_panels(
    groups: Mapping[str, Sequence[str] | str], known: Collection[str]
) -> list[tuple[str, list[str]]]:
    """(group, members) from group → names or (all values strings) name → group."""
    members: dict[str, list[str]] = {}
    if groups and all(isinstance(v, str) for v in groups.values()):
        for name, group in groups.items():
            members.setdefault(str(group), []).append(name)
    else:
        members = {g: [m] if isinstance(m, str) else list(m) for g, m in groups.items()}
    unknown = sorted({m for g in members.values() for m in g} - set(known))
    if unknown or not members or any(not g for g in members.values()):
        raise ValueError(f"groups must be non-empty and name known curves; unknown: {unknown}")
    return list(members.items())


def plot_kl_per_layer(
    curves: Mapping[str, Values],
    path: str | Path,
    *,
    groups: Mapping[str, Sequence[str] | str] | None = None,
    styles: Mapping[str, StyleSpec] | None = None,
    encode: Encode = "auto",
    layers: Sequence[int] | None = None,
    title: str = "Attention change per layer",
    ylabel: str = "mean KL(prompted ‖ base)",
) -> Path:
    """Per-layer mean KL curves, one line per prompt (thesis Figs. 17–22): colour = task;
    marker and line style = language (``encode="lang"``), method (``"method"``), or marker =
    language and line style = method (``"both"``); ``"auto"`` picks what the prompts differ
    in. ``styles`` maps names to :class:`PromptStyle` objects or to mappings with any of
    ``task``, ``lang``, ``method``, ``label``, ``colour``, ``marker``, ``linestyle``.

    ``groups`` — group → prompt names (e.g. :func:`input_type_groups`: single- vs
    pair-input) or prompt name → group — gives one panel per group with the group mean in
    bold, plus a panel comparing the group means (prompts in no group are left out)."""
    if not curves:
        raise ValueError("no KL curves to plot")
    lengths = {name: len(_array(v).ravel()) for name, v in curves.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"KL curves have different lengths: {lengths}")
    n = next(iter(lengths.values()))
    layers = list(range(n)) if layers is None else list(layers)
    if len(layers) != n:
        raise ValueError(f"{len(layers)} layer labels for curves of {n} layers")
    values = {name: _curve(v, n, f"KL curve {name!r}") for name, v in curves.items()}
    panels = [("", list(values))] if groups is None else _group_panels(groups, values)
    chosen, headings = _styles(values, styles, encode)
    compare = groups is not None and len(panels) > 1
    rows = len(panels) + int(compare)
    fig, axes = plt.subplots(
        rows,
        1,
        sharex=True,
        sharey=True,
        squeeze=False,
        figsize=(_width(n) + 1.5, 0.6 + 2.9 * rows),
        constrained_layout=True,
    )
    axs: list[Axes] = list(axes[:, 0])
    means: dict[str, np.ndarray] = {}
    for ax, (group, members) in zip(axs, panels, strict=False):
        for name in members:
            s = chosen[name]
            ax.plot(
                layers,
                values[name],
                color=s.colour,
                linestyle=s.linestyle,
                marker=s.marker,
                markersize=3,
                linewidth=1.3,
            )
        handles = _style_handles([chosen[m] for m in members], lines=True, headings=headings)
        if groups is not None:
            means[group] = np.mean([values[m] for m in members], axis=0)
            ax.plot(layers, means[group], color="black", linewidth=2.4)
            ax.set_title(f"{group} ({len(members)} prompts)", fontsize=10, loc="left")
            handles.append(_proxy(color="black", linewidth=2.4, label="group mean"))
        _legend_right(ax, handles)
    if compare:
        ax = axs[-1]
        for (group, mean), colour in zip(means.items(), _series_colours(len(means)), strict=True):
            ax.plot(
                layers, mean, color=colour, linewidth=2.2, marker="o", markersize=3, label=group
            )
        ax.set_title("group means", fontsize=10, loc="left")
        _legend_right(ax, ax.get_legend_handles_labels()[0])
    for ax in axs:
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    _layer_axis(axs[-1], layers, positions=False)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_kl_heads(
    change_results: Mapping[str, AttentionChangeResult],
    path: str | Path,
    *,
    ncols: int | None = None,
    shared_scale: bool = True,
    title: str = "Attention change per head: KL(prompted ‖ base)",
) -> Path:
    """Per-prompt heads × layers KL heatmaps in a grid of panels (thesis Figs. 17, 33, 34).
    ``shared_scale``: one colour scale for all panels (comparable; a strongly changed prompt
    can wash out the others), else one per panel."""
    named = dict(change_results)
    if not named:
        raise ValueError("no attention-change results to plot")
    mats = {k: _matrix(r.kl, len(r.layers), _of("KL", k)) for k, r in named.items()}
    n = max(len(r.layers) for r in named.values())
    heads = max(m.shape[1] for m in mats.values())
    nrows, cols = _grid_shape(len(mats), ncols, 1 if n > 20 else 2)
    panel = (_width(n) * (1.0 if cols == 1 else 0.75), _heatmap_height(heads) + 1.0)
    fig, axes = subplots(nrows, cols, panel=panel)
    flat: list[Axes] = list(axes.ravel())
    vmax = _finite_max(mats.values())
    image = None
    for ax, (name, m) in zip(flat, mats.items(), strict=False):
        top = vmax if shared_scale else _finite_max([m])
        image = _head_heatmap(ax, m, named[name].layers, vmax=top)
        peak = _finite_max([m], default=0.0)
        ax.set_title(
            f"{name}  (max {peak:.3g}, n = {named[name].n_examples})", fontsize=9, loc="left"
        )
        if not shared_scale:
            fig.colorbar(image, ax=ax, shrink=0.8, label="KL")
    _hide_unused(flat, len(mats))
    if shared_scale and image is not None:
        fig.colorbar(image, ax=flat[: len(mats)], shrink=0.7, label="KL(prompted ‖ base)")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_correlation(
    var: AttentionVariabilityResult,
    kl: AttentionChangeResult,
    report: CorrelationReport,
    path: str | Path,
    *,
    alpha: float = 0.05,
    title: str | None = None,
) -> Path:
    """Variability vs KL per head, coloured by layer group with each group's Pearson r and p
    in the legend (thesis Fig. 19), beside the per-layer r across heads (faded and hatched
    where p ≥ ``alpha``)."""
    if list(var.layers) != list(kl.layers):
        raise ValueError(f"variability layers {var.layers} differ from KL layers {kl.layers}")
    layers = list(var.layers)
    v = _matrix(var.variability, len(layers), "variability")
    k = _matrix(kl.kl, len(layers), "KL")
    if v.shape != k.shape:
        raise ValueError(f"variability {v.shape} and KL {k.shape} have different shapes")
    if list(report.layers) != layers or len(report.per_layer) != len(layers):
        raise ValueError("the correlation report covers other layers than the results")
    if len(report.groups) != len(report.per_group):
        raise ValueError("the correlation report has a different number of groups and values")
    row = {layer: i for i, layer in enumerate(layers)}
    outside = sorted({g for group in report.groups for g in group} - set(row))
    if outside:
        raise ValueError(f"layer groups name layers {outside} that the results do not have")
    colours = _series_colours(len(report.groups))
    fig, (ax, bars) = plt.subplots(
        1,
        2,
        figsize=(7.0 + _width(len(layers)) * 0.6, 4.6),
        width_ratios=[1.0, 1.2],
        constrained_layout=True,
    )
    for group, corr, colour in zip(report.groups, report.per_group, colours, strict=True):
        idx = [row[g] for g in group]
        ax.scatter(
            v[idx].ravel(),
            k[idx].ravel(),
            s=16,
            color=colour,
            alpha=0.8,
            edgecolors="none",
            label=f"layers {_span(group)}: {_fmt_r(corr)}",
        )
    ax.set_xlabel("attention variability (base model)")
    ax.set_ylabel("KL(prompted ‖ base)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=f"all heads: {_fmt_r(report.overall)}", title_fontsize=8)
    ax.set_title("per head", fontsize=10, loc="left")
    colour_of = {g: c for group, c in zip(report.groups, colours, strict=True) for g in group}
    for i, (layer, corr) in enumerate(zip(layers, report.per_layer, strict=True)):
        significant = math.isfinite(corr.p) and corr.p < alpha
        if not math.isfinite(corr.r):
            bars.plot(i, 0, marker="x", color="0.4")
            continue
        bars.bar(
            i,
            corr.r,
            color=colour_of.get(layer, "0.5"),
            alpha=1.0 if significant else 0.35,
            hatch=None if significant else "//",
            edgecolor="0.3",
            linewidth=0.5,
        )
    bars.axhline(0, color="0.3", linewidth=0.8)
    bars.set_ylim(-1.05, 1.05)
    bars.set_ylabel("Pearson r across heads")
    bars.set_xlim(-0.6, len(layers) - 0.4)
    _layer_axis(bars, layers, positions=True)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(
        handles=[
            Patch(facecolor="0.5", edgecolor="0.3", label=f"p < {alpha:g}"),
            Patch(facecolor="0.5", edgecolor="0.3", alpha=0.35, hatch="//", label=f"p ≥ {alpha:g}"),
        ],
        fontsize=7,
        loc="lower left",
    )
    bars.set_title("per layer", fontsize=10, loc="left")
    fig.suptitle(title or "Attention variability vs attention change", fontsize=11)
    return save_figure(fig, path)


# -- activated neurons ------------------------------------------------------------------------


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_on_scores(
    on: OnScores,
    path: str | Path,
    *,
    kind: Literal["binary", "raw"] = "binary",
    ncols: int | None = None,
    title: str | None = None,
) -> Path:
    """ON scores (thesis Fig. 23): the per-layer average over all prompt pairs (with the
    range over pairs) on top, and the pairwise ON matrix of every layer in a grid below (one
    colour scale; low = task-specific layer)."""
    if kind not in ("binary", "raw"):
        raise ValueError(f"kind must be 'binary' or 'raw', got {kind!r}")
    n = len(on.names)
    if n < 2:
        raise ValueError("ON scores need at least two prompts")
    mats = _array(on.matrix(kind))
    if mats.ndim != 3 or mats.shape != (len(on.layers), n, n):
        raise ValueError(f"ON matrix has shape {mats.shape}; expected ({len(on.layers)}, {n}, {n})")
    layers = list(on.layers)
    i, j = np.triu_indices(n, k=1)
    pairs = mats[:, i, j]  # (L, n_pairs)
    nrows, cols = _grid_shape(len(layers), ncols, 6)
    cell = 1.9 if n <= 6 else 2.4
    fig = plt.figure(
        figsize=(max(_width(len(layers)), cols * cell + 1.5), 3.3 + nrows * cell),
        constrained_layout=True,
    )
    top_fig, grid_fig = cast(Any, fig.subfigures(2, 1, height_ratios=[3.0, nrows * cell]))
    ax = top_fig.subplots()
    ax.fill_between(
        layers, pairs.min(1), pairs.max(1), color="0.85", label=f"range over {pairs.shape[1]} pairs"
    )
    ax.plot(
        layers,
        pairs.mean(1),
        color="black",
        marker="o",
        markersize=3,
        linewidth=2,
        label="mean over pairs",
    )
    ax.set_ylabel(f"ON score ({kind})")
    ax.grid(alpha=0.3)
    _layer_axis(ax, layers, positions=False)
    _legend_right(ax, ax.get_legend_handles_labels()[0])
    axes = grid_fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
    flat: list[Axes] = list(axes.ravel())
    # The diagonal (a prompt with itself, always 1) is masked so that the colour scale
    # spans the pairs; one scale for all layers keeps them comparable.
    off = mats.copy()
    off[:, np.arange(n), np.arange(n)] = np.nan
    vmin, vmax = float(np.nanmin(pairs)), float(np.nanmax(pairs))
    if vmax <= vmin:
        vmin, vmax = vmin - 0.01, vmax + 0.01
    labels = [_short(x) for x in on.names] if n <= 12 else []
    image = None
    for k, (panel, layer) in enumerate(zip(flat, layers, strict=False)):
        image = panel.imshow(
            np.ma.masked_invalid(off[k]), cmap=_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest"
        )
        panel.set_title(f"layer {layer}", fontsize=8)
        panel.set_xticks(range(n) if labels else [], labels=labels, rotation=90, fontsize=6)
        panel.set_yticks(range(n) if labels else [], labels=labels, fontsize=6)
    _hide_unused(flat, len(layers))
    if image is not None:
        grid_fig.colorbar(
            image, ax=flat[: len(layers)], shrink=0.6, label=f"ON ({kind}); diagonal masked"
        )
    fig.suptitle(title or f"ON score between prompts ({kind} activation states)", fontsize=11)
    return save_figure(fig, path)


def plot_on_transfer(
    x_scores: Values,
    y_scores: Values,
    labels: Sequence[str],
    path: str | Path,
    *,
    sources: Sequence[str] | None = None,
    title: str = "ON score without vs with transfer",
    xlabel: str = "ON score without transfer",
    ylabel: str = "ON score with transfer",
) -> Path:
    """Without- vs with-transfer ON scores (thesis Figs. 24–25): one point per (source,
    target) pair labelled with ``labels`` (the targets), coloured by source task and marked
    by source language when ``sources`` is given; the y = x diagonal marks no change."""
    x, y = _array(x_scores).ravel(), _array(y_scores).ravel()
    if not len(x) == len(y) == len(labels) or (sources is not None and len(sources) != len(x)):
        counts = [len(x), len(y), len(labels)] + ([] if sources is None else [len(sources)])
        raise ValueError(f"x_scores, y_scores, labels (and sources) differ in length: {counts}")
    if len(x) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ON transfer scores must be a non-empty set of finite values")
    fig, axes = subplots(1, 1, panel=(6.4, 5.2))
    ax: Axes = axes[0, 0]
    keys = list(sources) if sources is not None else ["" for _ in labels]
    chosen = {s: prompt_style(s, label=s or "pairs") for s in dict.fromkeys(keys)}
    for src in chosen:
        pick = [i for i, s in enumerate(keys) if s == src]
        st = chosen[src]
        ax.scatter(
            x[pick],
            y[pick],
            color=st.colour if src else "#0072B2",
            marker=st.marker,
            s=36,
            edgecolors="white",
            linewidths=0.5,
            label=st.label,
        )
    for xi, yi, text in zip(x, y, labels, strict=True):
        ax.annotate(text, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7)
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    lim = (lo - pad, hi + pad)
    ax.plot(lim, lim, color="0.5", linestyle="--", linewidth=1, label="y = x (no change)")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend_right(ax, ax.get_legend_handles_labels()[0], title="source" if sources else None)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path)


# -- hidden-state geometry --------------------------------------------------------------------


def _average_runs(
    tables: Sequence[Mapping[str, Values]], n: int, what: str
) -> dict[str, np.ndarray]:
    """Per model run, the mean curve over several results (same runs in each)."""
    runs = list(tables[0])
    if any(list(t) != runs for t in tables[1:]):
        raise ValueError(f"{what}: the results have different model runs; plot them separately")
    return {
        run: np.mean([_curve(t[run], n, f"{what} of run {run!r}") for t in tables], axis=0)
        for run in runs
    }


def _summary_figure(
    n_top: int, n_entries: int, n_layers: int, *, ncols: int = 4, xlabel: str = ""
) -> tuple[Figure, list[Axes], list[Axes]]:
    """A wide top row of ``n_top`` panels (the summary) and, below, a grid of small panels
    (one per entry; none when there is only one) sharing one x label."""
    rows = math.ceil(n_entries / ncols) if n_entries > 1 else 0
    width = max(11.0, n_top * (_width(n_layers) * 0.75))
    fig = plt.figure(figsize=(width, 3.8 + 2.4 * rows), constrained_layout=True)
    if rows:
        top_fig, low_fig = cast(Any, fig.subfigures(2, 1, height_ratios=[3.8, 2.4 * rows]))
        # sharey only: with sharex, panels above an empty slot would lose their tick labels
        small = low_fig.subplots(rows, ncols, squeeze=False, sharey=True)
        low_fig.supxlabel(xlabel, fontsize=9)
        flat: list[Axes] = list(small.ravel())
        _hide_unused(flat, n_entries)
        flat = flat[:n_entries]
    else:
        top_fig, flat = fig, []
    top = top_fig.subplots(1, n_top, squeeze=False)
    return fig, list(top[0]), flat


_HIDDEN = "hidden state (0 = embeddings)"


def _hidden_axis(ax: Axes, layers: Sequence[int], *, small: bool = False) -> None:
    _layer_axis(
        ax, layers, positions=False, label="" if small else _HIDDEN, max_labels=10 if small else 24
    )


def plot_isotropy(
    result: IsotropyResult | Mapping[str, IsotropyResult],
    path: str | Path,
    *,
    exact: bool = False,
    title: str | None = None,
) -> Path:
    """Cosine-based isotropy per hidden-state layer (thesis Fig. 26): random token pairs
    (solid) and decoding token vs random token (dashed), colour = model run (base black).
    Lower = more isotropic. ``exact`` plots the exact mean over all pairs of inputs instead of
    the random-pair estimate. A mapping of results (e.g. per task) shows their mean on top and
    one small panel per entry below."""
    named = _named(result, "isotropy")
    layers = _common_layers((r.layers for r in named.values()), "isotropy")
    n = len(layers)

    def curves(r: IsotropyResult) -> tuple[Mapping[str, Values], Mapping[str, Values]]:
        return (r.random_all_pairs, r.decoding_all_pairs) if exact else (r.random, r.decoding)

    randoms = [curves(r)[0] for r in named.values()]
    decodings = [curves(r)[1] for r in named.values()]
    mean_r = _average_runs(randoms, n, "random-pair isotropy")
    mean_d = _average_runs(decodings, n, "decoding isotropy")
    if list(mean_r) != list(mean_d):
        raise ValueError("random and decoding isotropy have different model runs")
    colours = _run_colours(mean_r)
    fig, (top,), small = _summary_figure(1, len(named), n, xlabel=_HIDDEN)

    def draw(ax: Axes, rand: Mapping[str, np.ndarray], dec: Mapping[str, np.ndarray]) -> None:
        for run, colour in colours.items():
            ax.plot(layers, rand[run], color=colour, linewidth=1.8, marker="o", markersize=2.5)
            ax.plot(layers, dec[run], color=colour, linewidth=1.8, linestyle="--")
        ax.grid(alpha=0.3)

    draw(top, mean_r, mean_d)
    top.set_ylabel("mean cosine similarity")
    _hidden_axis(top, layers)
    _legend_right(top, _run_legend(colours, "pairs", "random – random", "decoding – random"))
    for ax, (name, r) in zip(small, named.items(), strict=False):
        rand, dec = curves(r)
        draw(
            ax,
            {k: _curve(v, n, "isotropy") for k, v in rand.items()},
            {k: _curve(v, n, "isotropy") for k, v in dec.items()},
        )
        ax.set_title(name, fontsize=8)
        _hidden_axis(ax, layers, small=True)
        ax.tick_params(labelsize=6)
    what = "exact mean over all pairs" if exact else "random pairs"
    scope = f"mean over {len(named)} data sets" if len(named) > 1 else next(iter(named), "")
    label = f" — {scope}" if scope else ""
    fig.suptitle(
        title or f"Cosine-based isotropy ({what}; lower = more isotropic){label}", fontsize=11
    )
    return save_figure(fig, path)


def plot_label_space(
    result: LabelSpaceResult | Mapping[str, LabelSpaceResult],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """The label space per hidden-state layer (thesis Figs. 27–29): cosine between the
    decoding token and the gold label word (solid) and a non-gold one (dashed), colour =
    model run (base black; e.g. before/after transfer as further runs), the gap shaded; beside
    it the gap gold − non-gold per run. A mapping of results shows their mean on top and each
    entry's gap in a small panel below."""
    named = _named(result, "label-space")
    layers = _common_layers((r.layers for r in named.values()), "label space")
    n = len(layers)
    gold = _average_runs([r.gold for r in named.values()], n, "gold similarity")
    other = _average_runs([r.non_gold for r in named.values()], n, "non-gold similarity")
    if list(gold) != list(other):
        raise ValueError("gold and non-gold similarities have different model runs")
    colours = _run_colours(gold)
    fig, (sims, gaps), small = _summary_figure(2, len(named), n, xlabel=_HIDDEN)
    for run, colour in colours.items():
        sims.plot(layers, gold[run], color=colour, linewidth=1.8, marker="o", markersize=2.5)
        sims.plot(layers, other[run], color=colour, linewidth=1.8, linestyle="--")
        sims.fill_between(layers, gold[run], other[run], color=colour, alpha=0.12)
        gaps.plot(
            layers,
            gold[run] - other[run],
            color=colour,
            linewidth=2,
            marker="o",
            markersize=2.5,
            label=run,
        )
    sims.set_ylabel("cosine(decoding token, label word)")
    sims.set_title("similarity", fontsize=10, loc="left")
    gaps.set_ylabel("gold − non-gold")
    gaps.set_title("gap", fontsize=10, loc="left")
    gaps.axhline(0, color="0.4", linewidth=0.8)
    _legend_right(gaps, _run_legend(colours, "label word", "gold", "non-gold"))
    for ax in (sims, gaps):
        ax.grid(alpha=0.3)
        _hidden_axis(ax, layers)
    for ax, (name, r) in zip(small, named.items(), strict=False):
        for run, colour in colours.items():
            gap = _curve(r.gold[run], n, "gold") - _curve(r.non_gold[run], n, "non-gold")
            ax.plot(layers, gap, color=colour, linewidth=1.4)
        ax.axhline(0, color="0.4", linewidth=0.6)
        ax.set_title(f"{name}: gold − non-gold", fontsize=8)
        ax.grid(alpha=0.3)
        _hidden_axis(ax, layers, small=True)
        ax.tick_params(labelsize=6)
    counts = sum(r.n_examples for r in named.values())
    scope = f"mean over {len(named)} data sets" if len(named) > 1 else f"{counts} examples"
    fig.suptitle(title or f"Label space: decoding token vs label words ({scope})", fontsize=11)
    return save_figure(fig, path)


# -- prompts ----------------------------------------------------------------------------------


def plot_pca(
    panels: Sequence[PcaPanel],
    path: str | Path,
    *,
    task_of: Mapping[str, str],
    lang_of: Mapping[str, str],
    muted: Collection[str] = (),
    ncols: int | None = None,
    title: str | None = None,
) -> Path:
    """PCA of prompt vectors (thesis Figs. 10–15, 31): one panel for v1, a grid of panels (one
    per layer) for v2; colour = task, marker = language, explained variance in each panel's
    title. ``muted`` prompts (e.g. the source sub-prompts of a transfer) are drawn grey."""
    if not panels:
        raise ValueError("no PCA panels to plot")
    names = list(dict.fromkeys(n for p in panels for n in p.names))
    missing = [n for n in names if n not in task_of or n not in lang_of]
    if missing:
        raise ValueError(f"task_of / lang_of have no entry for {missing}")
    for p in panels:
        for name in p.names:
            pts = p.coords.get(name)
            if pts is None or np.ndim(pts) != 2 or np.shape(pts)[1] < 1:
                raise ValueError(f"panel {p.layer}: coordinates of {name!r} must be (n, ≥1)")
    nrows, cols = _grid_shape(len(panels), ncols, 6)
    size = (5.6, 4.8) if len(panels) == 1 else (2.8, 2.6)
    fig, axes = subplots(nrows, cols, panel=size)
    flat: list[Axes] = list(axes.ravel())
    point = 28 if len(panels) == 1 else 12
    for ax, p in zip(flat, panels, strict=False):
        for name in p.names:
            pts = np.asarray(p.coords[name], dtype=float)
            y = pts[:, 1] if pts.shape[1] > 1 else np.zeros(len(pts))
            grey = name in muted
            ax.scatter(
                pts[:, 0],
                y,
                s=point,
                color=_MUTED if grey else task_colour(task_of[name]),
                marker=lang_marker(lang_of[name]),
                edgecolors="white",
                linewidths=0.3,
                alpha=0.6 if grey else 0.85,
                zorder=1 if grey else 2,
            )
        ratio = np.asarray(p.explained_variance_ratio, dtype=float)
        share = ", ".join(f"PC{i + 1} {100 * r:.0f}%" for i, r in enumerate(ratio[:2]))
        where = "embedding space (v1)" if p.layer is None else f"layer {p.layer}"
        ax.set_title(f"{where}: {share}", fontsize=10 if len(panels) == 1 else 7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.25)
    _hide_unused(flat, len(panels))
    flat[0].set_xlabel("PC1", fontsize=8)
    flat[0].set_ylabel("PC2", fontsize=8)
    # Language prompts may have no task or language: they get a legend entry "–".
    styles = [
        PromptStyle(
            n,
            task_colour(task_of[n]),
            lang_marker(lang_of[n]),
            "-",
            task_of[n] or "–",
            lang_of[n] or "–",
            lang_of[n] or "–",
        )
        for n in names
        if n not in muted
    ]
    handles = _style_handles(_distinct(styles), lines=False)
    if muted:
        handles.append(_proxy(color=_MUTED, marker="o", linestyle="none", label="muted"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    what = "v1 prompts" if all(p.layer is None for p in panels) else "v2 prompts per layer"
    fig.suptitle(title or f"PCA of {what} ({len(names)} prompts)", fontsize=11)
    return save_figure(fig, path)


def _distinct(styles: Sequence[PromptStyle]) -> list[PromptStyle]:
    """One style per (task, language): PCA points of several seeds share a legend entry."""
    seen: dict[tuple[str | None, str | None], PromptStyle] = {}
    for s in styles:
        seen.setdefault((s.task, s.marker_key), s)
    out = list(seen.values())
    # Few entries get a per-entry legend: relabel so that each reads "task, lang".
    if len(out) <= 4:
        return [replace(s, label=f"{s.task}, {s.marker_key}") for s in out]
    return out


# -- layer selection --------------------------------------------------------------------------


def plot_layer_selection(
    selection: LayerSelection,
    path: str | Path,
    *,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    ylabel: str = "mean KL(prompted ‖ base)",
) -> Path:
    """The per-layer curve with its local peaks (▲) and troughs (▼), the layers kept in both
    groups shaded, and below it which layers the peak and the trough group train (thesis
    §5.3.2, Table 3)."""
    curve = _array(selection.curve).ravel()
    n = len(curve)
    if n == 0:
        raise ValueError("the layer selection has an empty curve")
    names = list(range(n)) if layers is None else list(layers)
    if len(names) != n:
        raise ValueError(f"{len(names)} layer labels for a curve of {n} layers")
    for field in ("peak", "trough", "peaks", "troughs", "kept"):
        bad = [i for i in getattr(selection, field) if not 0 <= i < n]
        if bad:
            raise ValueError(f"selection.{field} has layers {bad} outside 0..{n - 1}")
    fig, (ax, strip) = plt.subplots(
        2,
        1,
        sharex=True,
        height_ratios=[3.0, 1.0],
        figsize=(_width(n) + 1.5, 4.8),
        constrained_layout=True,
    )
    x = np.arange(n)
    for k, i in enumerate(selection.kept):
        ax.axvspan(
            i - 0.5, i + 0.5, color="0.9", zorder=0, label="kept in both groups" if k == 0 else None
        )
    ax.plot(x, curve, color="0.25", marker="o", markersize=3, linewidth=1.6, label="curve")
    for idx, marker, colour, label in (
        (selection.peaks, "^", _PEAK, "local peak"),
        (selection.troughs, "v", _TROUGH, "local trough"),
    ):
        if idx:
            ax.scatter(idx, curve[idx], marker=marker, s=70, color=colour, zorder=3, label=label)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _legend_right(ax, ax.get_legend_handles_labels()[0])
    for row, (members, colour, label) in enumerate(
        ((selection.trough, _TROUGH, "trough group"), (selection.peak, _PEAK, "peak group"))
    ):
        strip.scatter(members, [row] * len(members), marker="s", s=60, color=colour, label=label)
    strip.set_yticks(
        [0, 1], labels=[f"trough ({len(selection.trough)})", f"peak ({len(selection.peak)})"]
    )
    strip.set_ylim(-0.6, 1.6)
    strip.set_xlim(-0.6, n - 0.4)
    strip.grid(axis="x", alpha=0.3)
    _layer_axis(strip, names, positions=True)
    fig.suptitle(title or "Layer selection for v2 compression: peak and trough groups", fontsize=11)
    return save_figure(fig, path)
