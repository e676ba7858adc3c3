"""Hidden-state geometry (thesis §4.4): isotropy and the label space.

Hidden-state layers follow the Hugging Face ``output_hidden_states`` convention: index 0 is
the embedding output, index l the output of decoder layer l-1, index L the final normed output.

* **Isotropy** (Rajaee et al. 2022; thesis Eq. 18-19): per input one random ordinary (non-
  special) input token is drawn (seeded; the same token for every model run, so base and
  prompted are compared on the same tokens). The score is the mean cosine similarity over
  N random pairs of those tokens from different inputs; *decoding* pairs the decoding token of
  one input with the random token of another. Streaming: the token vectors go into a seeded
  reservoir sample of fixed size (memory = reservoir × layers × d × 2 floats per model,
  independent of the number of inputs); the N pairs are drawn from it at the end (when the
  data has no more inputs than the reservoir holds, this is exactly N random pairs over the
  data). The exact mean over *all* pairs of distinct inputs, which the random-pair score
  estimates, is kept alongside from running sums of unit vectors:
  mean_{i≠j} û_i·v̂_j = (Σû·Σv̂ − Σ û_i·v̂_i) / (n(n−1)).

* **Label space** (thesis Eq. 20-21): per layer, cosine between the decoding token's hidden
  state and the hidden state of the first token of the gold label word, teacher-forced right
  after the context, versus the same for a non-gold label word (a seeded random one for
  multi-class tasks); rows come from
  :func:`promptatlas.analysis.capture.label_word_batches`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from promptatlas.analysis.capture import (
    INPUT,
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
    "Isotropy",
    "IsotropyResult",
    "LabelSpace",
    "LabelSpaceResult",
    "isotropy",
    "isotropy_analysis",
    "label_space",
    "random_pairs",
]

Prompts = SoftPrompt | None | Mapping[str, SoftPrompt | None]


def random_pairs(n: int, n_pairs: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` seeded pairs (i, j) of distinct indices in 0..n-1."""
    if n < 2:
        raise ValueError("random pairs need at least two items")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (n_pairs,), generator=gen)
    j = torch.randint(n - 1, (n_pairs,), generator=gen)
    return i, j + (j >= i).long()


def isotropy(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    n_pairs: int | None = None,
    seed: int = 0,
) -> float:
    """Mean cosine similarity between ``x[i]`` and ``y[j]`` (default ``y = x``) over pairs of
    distinct rows: ``n_pairs`` seeded random pairs, or every pair when ``n_pairs`` is None."""
    y = x if y is None else y
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError("x and y must be (n, d) tensors of the same shape")
    xu = F.normalize(x.double(), dim=-1)
    yu = F.normalize(y.double(), dim=-1)
    n = x.shape[0]
    if n_pairs is None:
        if n < 2:
            raise ValueError("isotropy needs at least two vectors")
        total = xu.sum(0) @ yu.sum(0) - (xu * yu).sum()
        return float(total / (n * (n - 1)))
    i, j = random_pairs(n, n_pairs, seed=seed)
    return float((xu[i] * yu[j]).sum(-1).mean())


@dataclass
class IsotropyResult:
    layers: list[int]  # hidden-state indices
    random: dict[str, torch.Tensor]  # per model (n_layers,): N random token pairs
    decoding: dict[str, torch.Tensor]  # per model (n_layers,): decoding token vs random token
    random_all_pairs: dict[str, torch.Tensor]  # exact mean over all pairs of inputs
    decoding_all_pairs: dict[str, torch.Tensor]
    n_inputs: int
    n_pairs: int


@dataclass
class _IsoState:
    sum_r: torch.Tensor
    sum_d: torch.Tensor
    self_rr: torch.Tensor
    self_dr: torch.Tensor
    res_r: torch.Tensor
    res_d: torch.Tensor


