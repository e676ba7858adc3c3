"""Attention analyses (SPEC §5, thesis §4.2): variability, change (KL), their correlation.

* **Variability** (Vig & Belinkov 2019) per head on the base model, over a window of the
  first ``n_tokens`` positions after the first one (sequence positions ``1..n_tokens``; the
  first position, usually ``<bos>``, is an attention sink and is excluded as query and key):

      Var = Σ_x Σ_i Σ_{j≤i} |α_ij(x) − ᾱ_ij| / (2 Σ_x Σ_i Σ_{j≤i} α_ij(x))

  with α the raw attention probabilities (not renormalised inside the window) and ᾱ_ij the
  mean over the inputs that have both positions (shorter inputs contribute the pairs they
  have; a separator that falls inside the window of a short input counts like any token).
  The mean must be known before the absolute deviations, so :class:`AttentionVariability`
  reads the data **twice**: pass 1 accumulates Σα and the counts per (head, i, j), pass 2
  the absolute deviations from the now-known mean. Both passes hold only (H, n, n) sums per
  layer, so memory is independent of the number of examples, and the result equals the
  all-in-memory formula exactly (float64 accumulators).

* **Change**: per head KL(prompted ‖ base) on the same input. Prompt rows and columns of the
  prompted model are dropped; per key token the attention received is summed over the query
  positions (every non-padding position of the context); special tokens and padding are
  removed; the remainder is renormalised; zeros become 1e-20; KL = Σ x log(x/y). Averaged
  over the inputs. :class:`AttentionChange` turns each layer's map into that small (B, H, T)
  distribution as soon as the layer ran, and combines base and prompted per batch.

* **Correlation**: Pearson r and p (scipy) between variability and KL across heads, per layer
  and per layer group (4 contiguous groups scaled to the model depth: 0–5, 6–11, 12–17, 18–23
  for 24 layers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from promptatlas.analysis.capture import (
    INPUT,
    PAD,
    SPECIAL,
    TARGET,
    AnalysisBatch,
    BatchSource,
    CaptureRequest,
    LayerCapture,
    Reducer,
    run_reducers,
)
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "KL_EPS",
    "AttentionChange",
    "AttentionChangeResult",
    "AttentionVariability",
    "AttentionVariabilityResult",
    "Correlation",
    "CorrelationReport",
    "attention_analysis",
    "attention_change",
    "attention_kl",
    "attention_variability",
    "correlate_heads",
    "kl_divergence",
    "layer_groups",
    "pearson",
    "received_attention",
    "variability_from_maps",
    "variability_window",
]

KL_EPS = 1e-20


# -- variability ------------------------------------------------------------------------------


def variability_window(attention: torch.Tensor, length: int, n_tokens: int = 10) -> torch.Tensor:
    """The variability window of one example's input attention (H, T, T): query and key
    positions ``1..min(n_tokens, length-1)`` → (H, w, w)."""
    w = max(0, min(n_tokens, length - 1))
    return attention[:, 1 : 1 + w, 1 : 1 + w]


def variability_from_maps(windows: Sequence[torch.Tensor]) -> torch.Tensor:
    """All-in-memory reference: variability per head from each example's window (H, w_x, w_x)
    (see :func:`variability_window`; windows may differ in size). Returns (H,)."""
    if not windows:
        raise ValueError("no attention windows")
    heads = windows[0].shape[0]
    n = max(int(w.shape[-1]) for w in windows)
    total = torch.zeros(heads, n, n, dtype=torch.float64)
    count = torch.zeros(n, n, dtype=torch.float64)
    for w in windows:
        k = w.shape[-1]
        tril = torch.tril(torch.ones(k, k, dtype=torch.float64))
        total[:, :k, :k] += w.double() * tril
        count[:k, :k] += tril
    mean = total / count.clamp(min=1)
    dev = torch.zeros(heads, dtype=torch.float64)
    mass = torch.zeros(heads, dtype=torch.float64)
    for w in windows:
        k = w.shape[-1]
        tril = torch.tril(torch.ones(k, k, dtype=torch.float64))
        dev += ((w.double() - mean[:, :k, :k]).abs() * tril).sum((1, 2))
        mass += (w.double() * tril).sum((1, 2))
    return dev / (2 * mass)


@dataclass
class AttentionVariabilityResult:
    layers: list[int]
    variability: torch.Tensor  # (n_layers, H), float64
    n_examples: int

    @property
    def per_layer(self) -> torch.Tensor:
        return self.variability.mean(1)


class AttentionVariability(Reducer):
    """Streaming, exact attention variability per head (two passes over the data)."""

    n_passes = 2

    def __init__(self, layers: Iterable[int], *, n_tokens: int = 10, model: str = "base") -> None:
        if n_tokens < 1:
            raise ValueError("n_tokens must be ≥ 1")
        self.layers = sorted(set(layers))
        self.n_tokens = n_tokens
        self.model = model
        self._pass = 0
        self._sum: dict[int, torch.Tensor] = {}  # (H, n, n) Σα
        self._count: dict[int, torch.Tensor] = {}  # (n, n) number of inputs with (i, j)
        self._mass: dict[int, torch.Tensor] = {}  # (H,) Σα over the window
        self._dev: dict[int, torch.Tensor] = {}  # (H,) Σ|α − ᾱ|
        self._n_examples = 0

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        return CaptureRequest.of(attention=self.layers if model == self.model else ())

    def start_pass(self, pass_index: int) -> None:
        self._pass = pass_index

    def end_batch(self, batch: AnalysisBatch) -> None:
        if self._pass == 0:
            self._n_examples += batch.size

    def update(self, capture: LayerCapture) -> None:
        attn = capture.inputs()  # (B, H, T, T)
        kinds = capture.batch.kinds
        w = max(0, min(self.n_tokens, attn.shape[-1] - 1))
        if w == 0:
            return
        n = self.n_tokens
        heads = attn.shape[1]
        sub = attn[:, :, 1 : 1 + w, 1 : 1 + w].double()
        context = (kinds == SPECIAL) | (kinds == INPUT)
        valid = context[:, 1 : 1 + w].double()  # (B, w)
        tril = torch.tril(torch.ones(w, w, dtype=torch.float64, device=sub.device))
        mask = valid[:, :, None] * valid[:, None, :] * tril  # (B, w, w)
        masked = sub * mask[:, None]
        layer = capture.layer
        if self._pass == 0:
            if layer not in self._sum:
                self._sum[layer] = torch.zeros(heads, n, n, dtype=torch.float64)
                self._count[layer] = torch.zeros(n, n, dtype=torch.float64)
                self._mass[layer] = torch.zeros(heads, dtype=torch.float64)
            self._sum[layer][:, :w, :w] += masked.sum(0).cpu()
            self._count[layer][:w, :w] += mask.sum(0).cpu()
            self._mass[layer] += masked.sum((0, 2, 3)).cpu()
        else:
            mean = (self._sum[layer] / self._count[layer].clamp(min=1))[:, :w, :w]
            dev = (sub - mean.to(sub.device)[None]).abs() * mask[:, None]
            total = dev.sum((0, 2, 3)).cpu()
            self._dev[layer] = self._dev[layer] + total if layer in self._dev else total

    def result(self) -> AttentionVariabilityResult:
        if not self._dev:
            raise RuntimeError("no data: run both passes (run_reducers) first")
        rows = [self._dev[i] / (2 * self._mass[i]) for i in self.layers]
        return AttentionVariabilityResult(list(self.layers), torch.stack(rows), self._n_examples)


# -- change (KL) -----------------------------------------------------------------------------


def received_attention(
    attention: torch.Tensor, kinds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention received per input token, post-processed as in the thesis.

    ``attention`` (B, H, T, T) is the input part (prompt rows/columns already dropped);
    ``kinds`` (B, T). Sums over the non-padding query rows, keeps ordinary input tokens as keys
    (drops special tokens, padding and teacher-forced targets) and renormalises. Returns the
    distributions (B, H, T) (zero outside kept keys) and a (B,) mask of rows that have any kept
    key."""
    query = (kinds != PAD) & (kinds != TARGET)
    keep = kinds == INPUT
    a = attention.double()
    received = (a * query[:, None, :, None]).sum(2) * keep[:, None, :]
    total = received.sum(-1, keepdim=True)
    ok = keep.any(1) & (total > 0).all(1)[:, 0]
    return received / total.clamp(min=torch.finfo(torch.float64).tiny), ok


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """Σ p log(p/q) over the last axis, zeros replaced by ``eps`` first (thesis Eq. 11)."""
    p = torch.where(p == 0, torch.full_like(p, eps), p)
    q = torch.where(q == 0, torch.full_like(q, eps), q)
    return (p * (p / q).log()).sum(-1)


