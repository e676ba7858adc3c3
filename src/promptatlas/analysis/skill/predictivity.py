"""Neuron predictivity and skill neurons (Wang et al. 2022; spec §A1–A2).

Per neuron (l, i) and readout position:

* the threshold a_bsl is the mean of a over the *training* split;
* on a held-out split, a neuron predicts the label by ``a > a_bsl`` (strict); its accuracy
  Acc gives ``Pred = max(Acc, 1 − Acc)`` (a neuron that fires for the negative class is as
  predictive as one that fires for the positive class: an inhibitory neuron);
* multi-class tasks are decomposed into binary sub-tasks: by default one-vs-rest, each scored
  by balanced accuracy ``BA = ½(TPR + TNR)`` with ``Pred = max(BA, 1 − BA)``, then averaged over
  the sub-tasks (``aggregate="max"`` takes the best); the reference decomposition of 3-class
  tasks (positive-vs-negative plus neutral-vs-rest, both class-balanced) is
  :func:`reference_subtasks`. A sub-task's threshold is the training mean over the examples of
  its own classes (for one-vs-rest: all of them);
* the best readout position is taken per seed, then seeds of the prompt are averaged:
  ``Pred = mean_r max_pos Pred_r``.

Everything streams: the training pass keeps per-class sums of the states, the held-out pass
per-class counts of ``a > a_bsl``, so memory is O(classes · positions · L · D) whatever the
number of examples.

Skill neurons are the top fraction p by predictivity, per layer (the reference) or over all
layers, in a stable order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats

from promptatlas.analysis.capture import AnalysisBatch, context_batches
from promptatlas.analysis.skill.states import (
    NeuronRead,
    iterate_batches,
    n_readouts,
    read_neurons,
    token_sums,
)
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example

__all__ = [
    "NeuronActivations",
    "Predictivity",
    "PredictivityAccumulator",
    "SkillNeurons",
    "SkillSimilarity",
    "SubTask",
    "default_subtasks",
    "example_labels",
    "least_predictive",
    "neuron_activations",
    "neuron_predictivity",
    "one_vs_rest",
    "predictivity_correlation",
    "predictivity_from_batches",
    "random_control",
    "reference_subtasks",
    "seed_average",
    "select_count",
    "select_skill_neurons",
    "simple_predictivity",
    "skill_overlap",
    "skill_similarity",
]

Scope = Literal["layer", "global"]
Batches = Iterable[AnalysisBatch] | Callable[[], Iterable[AnalysisBatch]]


# -- sub-tasks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubTask:
    """A binary sub-task: examples of ``positive`` classes vs examples of ``negative`` classes
    (class indices); other classes are ignored. ``balanced`` scores it by balanced accuracy."""

    positive: tuple[int, ...]
    negative: tuple[int, ...]
    balanced: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise ValueError("a sub-task needs positive and negative classes")
        if set(self.positive) & set(self.negative):
            raise ValueError(f"sub-task {self.name!r}: a class is both positive and negative")

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted((*self.positive, *self.negative)))


def one_vs_rest(labels: Sequence[str]) -> list[SubTask]:
    """One balanced sub-task per class: that class vs every other."""
    n = len(labels)
    return [
        SubTask((c,), tuple(j for j in range(n) if j != c), True, f"{labels[c]}-vs-rest")
        for c in range(n)
    ]


def default_subtasks(labels: Sequence[str], *, binary_metric: str = "accuracy") -> list[SubTask]:
    """Binary tasks: one sub-task scored by accuracy (``binary_metric="balanced"``: balanced
    accuracy); more classes: one-vs-rest with balanced accuracy."""
    if len(labels) < 2:
        raise ValueError("predictivity needs at least two labels")
    if binary_metric not in ("accuracy", "balanced"):
        raise ValueError(f"binary_metric must be accuracy or balanced, got {binary_metric!r}")
    if len(labels) == 2:
        return [SubTask((1,), (0,), binary_metric == "balanced", f"{labels[1]}-vs-{labels[0]}")]
    return one_vs_rest(labels)


def reference_subtasks(
    labels: Sequence[str], positive: str, negative: str, neutral: str
) -> list[SubTask]:
    """The reference decomposition of a 3-class task: positive-vs-negative, then
    neutral-vs-rest, both class-balanced (e.g. MNLI → ``-pn`` and ``-neu``)."""
    index = {lab: i for i, lab in enumerate(labels)}
    missing = [x for x in (positive, negative, neutral) if x not in index]
    if missing:
        raise ValueError(f"labels {missing} are not among {list(labels)}")
    p, n, u = index[positive], index[negative], index[neutral]
    return [
        SubTask((p,), (n,), True, f"{positive}-vs-{negative}"),
        SubTask((u,), (p, n), True, f"{neutral}-vs-rest"),
    ]


# -- the arithmetic -------------------------------------------------------------------------


def _metric(
    above: np.ndarray, n_class: np.ndarray, sub: SubTask
) -> np.ndarray:  # above: (C, ...) counts of a > threshold per class
    pos_above = above[list(sub.positive)].sum(0)
    neg_above = above[list(sub.negative)].sum(0)
    n_pos = float(n_class[list(sub.positive)].sum())
    n_neg = float(n_class[list(sub.negative)].sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"sub-task {sub.name or sub}: the held-out split has no example of its "
            f"{'positive' if n_pos == 0 else 'negative'} classes"
        )
    if sub.balanced:
        m = 0.5 * (pos_above / n_pos + (n_neg - neg_above) / n_neg)
    else:
        m = (pos_above + (n_neg - neg_above)) / (n_pos + n_neg)
    return np.maximum(m, 1.0 - m)


def simple_predictivity(
    train: Sequence[float] | np.ndarray,
    dev: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    balanced: bool = False,
) -> np.ndarray:
    """Predictivity of binary labels (0/1) computed directly (no streaming): thresholds are
    the training means (axis 0), predictions ``dev > threshold``. Works on any trailing shape;
    the reference against which the streaming computation is tested."""
    tr = np.asarray(train, dtype=np.float64)
    dv = np.asarray(dev, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    threshold = tr.mean(0)
    pred = dv > threshold
    y = y.reshape((-1,) + (1,) * (dv.ndim - 1))
    if balanced:
        tpr = (pred & y).sum(0) / y.sum()
        tnr = (~pred & ~y).sum(0) / (~y).sum()
        m = 0.5 * (tpr + tnr)
    else:
        m = (pred == y).mean(0)
    out: np.ndarray = np.maximum(m, 1.0 - m)
    return out


def seed_average(per_seed: Sequence[np.ndarray | Sequence[float]]) -> np.ndarray:
    """``mean_r max_pos Pred_r``: each seed's predictivities have the readout positions on
    axis 0; the best position is taken per seed, then seeds are averaged."""
    if not per_seed:
        raise ValueError("no seeds to average")
    best = [np.asarray(p, dtype=np.float64).max(axis=0) for p in per_seed]
    out: np.ndarray = np.mean(np.stack(best), axis=0)
    return out


class PredictivityAccumulator:
    """Streaming predictivity for one prompt (one seed) and a fixed set of layers.

    Feed the training split with :meth:`add_train` (per-class sums of the states), call
    :meth:`finish_train`, feed the held-out split with :meth:`add_dev` (per-class counts of
    ``a > threshold``), then :meth:`result`. States are (B, P, D) per layer."""

    def __init__(self, n_classes: int, subtasks: Sequence[SubTask], layers: Sequence[int]) -> None:
        self.n_classes = n_classes
        self.subtasks = list(subtasks)
        for s in self.subtasks:
            if max(s.classes) >= n_classes:
                raise ValueError(f"sub-task {s.name!r} names a class ≥ {n_classes}")
        self.layers = list(layers)
        self.groups = sorted({s.classes for s in self.subtasks})
        self.sums: dict[int, torch.Tensor] = {}  # layer → (C, P, D) float64
        self.token_sum: dict[int, torch.Tensor] = {}  # layer → (D,)
        self.token_count: dict[int, int] = {}
        self._n_train: dict[int, np.ndarray] = {}  # layer → examples per class
        self._n_dev: dict[int, np.ndarray] = {}
        self.thresholds: dict[int, torch.Tensor] = {}  # layer → (G, P, D)
        self.above: dict[int, torch.Tensor] = {}  # layer → (G, C, P, D) int64

    def add_train(self, layer: int, states: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of one layer's training states (B, P, D) with their class indices."""
        x = states.detach().to("cpu", torch.float64)
        y = labels.to("cpu", torch.long)
        if layer not in self.sums:
            self.sums[layer] = torch.zeros((self.n_classes, *x.shape[1:]), dtype=torch.float64)
            self._n_train[layer] = np.zeros(self.n_classes, dtype=np.int64)
        self.sums[layer].index_add_(0, y, x)
        self._n_train[layer] += np.bincount(y.numpy(), minlength=self.n_classes)

    def add_tokens(self, layer: int, total: torch.Tensor, count: int) -> None:
        prev = self.token_sum.get(layer)
        self.token_sum[layer] = total.cpu() if prev is None else prev + total.cpu()
        self.token_count[layer] = self.token_count.get(layer, 0) + count

    def finish_train(self) -> None:
        missing = [
            self.layers[j] for j in range(len(self.layers)) if self.layers[j] not in self.sums
        ]
        if missing:
            raise ValueError(f"no training states for layers {missing}")
        n_train = self.n_train
        for layer, sums in self.sums.items():
            per_group = []
            for g in self.groups:
                n = float(n_train[list(g)].sum())
                if n == 0:
                    raise ValueError("the training split has no example of a sub-task's classes")
                per_group.append(sums[list(g)].sum(0) / n)
            self.thresholds[layer] = torch.stack(per_group)

    @staticmethod
    def _same(counts: dict[int, np.ndarray], what: str) -> np.ndarray:
        values = list(counts.values())
        if not values:
            raise ValueError(f"no {what} examples")
        if any(not np.array_equal(v, values[0]) for v in values[1:]):
            raise ValueError(f"the layers saw different {what} examples")
        return values[0]

    @property
    def n_train(self) -> np.ndarray:
        """Training examples per class."""
        return self._same(self._n_train, "training")

    @property
    def n_dev(self) -> np.ndarray:
        """Held-out examples per class."""
        return self._same(self._n_dev, "held-out")

    def add_dev(self, layer: int, states: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch of one layer's held-out states (B, P, D) with their class indices."""
        if not self.thresholds:
            raise RuntimeError("call finish_train() before add_dev()")
        x = states.detach().to("cpu", torch.float64)  # (B, P, D)
        y = labels.to("cpu", torch.long)
        thr = self.thresholds[layer]  # (G, P, D)
        if layer not in self.above:
            self.above[layer] = torch.zeros(
                (len(self.groups), self.n_classes, *x.shape[1:]), dtype=torch.long
            )
            self._n_dev[layer] = np.zeros(self.n_classes, dtype=np.int64)
        for gi in range(len(self.groups)):
            self.above[layer][gi].index_add_(0, y, (x > thr[gi]).long())
        self._n_dev[layer] += np.bincount(y.numpy(), minlength=self.n_classes)

    def result(self) -> np.ndarray:
        """Per sub-task predictivity (S, P, L, D)."""
        out = []
        n_dev = self.n_dev
        for s in self.subtasks:
            gi = self.groups.index(s.classes)
            per_layer = [
                _metric(self.above[layer][gi].numpy().astype(np.float64), n_dev, s)
                for layer in self.layers
            ]
            out.append(np.stack(per_layer, axis=1))  # (P, L, D)
        return np.stack(out)

    def train_mean(self) -> np.ndarray:
        """Training mean of the states over all classes (P, L, D)."""
        n = float(self.n_train.sum())
        return np.stack([(self.sums[layer].sum(0) / n).numpy() for layer in self.layers], axis=1)

    def token_mean(self) -> np.ndarray:
        """Mean over every processed training token (L, D) (NaN where none was recorded)."""
        rows = []
        for layer in self.layers:
            total = self.token_sum.get(layer)
            count = self.token_count.get(layer, 0)
            if total is None or count == 0:
                rows.append(np.full(self.sums[layer].shape[-1], np.nan))
            else:
                rows.append((total / count).numpy())
        return np.stack(rows)


# -- results --------------------------------------------------------------------------------


@dataclass
class Predictivity:
    """Predictivity of every FFN neuron of the chosen layers (spec §A1).

    ``values`` (L, D): seed-averaged predictivity. ``per_seed`` (R, L, D): each seed's best
    position. ``per_subtask`` (R, S, L, D): each sub-task's predictivity (best position).
    ``train_mean`` (R, P, L, D): the thresholds over all classes (a_bsl, per readout
    position). ``token_mean`` (R, L, D): the mean over every training token (pruning's μ)."""

    values: np.ndarray
    per_seed: np.ndarray
    per_subtask: np.ndarray
    train_mean: np.ndarray
    token_mean: np.ndarray
    layers: tuple[int, ...]
    labels: tuple[str, ...]
    subtasks: tuple[str, ...]
    state: str = "down_input"
    position: str = "decoding"
    k: int = 1
    aggregate: str = "mean"
    n_train: int = 0
    n_dev: int = 0
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return int(self.per_seed.shape[0])

    @property
    def d_ffn(self) -> int:
        return int(self.values.shape[-1])

    def row(self, layer: int) -> np.ndarray:
        """The predictivity of one model layer's neurons (D,)."""
        return self.values[self.layers.index(layer)]

    def baseline(self, seed: int = 0) -> dict[int, np.ndarray]:
        """a_bsl per layer for the ``mean`` perturbation: the training mean at the decoding
        token (``last_k``: its last position, the decoding token)."""
        mean = self.train_mean[seed, -1]
        return {layer: mean[j] for j, layer in enumerate(self.layers)}

    def top1(self) -> np.ndarray:
        """Per layer the best neuron's predictivity (L,)."""
        out: np.ndarray = self.values.max(axis=1)
        return out

    def top_fraction(self, p: float = 0.01) -> np.ndarray:
        """Per layer the mean predictivity of its top ``p`` neurons (L,)."""
        k = max(1, select_count(p, self.d_ffn))
        ordered = -np.sort(-self.values, axis=1)
        out: np.ndarray = ordered[:, :k].mean(axis=1)
        return out

    def best(self) -> tuple[int, int, float]:
        """(layer, index, predictivity) of the most predictive neuron (first in stable order)."""
        flat = int(np.argmax(self.values))
        j, i = divmod(flat, self.d_ffn)
        return self.layers[j], i, float(self.values[j, i])

    def summary(self) -> dict[str, Any]:
        layer, index, value = self.best()
        return {
            "name": self.name,
            "layers": list(self.layers),
            "d_ffn": self.d_ffn,
            "seeds": self.n_seeds,
            "state": self.state,
            "position": self.position,
            "k": self.k,
            "aggregate": self.aggregate,
            "labels": list(self.labels),
            "subtasks": list(self.subtasks),
            "n_train": self.n_train,
            "n_dev": self.n_dev,
            "best": {"layer": layer, "index": index, "predictivity": value},
            "top1_by_layer": self.top1().tolist(),
            "top1pct_by_layer": self.top_fraction(0.01).tolist(),
            **self.meta,
        }


def example_labels(formatter: TaskFormatter, examples: Sequence[Example]) -> np.ndarray:
    """Label indices (in the task's label order) of classification examples."""
    task = formatter.task
    if task.spec.kind != "classification":
        raise ValueError(f"skill neurons need a classification task; {task.name} is not one")
    index = {lab: i for i, lab in enumerate(task.labels)}
    out = []
    for ex in examples:
        label = ex.label if ex.label is not None else task.label_of_word(ex.target)
        out.append(index[label])
    return np.asarray(out, dtype=np.int64)


def _batch_labels(batch: AnalysisBatch, labels: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(labels[batch.example_ids.cpu().numpy()], dtype=torch.long)


def predictivity_from_batches(
    plm: PromptedLM,
    train_batches: Batches,
    train_labels: np.ndarray | Sequence[int],
    dev_batches: Batches,
    dev_labels: np.ndarray | Sequence[int],
    subtasks: Sequence[SubTask],
    *,
    n_classes: int,
    layers: Sequence[int] | None = None,
    state: str = "down_input",
    position: str = "decoding",
    k: int = 1,
) -> PredictivityAccumulator:
    """Two streaming passes of one prompted model (one seed): thresholds on the training
    batches, counts on the held-out batches. Labels are indexed by each row's example id."""
    n_readouts(position, k)
    chosen = list(range(plm.handle.geometry.n_layers)) if layers is None else sorted(set(layers))
    acc = PredictivityAccumulator(n_classes, subtasks, chosen)
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_dev = np.asarray(dev_labels, dtype=np.int64)

    for batch in iterate_batches(train_batches):
        y = _batch_labels(batch, y_train)

        def train_sink(read: NeuronRead, y: torch.Tensor = y) -> None:
            acc.add_train(read.layer, read.at(position, k), y)
            acc.add_tokens(read.layer, *token_sums(read.capture))

        read_neurons(plm, batch, chosen, train_sink, state=state)
    acc.finish_train()
    for batch in iterate_batches(dev_batches):
        y = _batch_labels(batch, y_dev)

        def dev_sink(read: NeuronRead, y: torch.Tensor = y) -> None:
            acc.add_dev(read.layer, read.at(position, k), y)

        read_neurons(plm, batch, chosen, dev_sink, state=state)
    return acc


def neuron_predictivity(
    handle: ModelHandle,
    prompts: SoftPrompt | Sequence[SoftPrompt | None] | None,
    formatter: TaskFormatter,
    train: Sequence[Example],
    dev: Sequence[Example],
    *,
    layers: Sequence[int] | None = None,
    state: str = "down_input",
    position: str = "decoding",
    k: int = 1,
    subtasks: Sequence[SubTask] | None = None,
    aggregate: Literal["mean", "max"] = "mean",
    binary_metric: str = "accuracy",
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
    name: str = "",
) -> Predictivity:
    """Predictivity of every FFN neuron for ``formatter``'s classification task, thresholds
    from ``train`` and accuracies on ``dev`` (keep the test split for perturbation/pruning),
    averaged over ``prompts`` (seeds of one prompt; ``None`` = the base model).

    Memory does not grow with the number of examples (two streaming passes per seed)."""
    seeds = [prompts] if prompts is None or isinstance(prompts, SoftPrompt) else list(prompts)
    if not seeds:
        raise ValueError("no prompts")
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be mean or max, got {aggregate!r}")
    labels = tuple(formatter.task.labels)
    subs = (
        list(subtasks)
        if subtasks is not None
        else default_subtasks(labels, binary_metric=binary_metric)
    )
    y_train = example_labels(formatter, train)
    y_dev = example_labels(formatter, dev)
    train_batches = context_batches(formatter, train, batch_size=batch_size)
    dev_batches = context_batches(formatter, dev, batch_size=batch_size)
    chosen = list(range(handle.geometry.n_layers)) if layers is None else sorted(set(layers))
    per_seed, per_sub, means, tokens = [], [], [], []
    for prompt in seeds:
        plm = PromptedLM(handle, prompt, autocast_dtype=autocast_dtype)
        acc = predictivity_from_batches(
            plm,
            train_batches,
            y_train,
            dev_batches,
            y_dev,
            subs,
            n_classes=len(labels),
            layers=chosen,
            state=state,
            position=position,
            k=k,
        )
        sub = acc.result()  # (S, P, L, D)
        combined = sub.mean(0) if aggregate == "mean" else sub.max(0)  # (P, L, D)
        per_seed.append(combined)
        per_sub.append(sub.max(1))
        means.append(acc.train_mean())
        tokens.append(acc.token_mean())
    return Predictivity(
        values=seed_average(per_seed),
        per_seed=np.stack([p.max(0) for p in per_seed]),
        per_subtask=np.stack(per_sub),
        train_mean=np.stack(means),
        token_mean=np.stack(tokens),
        layers=tuple(chosen),
        labels=labels,
        subtasks=tuple(s.name for s in subs),
        state=state,
        position=position,
        k=k,
        aggregate=aggregate,
        n_train=len(train),
        n_dev=len(dev),
        name=name or formatter.task.name,
        meta={
            "model": handle.name,
            "model_fingerprint": handle.fingerprint,
            "prompts": [None if p is None else p.method for p in seeds],
        },
    )


# -- selection ------------------------------------------------------------------------------


def select_count(p: float, n: int) -> int:
    """⌈p·n⌉ (p = 0 gives 0), robust to floating error (0.01 · 2000 is 20, not 21)."""
    if not 0 <= p <= 1:
        raise ValueError(f"a fraction must be in [0, 1], got {p}")
    return min(n, math.ceil(p * n - 1e-9))


@dataclass
class SkillNeurons:
    """A set of neurons: per model layer, indices in rank order (most predictive first)."""

    neurons: dict[int, np.ndarray]
    d_ffn: int
    p: float = 0.0
    scope: str = "layer"
    name: str = ""

    def __post_init__(self) -> None:
        self.neurons = {
            int(layer): np.asarray(idx, dtype=np.int64) for layer, idx in self.neurons.items()
        }

    def counts(self) -> dict[int, int]:
        return {layer: len(idx) for layer, idx in self.neurons.items()}

    @property
    def total(self) -> int:
        return sum(len(idx) for idx in self.neurons.values())

    def pairs(self) -> set[tuple[int, int]]:
        return {(layer, int(i)) for layer, idx in self.neurons.items() for i in idx}

    def mask(self, layers: Sequence[int]) -> np.ndarray:
        """A boolean (len(layers), D) mask of the set."""
        out = np.zeros((len(layers), self.d_ffn), dtype=bool)
        for j, layer in enumerate(layers):
            if layer in self.neurons:
                out[j, self.neurons[layer]] = True
        return out

    def restrict(self, layers: Iterable[int]) -> SkillNeurons:
        keep = set(layers)
        return replace(self, neurons={k: v for k, v in self.neurons.items() if k in keep})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "p": self.p,
            "scope": self.scope,
            "d_ffn": self.d_ffn,
            "neurons": {str(k): v.tolist() for k, v in self.neurons.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkillNeurons:
        return cls(
            neurons={int(k): np.asarray(v) for k, v in data["neurons"].items()},
            d_ffn=int(data["d_ffn"]),
            p=float(data.get("p", 0.0)),
            scope=str(data.get("scope", "layer")),
            name=str(data.get("name", "")),
        )


def _values(
    pred: Predictivity | np.ndarray, layers: Sequence[int] | None
) -> tuple[np.ndarray, list[int]]:
    if isinstance(pred, Predictivity):
        return pred.values, list(pred.layers)
    values = np.asarray(pred, dtype=np.float64)
    return values, list(range(values.shape[0])) if layers is None else list(layers)


def select_skill_neurons(
    pred: Predictivity | np.ndarray,
    p: float,
    *,
    scope: Scope = "layer",
    layers: Sequence[int] | None = None,
    union: bool = False,
    name: str = "",
) -> SkillNeurons:
    """The top ``p`` neurons by predictivity: ⌈p·D⌉ in each layer (``scope="layer"``) or
    ⌈p·L·D⌉ over all layers (``"global"``), ties broken by index (stable sort).

    ``union`` (a :class:`Predictivity` with two sub-tasks, e.g. :func:`reference_subtasks`):
    the reference's multi-class rule — sub-task 1's top p, then sub-task 2's best not yet
    chosen until 2p."""
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be layer or global, got {scope!r}")
    values, model_layers = _values(pred, layers)
    n_layers, d = values.shape
    label = name or (pred.name if isinstance(pred, Predictivity) else "")
    if union:
        if not isinstance(pred, Predictivity) or pred.per_subtask.shape[1] < 2:
            raise ValueError("union selection needs a Predictivity with two sub-tasks")
        sub = pred.per_subtask.mean(0)  # (S, L, D)
        return _union(sub[0], sub[1], p, scope, model_layers, d, label)
    if scope == "layer":
        k = select_count(p, d)
        order = np.argsort(-values, axis=1, kind="stable")[:, :k]
        return SkillNeurons(
            {layer: order[j] for j, layer in enumerate(model_layers)}, d, p, scope, label
        )
    k = select_count(p, n_layers * d)
    flat = np.argsort(-values.reshape(-1), kind="stable")[:k]
    out: dict[int, list[int]] = {layer: [] for layer in model_layers}
    for f in flat:
        j, i = divmod(int(f), d)
        out[model_layers[j]].append(i)
    return SkillNeurons(
        {k_: np.asarray(v, dtype=np.int64) for k_, v in out.items()}, d, p, scope, label
    )


def _union(
    first: np.ndarray,
    second: np.ndarray,
    p: float,
    scope: str,
    layers: list[int],
    d: int,
    name: str,
) -> SkillNeurons:
    def pick(a: np.ndarray, b: np.ndarray, k: int) -> list[int]:
        chosen = [int(i) for i in np.argsort(-a, kind="stable")[:k]]
        seen = set(chosen)
        for i in np.argsort(-b, kind="stable"):
            if len(chosen) >= min(2 * k, a.shape[0]):
                break
            if int(i) not in seen:
                chosen.append(int(i))
                seen.add(int(i))
        return chosen

    if scope == "layer":
        k = select_count(p, d)
        return SkillNeurons(
            {layer: np.asarray(pick(first[j], second[j], k)) for j, layer in enumerate(layers)},
            d,
            p,
            scope,
            name,
        )
    k = select_count(p, first.size)
    flat = pick(first.reshape(-1), second.reshape(-1), k)
    out: dict[int, list[int]] = {layer: [] for layer in layers}
    for f in flat:
        j, i = divmod(f, d)
        out[layers[j]].append(i)
    return SkillNeurons(
        {k_: np.asarray(v, dtype=np.int64) for k_, v in out.items()}, d, p, scope, name
    )


def random_control(
    skill: SkillNeurons, seed: int, *, disjoint: bool = True, name: str = ""
) -> SkillNeurons:
    """The same number of neurons per layer drawn at random (numpy ``default_rng(seed)``, so a
    seed always gives the same set), disjoint from the skill set unless ``disjoint=False``
    (the reference behaviour)."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in sorted(skill.neurons):
        idx = skill.neurons[layer]
        pool = np.arange(skill.d_ffn)
        if disjoint:
            pool = np.setdiff1d(pool, idx)
        if len(idx) > len(pool):
            raise ValueError(
                f"layer {layer}: {len(idx)} random neurons disjoint from the skill set do not "
                f"exist among {skill.d_ffn}"
            )
        out[layer] = rng.choice(pool, size=len(idx), replace=False)
    return SkillNeurons(out, skill.d_ffn, skill.p, skill.scope, name or f"random-{seed}")


def least_predictive(
    pred: Predictivity | np.ndarray, skill: SkillNeurons, *, layers: Sequence[int] | None = None
) -> SkillNeurons:
    """Per layer the same number of neurons as ``skill``, the least predictive ones."""
    values, model_layers = _values(pred, layers)
    out = {}
    for layer, idx in skill.neurons.items():
        row = values[model_layers.index(layer)]
        out[layer] = np.argsort(row, kind="stable")[: len(idx)]
    return SkillNeurons(out, skill.d_ffn, skill.p, skill.scope, "least-predictive")


# -- similarity between tasks ---------------------------------------------------------------


def skill_overlap(a: SkillNeurons, b: SkillNeurons) -> float:
    """|S_a ∩ S_b| / |S_a| (NaN for an empty S_a)."""
    sa, sb = a.pairs(), b.pairs()
    return float("nan") if not sa else len(sa & sb) / len(sa)


def predictivity_correlation(
    a: Predictivity | np.ndarray,
    b: Predictivity | np.ndarray,
    *,
    method: Literal["spearman", "pearson"] = "spearman",
) -> float:
    """Correlation of two predictivity vectors over all neurons of their common layers."""
    if isinstance(a, Predictivity) and isinstance(b, Predictivity):
        common = [layer for layer in a.layers if layer in b.layers]
        if not common:
            raise ValueError("the two predictivities share no layer")
        x = np.stack([a.row(layer) for layer in common]).reshape(-1)
        y = np.stack([b.row(layer) for layer in common]).reshape(-1)
    else:
        x = np.asarray(a.values if isinstance(a, Predictivity) else a).reshape(-1)
        y = np.asarray(b.values if isinstance(b, Predictivity) else b).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"predictivity shapes differ: {x.shape} vs {y.shape}")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    r = stats.spearmanr(x, y).statistic if method == "spearman" else stats.pearsonr(x, y).statistic
    return float(r)


@dataclass
class SkillSimilarity:
    """Pairwise skill-neuron overlap (row's set ∩ column's set / row's set) and correlation
    of predictivity vectors between tasks (or languages)."""

    names: list[str]
    overlap: np.ndarray  # (n, n)
    correlation: np.ndarray  # (n, n)
    p: float
    scope: str
    method: str = "spearman"


def skill_similarity(
    preds: Mapping[str, Predictivity],
    *,
    p: float = 0.01,
    scope: Scope = "layer",
    method: Literal["spearman", "pearson"] = "spearman",
) -> SkillSimilarity:
    """Overlap and predictivity correlation between every pair of tasks/languages."""
    names = list(preds)
    sets = {n: select_skill_neurons(preds[n], p, scope=scope) for n in names}
    n = len(names)
    overlap = np.full((n, n), np.nan)
    corr = np.full((n, n), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            overlap[i, j] = skill_overlap(sets[a], sets[b])
            corr[i, j] = (
                1.0 if i == j else predictivity_correlation(preds[a], preds[b], method=method)
            )
    return SkillSimilarity(names, overlap, corr, p, scope, method)


# -- one neuron's activations ---------------------------------------------------------------


@dataclass
class NeuronActivations:
    """One neuron's state per example, with the example's label (the histogram by label)."""

    layer: int
    index: int
    values: np.ndarray  # (N,)
    labels: list[str]
    threshold: float | None = None
    name: str = ""

    def by_label(self) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {}
        for v, lab in zip(self.values.tolist(), self.labels, strict=True):
            out.setdefault(lab, []).append(v)
        return {k: np.asarray(v) for k, v in out.items()}


def neuron_activations(
    handle: ModelHandle,
    prompt: SoftPrompt | None,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    layer: int,
    index: int,
    *,
    state: str = "down_input",
    position: str = "decoding",
    batch_size: int = 16,
    threshold: float | None = None,
) -> NeuronActivations:
    """Neuron (layer, index) read at ``position`` (last_k: the decoding token) for every
    example: one float per example."""
    labels = example_labels(formatter, examples)
    plm = PromptedLM(handle, prompt)
    values = np.zeros(len(examples))
    pos = "decoding" if position == "last_k" else position
    for batch in context_batches(formatter, examples, batch_size=batch_size):
        ids = batch.example_ids.cpu().numpy()

        def sink(read: NeuronRead, ids: np.ndarray = ids) -> None:
            values[ids] = read.at(pos)[:, 0, index].double().cpu().numpy()

        read_neurons(plm, batch, [layer], sink, state=state)
    names = [formatter.task.labels[i] for i in labels]
    return NeuronActivations(layer, index, values, names, threshold, formatter.task.name)