class Isotropy(Reducer):
    """Streaming isotropy (random-token pairs and decoding-vs-random pairs) per model and
    hidden-state layer."""

    def __init__(
        self,
        layers: Iterable[int],
        models: Iterable[str],
        *,
        n_pairs: int = 1000,
        reservoir: int = 512,
        seed: int = 0,
    ) -> None:
        if n_pairs < 1 or reservoir < 2:
            raise ValueError("n_pairs must be ≥ 1 and reservoir ≥ 2")
        self.layers = sorted(set(layers))
        self.models = list(models)
        self.n_pairs = n_pairs
        self.reservoir = reservoir
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self._seen = 0
        self._rows = torch.empty(0, dtype=torch.long)
        self._pos = torch.empty(0, dtype=torch.long)
        self._slots = torch.empty(0, dtype=torch.long)
        self._state: dict[tuple[str, int], _IsoState] = {}

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        return CaptureRequest.of(hidden=self.layers if model in self.models else ())

    def start_pass(self, pass_index: int) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)
        self._seen = 0
        self._state = {}

    def begin_batch(self, batch: AnalysisBatch) -> None:
        # Drawn once per batch, before any model runs: every model sees the same tokens.
        ordinary = (batch.kinds == INPUT).cpu()
        rows, positions, slots = [], [], []
        for r in range(batch.size):
            candidates = torch.nonzero(ordinary[r], as_tuple=True)[0]
            if len(candidates) == 0:
                continue
            pick = candidates[int(torch.randint(len(candidates), (1,), generator=self._gen))]
            # Reservoir sampling (algorithm R): item t replaces a random slot with
            # probability reservoir / (t + 1).
            t = self._seen
            if t < self.reservoir:
                slot = t
            else:
                k = int(torch.randint(t + 1, (1,), generator=self._gen))
                slot = k if k < self.reservoir else -1
            self._seen += 1
            rows.append(r)
            positions.append(int(pick))
            slots.append(slot)
        self._rows = torch.tensor(rows, dtype=torch.long)
        self._pos = torch.tensor(positions, dtype=torch.long)
        self._slots = torch.tensor(slots, dtype=torch.long)

    def update(self, capture: LayerCapture) -> None:
        if len(self._rows) == 0:
            return
        rows = self._rows
        rand = F.normalize(capture.at(self._pos, rows).double(), dim=-1).cpu()
        decoding = capture.batch.decoding[rows.to(capture.batch.decoding.device)]
        dec = F.normalize(capture.at(decoding, rows).double(), dim=-1).cpu()
        key = (capture.model, capture.layer)
        state = self._state.get(key)
        if state is None:
            d = rand.shape[-1]
            state = _IsoState(
                sum_r=torch.zeros(d, dtype=torch.float64),
                sum_d=torch.zeros(d, dtype=torch.float64),
                self_rr=torch.zeros((), dtype=torch.float64),
                self_dr=torch.zeros((), dtype=torch.float64),
                res_r=torch.zeros(self.reservoir, d),
                res_d=torch.zeros(self.reservoir, d),
            )
            self._state[key] = state
        state.sum_r += rand.sum(0)
        state.sum_d += dec.sum(0)
        state.self_rr += (rand * rand).sum()
        state.self_dr += (dec * rand).sum()
        keep = self._slots >= 0
        state.res_r[self._slots[keep]] = rand[keep].float()
        state.res_d[self._slots[keep]] = dec[keep].float()

    def result(self) -> IsotropyResult:
        n = self._seen
        if n < 2:
            raise RuntimeError("isotropy needs at least two inputs with an ordinary token")
        stored = min(n, self.reservoir)
        i, j = random_pairs(stored, self.n_pairs, seed=self.seed + 1)
        out: dict[str, dict[str, list[float]]] = {
            k: {} for k in ("random", "decoding", "random_all", "decoding_all")
        }
        for model in self.models:
            rows: dict[str, list[float]] = {k: [] for k in out}
            for layer in self.layers:
                s = self._state[(model, layer)]
                denom = n * (n - 1)
                rows["random_all"].append(float((s.sum_r @ s.sum_r - s.self_rr) / denom))
                rows["decoding_all"].append(float((s.sum_d @ s.sum_r - s.self_dr) / denom))
                r, d = s.res_r[:stored].double(), s.res_d[:stored].double()
                rows["random"].append(float((r[i] * r[j]).sum(-1).mean()))
                rows["decoding"].append(float((d[i] * r[j]).sum(-1).mean()))
            for k in out:
                out[k][model] = rows[k]

        def tensors(kind: str) -> dict[str, torch.Tensor]:
            return {m: torch.tensor(v, dtype=torch.float64) for m, v in out[kind].items()}

        return IsotropyResult(
            layers=list(self.layers),
            random=tensors("random"),
            decoding=tensors("decoding"),
            random_all_pairs=tensors("random_all"),
            decoding_all_pairs=tensors("decoding_all"),
            n_inputs=n,
            n_pairs=self.n_pairs,
        )