def attention_kl(prompted: torch.Tensor, base: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """KL(prompted ‖ base) per head for one example: ``prompted`` and ``base`` (H, T, T) input
    attention maps, ``kinds`` (T,). Returns (H,)."""
    p, ok = received_attention(prompted[None], kinds[None])
    q, _ = received_attention(base[None], kinds[None])
    if not bool(ok[0]):
        raise ValueError("the example has no ordinary input token")
    return kl_divergence(p[0], q[0])


@dataclass
class AttentionChangeResult:
    layers: list[int]
    kl: torch.Tensor  # (n_layers, H) mean KL(prompted ‖ base) over inputs, float64
    n_examples: int

    @property
    def per_layer(self) -> torch.Tensor:
        """Mean over heads, per layer."""
        return self.kl.mean(1)


class AttentionChange(Reducer):
    """Streaming per-head KL(prompted ‖ base), averaged over inputs."""

    def __init__(
        self, layers: Iterable[int], *, base: str = "base", prompted: str = "prompted"
    ) -> None:
        if base == prompted:
            raise ValueError("base and prompted must be different model runs")
        self.layers = sorted(set(layers))
        self.base = base
        self.prompted = prompted
        self._pending: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._sum: dict[int, torch.Tensor] = {}
        self._count: dict[int, int] = {}

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        wanted = model in (self.base, self.prompted)
        return CaptureRequest.of(attention=self.layers if wanted else ())

    def begin_batch(self, batch: AnalysisBatch) -> None:
        self._pending = {}

    def update(self, capture: LayerCapture) -> None:
        dist = received_attention(capture.inputs(), capture.batch.kinds)
        slot = self._pending.setdefault(capture.layer, {})
        slot[capture.model] = dist
        if self.base in slot and self.prompted in slot:
            (p, ok), (q, _) = slot[self.prompted], slot[self.base]
            kl = kl_divergence(p, q)[ok]  # (b, H)
            layer = capture.layer
            total = kl.sum(0).cpu()
            self._sum[layer] = self._sum[layer] + total if layer in self._sum else total
            self._count[layer] = self._count.get(layer, 0) + int(ok.sum())
            del self._pending[layer]

    def end_batch(self, batch: AnalysisBatch) -> None:
        if self._pending:
            missing = sorted(self._pending)
            raise RuntimeError(f"layers {missing} were captured for one model run only")

    def result(self) -> AttentionChangeResult:
        if not self._sum:
            raise RuntimeError("no data: run the reducer (run_reducers) first")
        kl = torch.stack([self._sum[i] / max(1, self._count[i]) for i in self.layers])
        return AttentionChangeResult(list(self.layers), kl, self._count[self.layers[0]])


# -- one-call helpers --------------------------------------------------------------------------


def _layers(handle: ModelHandle, layers: Iterable[int] | None) -> list[int]:
    return list(range(handle.geometry.n_layers)) if layers is None else sorted(set(layers))


def attention_variability(
    handle: ModelHandle,
    batches: BatchSource,
    *,
    n_tokens: int = 10,
    layers: Iterable[int] | None = None,
) -> AttentionVariabilityResult:
    """Variability per head of the base model (``batches`` is read twice)."""
    reducer = AttentionVariability(_layers(handle, layers), n_tokens=n_tokens)
    run_reducers({"base": PromptedLM(handle)}, batches, [reducer])
    return reducer.result()


def attention_change(
    handle: ModelHandle,
    prompt: SoftPrompt | None,
    batches: BatchSource,
    *,
    layers: Iterable[int] | None = None,
) -> AttentionChangeResult:
    """Per-head KL(prompted ‖ base) averaged over the batches' inputs."""
    reducer = AttentionChange(_layers(handle, layers))
    models = {"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}
    run_reducers(models, batches, [reducer])
    return reducer.result()


def attention_analysis(
    handle: ModelHandle,
    prompt: SoftPrompt | None,
    batches: BatchSource,
    *,
    n_tokens: int = 10,
    layers: Iterable[int] | None = None,
) -> tuple[AttentionVariabilityResult, AttentionChangeResult]:
    """Variability and change together, sharing the base-model passes: pass 1 runs the base
    and the prompted model, pass 2 the base model only."""
    chosen = _layers(handle, layers)
    var = AttentionVariability(chosen, n_tokens=n_tokens)
    change = AttentionChange(chosen)
    models = {"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}
    run_reducers(models, batches, [var, change])
    return var.result(), change.result()


# -- correlation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correlation:
    r: float
    p: float
    n: int


@dataclass
class CorrelationReport:
    layers: list[int]
    per_layer: list[Correlation]  # across the heads of each layer
    groups: list[list[int]]  # layer indices of each group
    per_group: list[Correlation]  # across the heads of each group's layers
    overall: Correlation  # across all heads


Values = Sequence[float] | np.ndarray | torch.Tensor


def pearson(x: Values, y: Values) -> Correlation:
    """Pearson r and two-sided p-value (scipy), ignoring non-finite pairs; NaN when fewer
    than two points remain or either side is constant."""
    from scipy import stats

    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float).ravel()
    b = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(math.nan, math.nan, len(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.pearsonr(a, b)
    return Correlation(float(res.statistic), float(res.pvalue), len(a))


def layer_groups(n_layers: int, n_groups: int = 4) -> list[list[int]]:
    """Contiguous, near-equal layer groups (24 layers → 0–5, 6–11, 12–17, 18–23; earlier
    groups get the extra layer when the depth does not divide)."""
    if n_layers < 1 or n_groups < 1:
        raise ValueError("n_layers and n_groups must be ≥ 1")
    return [list(map(int, g)) for g in np.array_split(np.arange(n_layers), n_groups) if len(g)]


def correlate_heads(
    variability: torch.Tensor,
    kl: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    groups: Sequence[Sequence[int]] | int = 4,
) -> CorrelationReport:
    """Pearson correlation between per-head variability and KL, both (n_layers, H).

    ``layers`` names the rows (default 0..n-1); ``groups`` is a number of contiguous groups
    over those rows or explicit lists of layer indices."""
    if variability.shape != kl.shape:
        raise ValueError(f"shapes differ: {tuple(variability.shape)} vs {tuple(kl.shape)}")
    names = list(range(variability.shape[0])) if layers is None else list(layers)
    row = {layer: i for i, layer in enumerate(names)}
    if isinstance(groups, int):
        chosen = [[names[i] for i in g] for g in layer_groups(len(names), groups)]
    else:
        chosen = [list(g) for g in groups]
    per_layer = [pearson(variability[i], kl[i]) for i in range(len(names))]
    per_group = []
    for g in chosen:
        idx = [row[layer] for layer in g]
        per_group.append(pearson(variability[idx], kl[idx]))
    return CorrelationReport(names, per_layer, chosen, per_group, pearson(variability, kl))