@dataclass
class LabelSpaceResult:
    layers: list[int]  # hidden-state indices
    gold: dict[str, torch.Tensor]  # per model (n_layers,): mean cos(decoding, gold word)
    non_gold: dict[str, torch.Tensor]  # per model (n_layers,): mean cos(decoding, non-gold)
    n_examples: int

    def gap(self, model: str) -> torch.Tensor:
        """gold − non-gold similarity per layer."""
        return self.gold[model] - self.non_gold[model]


class LabelSpace(Reducer):
    """Streaming label-space similarities per model and hidden-state layer (rows tagged
    ``"gold"`` / ``"non-gold"`` with the label token right after the decoding token)."""

    TAGS = ("gold", "non-gold")

    def __init__(self, layers: Iterable[int], models: Iterable[str]) -> None:
        self.layers = sorted(set(layers))
        self.models = list(models)
        self._sum: dict[tuple[str, int, str], float] = {}
        self._count: dict[tuple[str, int, str], int] = {}

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        return CaptureRequest.of(hidden=self.layers if model in self.models else ())

    def update(self, capture: LayerCapture) -> None:
        batch = capture.batch
        label_pos = batch.decoding + 1
        width = batch.kinds.shape[1]
        has_label = label_pos < width
        safe = label_pos.clamp(max=width - 1)
        has_label &= batch.kinds.gather(1, safe[:, None])[:, 0] == TARGET
        tagged = torch.tensor([t in self.TAGS for t in batch.tags])
        if bool((tagged & ~has_label.cpu()).any()):
            raise ValueError(
                "label-space rows need the label token right after the decoding token; build "
                "them with label_word_batches"
            )
        dec = capture.at(batch.decoding)
        lab = capture.at(safe)
        cos = F.cosine_similarity(dec.double(), lab.double(), dim=-1).cpu()
        for tag in self.TAGS:
            pick = torch.tensor([t == tag for t in batch.tags])
            key = (capture.model, capture.layer, tag)
            self._sum[key] = self._sum.get(key, 0.0) + float(cos[pick].sum())
            self._count[key] = self._count.get(key, 0) + int(pick.sum())

    def result(self) -> LabelSpaceResult:
        def curve(model: str, tag: str) -> torch.Tensor:
            vals = [
                self._sum.get((model, i, tag), 0.0) / max(1, self._count.get((model, i, tag), 0))
                for i in self.layers
            ]
            return torch.tensor(vals, dtype=torch.float64)

        if not self._count:
            raise RuntimeError("no data: run the reducer (run_reducers) first")
        first = (self.models[0], self.layers[0], "gold")
        return LabelSpaceResult(
            layers=list(self.layers),
            gold={m: curve(m, "gold") for m in self.models},
            non_gold={m: curve(m, "non-gold") for m in self.models},
            n_examples=self._count.get(first, 0),
        )


# -- one-call helpers --------------------------------------------------------------------------


def _models(handle: ModelHandle, prompts: Prompts) -> dict[str, PromptedLM]:
    if prompts is None or isinstance(prompts, SoftPrompt):
        table: Mapping[str, SoftPrompt | None] = (
            {"base": None} if prompts is None else {"base": None, "prompted": prompts}
        )
    else:
        table = prompts
    return {name: PromptedLM(handle, p) for name, p in table.items()}


def _hidden_layers(handle: ModelHandle, layers: Iterable[int] | None) -> list[int]:
    return list(range(handle.geometry.n_layers + 1)) if layers is None else sorted(set(layers))


def isotropy_analysis(
    handle: ModelHandle,
    prompts: Prompts,
    batches: BatchSource,
    *,
    layers: Iterable[int] | None = None,
    n_pairs: int = 1000,
    reservoir: int = 512,
    seed: int = 0,
) -> IsotropyResult:
    """Isotropy per hidden-state layer for the base model and the prompted one.

    ``prompts``: one prompt (models "base" and "prompted"), None (base only) or a mapping of
    run names to prompts (e.g. before/after transfer)."""
    models = _models(handle, prompts)
    reducer = Isotropy(
        _hidden_layers(handle, layers), models, n_pairs=n_pairs, reservoir=reservoir, seed=seed
    )
    run_reducers(models, batches, [reducer])
    return reducer.result()


def label_space(
    handle: ModelHandle,
    prompts: Prompts,
    batches: BatchSource,
    *,
    layers: Iterable[int] | None = None,
) -> LabelSpaceResult:
    """Label-space similarities per hidden-state layer; ``batches`` from
    :func:`~promptatlas.analysis.capture.label_word_batches`."""
    models = _models(handle, prompts)
    reducer = LabelSpace(_hidden_layers(handle, layers), models)
    run_reducers(models, batches, [reducer])
    return reducer.result()
