"""The capture engine: one forward pass per batch feeds streaming *reducers*.

An analysis is a set of :class:`Reducer` objects. Each declares, per model run, which
internals it needs (:class:`CaptureRequest`: attention probabilities, FFN intermediate
activations, hidden states, each for chosen layers). :func:`run_reducers` runs every model
(typically ``{"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}``) once per
batch with hooks found through the architecture adapter, and hands every captured tensor to
the reducers *while the forward pass is running* (one layer at a time). Reducers keep running
aggregates only, so memory does not grow with the number of examples, and at most one layer's
attention map is alive at any time (the model itself discards it once the layer is done,
because ``output_attentions`` is never switched on).

What is captured and where (indices are decoder layers ``0..L-1``):

* ``attention`` l: the post-softmax probabilities returned by ``adapter.attention(layer)``,
  (B, H, T_q, T_k). Needs eager attention (SDPA/flash kernels never materialise them).
* ``ffn`` l: the input of ``adapter.ffn_down(layer)`` (the FFN intermediate activation),
  (B, T_q, d_ffn).
* ``hidden`` l for ``l = 0..L`` in the Hugging Face ``output_hidden_states`` convention: index
  0 is the input of the first layer (embeddings), index l the output of layer l-1, and index L
  the final (normed) output of the backbone.

Tensors keep the prompt positions. :class:`LayerCapture` knows the layout (a v1 prompt adds k
query *and* key positions before the inputs; a v2 prefix adds k key positions only) and gives
input-aligned views (:meth:`LayerCapture.inputs`, :meth:`LayerCapture.at`), so reducers index
every model by the same input positions.

Per example the batch records which input positions are special (bos / separators / other
special tokens), ordinary input tokens, teacher-forced target tokens or padding
(:data:`PAD`, :data:`SPECIAL`, :data:`INPUT`, :data:`TARGET`), and the decoding token (the
last context position, whose next-token prediction is the label).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from promptatlas.formatting import TaskFormatter
from promptatlas.prompts.injection import PromptedLM
from promptatlas.tasks import Example

__all__ = [
    "INPUT",
    "PAD",
    "SPECIAL",
    "TARGET",
    "AnalysisBatch",
    "AnalysisRow",
    "AttentionImplementationError",
    "BatchSource",
    "CaptureKind",
    "CaptureRequest",
    "DecodingStates",
    "LayerCapture",
    "PromptLayout",
    "Reducer",
    "capture_batch",
    "capture_layers",
    "context_batches",
    "context_row",
    "label_word_batches",
    "make_batches",
    "prompt_only_batch",
    "run_reducers",
]

CaptureKind = Literal["attention", "ffn", "hidden"]

# Position kinds (per example, per input position).
PAD = 0
SPECIAL = 1
INPUT = 2
TARGET = 3


class AttentionImplementationError(RuntimeError):
    """Attention probabilities were requested from a model that does not materialise them."""


# -- batches with position bookkeeping -------------------------------------------------------


@dataclass(frozen=True)
class AnalysisRow:
    """One sequence to analyse: token ids, the kind of every position and its decoding token.

    ``n_context`` is the number of context tokens (``<bos> x <sep> ...``); ids after it are
    teacher-forced target tokens. The decoding token is position ``n_context - 1``.
    ``example_id`` ties rows built from the same example together; ``tag`` says what the row
    is for (e.g. ``"gold"`` / ``"non-gold"`` in the label-space analysis).
    """

    ids: tuple[int, ...]
    kinds: tuple[int, ...]
    n_context: int
    example_id: int = 0
    tag: str = ""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.kinds):
            raise ValueError("ids and kinds must have the same length")
        if not 1 <= self.n_context <= len(self.ids):
            raise ValueError(f"n_context must be in 1..{len(self.ids)}, got {self.n_context}")


@dataclass
class AnalysisBatch:
    """Right-padded rows (dynamic padding) with per-position kinds."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    kinds: torch.Tensor  # (B, T) PAD / SPECIAL / INPUT / TARGET
    decoding: torch.Tensor  # (B,) index of the decoding token
    example_ids: torch.Tensor  # (B,)
    tags: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[AnalysisRow], pad_id: int) -> AnalysisBatch:
        if not rows:
            raise ValueError("a batch needs at least one row")
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        kinds = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
            kinds[i, : len(r.ids)] = torch.tensor(r.kinds, dtype=torch.long)
        return cls(
            input_ids=ids,
            attention_mask=(kinds != PAD).long(),
            kinds=kinds,
            decoding=torch.tensor([r.n_context - 1 for r in rows], dtype=torch.long),
            example_ids=torch.tensor([r.example_id for r in rows], dtype=torch.long),
            tags=tuple(r.tag for r in rows),
        )

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)

    def to(self, device: torch.device) -> AnalysisBatch:
        return AnalysisBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.kinds.to(device),
            self.decoding.to(device),
            self.example_ids.to(device),
            self.tags,
        )


def _tokenize(formatter: TaskFormatter, text: str) -> list[int]:
    ids: list[int] = list(formatter.tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _context_kinds(formatter: TaskFormatter, example: Example, ids: Sequence[int]) -> list[int]:
    """Kinds of the positions of a context built by ``formatter.encode_context``.

    encode_context truncates each input to a prefix of its own tokenisation, so the layout
    ``bos, x1[:a1], sep, x2[:a2], sep`` is recovered exactly by matching prefixes (longest
    first). Should the match fail (a formatter that builds contexts differently), fall back to
    marking the tokenizer's special ids and the final separator."""
    sep = list(formatter.sep)
    parts = [_tokenize(formatter, x) for x in example.inputs]
    ids = list(ids)
    n_bos = len(formatter.bos) if ids[: len(formatter.bos)] == list(formatter.bos) else 0

    def match(pos: int, index: int) -> list[int] | None:
        if index == len(parts):
            return [] if pos == len(ids) else None
        full = parts[index]
        for keep in range(min(len(full), len(ids) - pos - len(sep)), -1, -1):
            end = pos + keep
            if ids[pos:end] == full[:keep] and ids[end : end + len(sep)] == sep:
                rest = match(end + len(sep), index + 1)
                if rest is not None:
                    return [INPUT] * keep + [SPECIAL] * len(sep) + rest
        return None

    tail = match(n_bos, 0)
    if tail is None:
        kinds = [INPUT] * len(ids)
        for i in range(n_bos):
            kinds[i] = SPECIAL
        for i in range(max(0, len(ids) - len(sep)), len(ids)):
            kinds[i] = SPECIAL
    else:
        kinds = [SPECIAL] * n_bos + tail
    special = set(getattr(formatter.tokenizer, "all_special_ids", ()) or ())
    return [SPECIAL if t in special else k for t, k in zip(ids, kinds, strict=True)]


def _reserve(formatter: TaskFormatter, example: Example) -> int:
    # The same budget as training (context + target fit max_length), so analyses see the
    # contexts the prompt was trained on.
    return len(formatter.encode_target(example.target))


def context_row(
    formatter: TaskFormatter,
    example: Example,
    *,
    suffix: Sequence[int] = (),
    example_id: int = 0,
    tag: str = "",
    reserve: int | None = None,
) -> AnalysisRow:
    """The context ``<bos> x <sep> [x2 <sep>]`` of one example (plus optional teacher-forced
    ``suffix`` tokens) with the kind of every position."""
    budget = _reserve(formatter, example) if reserve is None else reserve
    ids = formatter.encode_context(example, reserve=max(budget, len(suffix)))
    kinds = _context_kinds(formatter, example, ids)
    return AnalysisRow(
        ids=(*ids, *suffix),
        kinds=(*kinds, *([TARGET] * len(suffix))),
        n_context=len(ids),
        example_id=example_id,
        tag=tag,
    )


def make_batches(
    rows: Sequence[AnalysisRow], pad_id: int, *, batch_size: int = 16, sort: bool = True
) -> list[AnalysisBatch]:
    """Group rows into dynamically padded batches (sorted by length for less padding; rows
    keep their ``example_id`` so results can be mapped back)."""
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids)) if sort else range(len(rows))
    ordered = [rows[i] for i in order]
    return [
        AnalysisBatch.from_rows(ordered[i : i + batch_size], pad_id)
        for i in range(0, len(ordered), batch_size)
    ]


def _pad_id(formatter: TaskFormatter) -> int:
    pad = formatter.tokenizer.pad_token_id
    return int(pad if pad is not None else formatter.eos_id)


def context_batches(
    formatter: TaskFormatter,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    reserve: int | None = None,
) -> list[AnalysisBatch]:
    """Batches of example contexts (the inputs of the attention and isotropy analyses)."""
    rows = [
        context_row(formatter, ex, example_id=i, reserve=reserve) for i, ex in enumerate(examples)
    ]
    return make_batches(rows, _pad_id(formatter), batch_size=batch_size)


def label_word_batches(
    formatter: TaskFormatter,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> list[AnalysisBatch]:
    """Teacher-forced rows for the label-space analysis: per example, context + the first
    token of the gold label word (tag ``"gold"``) and context + the first token of a non-gold
    label word (tag ``"non-gold"``; a seeded random one for multi-class tasks, among the label
    words whose first token differs from the gold one's when there are any).

    Both rows share the context, so their decoding-token states are identical (causal
    attention); the label token sits at position ``decoding + 1``."""
    task = formatter.task
    if task.spec.kind != "classification" or len(task.labels) < 2:
        raise ValueError(f"the label space needs a classification task; {task.name} is not one")
    label_ids = formatter.label_token_ids()
    gen = torch.Generator().manual_seed(seed)
    rows: list[AnalysisRow] = []
    reserve = max(len(v) for v in label_ids.values())
    for i, ex in enumerate(examples):
        gold = ex.label if ex.label is not None else task.label_of_word(ex.target)
        others = [lab for lab in task.labels if lab != gold]
        # Prefer label words whose first token differs from the gold one's (otherwise both
        # rows are the same sequence); fall back to any other label.
        distinct = [lab for lab in others if label_ids[lab][0] != label_ids[gold][0]]
        pool = distinct or others
        other = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        for tag, lab in (("gold", gold), ("non-gold", other)):
            first = label_ids[lab][:1]
            rows.append(
                context_row(formatter, ex, suffix=first, example_id=i, tag=tag, reserve=reserve)
            )
    return make_batches(rows, _pad_id(formatter), batch_size=batch_size)


def prompt_only_batch(source: TaskFormatter | Sequence[int]) -> AnalysisBatch:
    """The input ``[P, <sep>]`` of the ON score (Su et al.): only the separator tokens (the
    prompt is added by the model run); the decoding token is the last separator token.

    ``source`` is a formatter (its separator) or the separator token ids themselves."""
    sep = list(source.sep) if isinstance(source, TaskFormatter) else [int(t) for t in source]
    if not sep:
        raise ValueError("the separator has no tokens")
    row = AnalysisRow(ids=tuple(sep), kinds=(SPECIAL,) * len(sep), n_context=len(sep))
    return AnalysisBatch.from_rows([row], pad_id=0)


# -- what to capture --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureRequest:
    """Layers whose attention / FFN activation / hidden state a reducer needs."""

    attention: frozenset[int] = frozenset()
    ffn: frozenset[int] = frozenset()
    hidden: frozenset[int] = frozenset()  # 0..L, Hugging Face hidden_states indices

    @classmethod
    def of(
        cls,
        *,
        attention: Iterable[int] = (),
        ffn: Iterable[int] = (),
        hidden: Iterable[int] = (),
    ) -> CaptureRequest:
        return cls(frozenset(attention), frozenset(ffn), frozenset(hidden))

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            self.attention | other.attention, self.ffn | other.ffn, self.hidden | other.hidden
        )

    def __bool__(self) -> bool:
        return bool(self.attention or self.ffn or self.hidden)

    def wants(self, kind: CaptureKind, layer: int) -> bool:
        group: frozenset[int] = getattr(self, kind)
        return layer in group

    def validate(self, n_layers: int) -> None:
        for kind, top in (("attention", n_layers), ("ffn", n_layers), ("hidden", n_layers + 1)):
            bad = sorted(i for i in getattr(self, kind) if not 0 <= i < top)
            if bad:
                raise ValueError(
                    f"{kind} layers {bad} do not exist (valid 0..{top - 1} for a model with "
                    f"{n_layers} layers)"
                )


@dataclass(frozen=True)
class PromptLayout:
    """Where the prompt sits in a model run's sequences."""

    n_prompt: int = 0
    method: str | None = None  # None (base model), "v1" or "v2"

    @classmethod
    def of(cls, plm: PromptedLM) -> PromptLayout:
        prompt = plm.prompt
        return cls(0, None) if prompt is None else cls(prompt.length, prompt.method)

    @property
    def query_offset(self) -> int:
        """Prompt positions before the inputs on the query/sequence axis (v1 only)."""
        return self.n_prompt if self.method == "v1" else 0

    @property
    def key_offset(self) -> int:
        """Prompt positions before the inputs on the key axis (v1 and v2)."""
        return self.n_prompt


@dataclass
class LayerCapture:
    """One captured tensor of one layer for one batch and model run (float32, with prompt
    positions). Valid only during :meth:`Reducer.update`: keep reductions, not the tensor."""

    model: str
    kind: CaptureKind
    layer: int
    tensor: torch.Tensor
    batch: AnalysisBatch
    layout: PromptLayout

    def inputs(self) -> torch.Tensor:
        """The input-position part: attention (B, H, T, T) (prompt rows and columns dropped),
        FFN / hidden (B, T, D)."""
        q = self.layout.query_offset
        if self.kind == "attention":
            return self.tensor[:, :, q:, self.layout.key_offset :]
        return self.tensor[:, q:]

    def prompt_part(self) -> torch.Tensor:
        """FFN / hidden at the v1 prompt positions (B, k, D); attention to the prompt
        (B, H, T, k) for v1 and v2."""
        if self.kind == "attention":
            return self.tensor[:, :, self.layout.query_offset :, : self.layout.key_offset]
        return self.tensor[:, : self.layout.query_offset]

    def at(self, positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors at one input position per row: FFN / hidden (R, D), attention (R, H, T)
        (the query row over input keys). ``rows`` selects rows (default: all, in order)."""
        x = self.inputs()
        idx = torch.arange(x.shape[0], device=x.device) if rows is None else rows.to(x.device)
        pos = positions.to(x.device)
        if self.kind == "attention":
            return x[idx, :, pos]
        return x[idx, pos]


# -- reducers -------------------------------------------------------------------------------


class Reducer:
    """Consumes captured tensors batch by batch and keeps running aggregates.

    Life cycle, driven by :func:`run_reducers`: for each pass ``p < n_passes``:
    ``start_pass(p)``; for each batch ``begin_batch(batch)``, then for every model run and
    every captured (kind, layer) the reducer asked for via ``request(model, p)``:
    ``update(capture)``; then ``end_batch(batch)``; finally ``end_pass(p)``.
    Reducers needing a statistic of the whole data set before the final one (e.g. a mean
    before absolute deviations) ask for two passes.
    """

    n_passes: int = 1

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        raise NotImplementedError

    def start_pass(self, pass_index: int) -> None:
        """Called before the first batch of a pass."""

    def begin_batch(self, batch: AnalysisBatch) -> None:
        """Called once per batch, before any model runs (e.g. to draw random positions that
        every model then uses)."""

    def update(self, capture: LayerCapture) -> None:
        raise NotImplementedError

    def end_batch(self, batch: AnalysisBatch) -> None:
        """Called after every model ran on the batch (e.g. to combine base and prompted)."""

    def end_pass(self, pass_index: int) -> None:
        """Called after the last batch of a pass."""


class DecodingStates(Reducer):
    """Stores, per model and layer, the vector of one kind at each row's decoding token.

    This reducer *keeps one vector per row* (memory grows with rows): meant for small inputs
    such as the prompt-only ``[P, <sep>]`` rows of the ON score."""

    def __init__(
        self, kind: Literal["ffn", "hidden"], layers: Iterable[int], models: Iterable[str]
    ) -> None:
        self.kind: Literal["ffn", "hidden"] = kind
        self.layers = sorted(set(layers))
        self.models = set(models)
        self._rows: dict[str, dict[int, list[torch.Tensor]]] = {}
        self._ids: dict[str, list[torch.Tensor]] = {}

    def request(self, model: str, pass_index: int) -> CaptureRequest:
        if model not in self.models:
            return CaptureRequest()
        if self.kind == "ffn":
            return CaptureRequest.of(ffn=self.layers)
        return CaptureRequest.of(hidden=self.layers)

    def update(self, capture: LayerCapture) -> None:
        vec = capture.at(capture.batch.decoding).detach().cpu()
        self._rows.setdefault(capture.model, {}).setdefault(capture.layer, []).append(vec)
        if capture.layer == self.layers[0]:
            self._ids.setdefault(capture.model, []).append(capture.batch.example_ids.cpu())

    def result(self) -> dict[str, torch.Tensor]:
        """Per model a tensor (n_rows, n_layers, D) in the order the rows were seen."""
        out = {}
        for model, per_layer in self._rows.items():
            out[model] = torch.stack([torch.cat(per_layer[i]) for i in self.layers], dim=1)
        return out

    def example_ids(self, model: str) -> torch.Tensor:
        return torch.cat(self._ids[model])


# -- the engine -------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook once every requested layer was captured (skips the remaining layers)."""


def _check_eager(plm: PromptedLM) -> None:
    impl = getattr(plm.handle.model.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise AttentionImplementationError(
            f"attention probabilities need eager attention, but model {plm.handle.name!r} runs "
            f"with attn_implementation={impl!r}. Load it with "
            "load_model(..., attn_implementation='eager') (the default)."
        )


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    last = getattr(value, "last_hidden_state", None)
    if isinstance(last, torch.Tensor):
        return last
    raise TypeError(f"cannot find a hidden-state tensor in {type(value).__name__}")


@torch.no_grad()
def capture_layers(
    plm: PromptedLM,
    batch: AnalysisBatch,
    request: CaptureRequest,
    sink: Callable[[LayerCapture], None],
    *,
    model_name: str = "model",
) -> None:
    """One forward pass of ``plm`` on ``batch``; ``sink`` receives every requested tensor as
    soon as its layer has computed it. No LM head runs, and the pass stops after the last
    layer that is needed."""
    if not request:
        return
    handle = plm.handle
    adapter = handle.adapter
    n_layers = handle.geometry.n_layers
    request.validate(n_layers)
    if request.attention:
        _check_eager(plm)
    batch = batch.to(plm.device)
    layout = PromptLayout.of(plm)
    layers = adapter.layers(handle.model)

    def emit(kind: CaptureKind, layer: int, tensor: torch.Tensor) -> None:
        sink(LayerCapture(model_name, kind, layer, tensor.detach().float(), batch, layout))

    hooks: list[Any] = []

    def attention_hook(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            if not isinstance(weights, torch.Tensor):
                raise AttentionImplementationError(
                    f"layer {index}'s attention module returned no probabilities; load the "
                    "model with attn_implementation='eager'"
                )
            emit("attention", index, weights)

        return hook

    def ffn_hook(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            emit("ffn", index, args[0])

        return hook

    def hidden_pre_hook(index: int, stop: bool) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if index in request.hidden:
                emit("hidden", index, args[0] if args else kwargs["hidden_states"])
            if stop:
                raise _StopForward

        return hook

    def final_hook(_module: nn.Module, _args: Any, output: Any) -> None:
        emit("hidden", n_layers, _first_tensor(output))

    # First layer not needed at all: attention/FFN of layer l need layer l to run; hidden
    # index l < L is the input of layer l, so layer l itself need not run.
    needed = [i + 1 for i in (*request.attention, *request.ffn)] + list(request.hidden)
    stop_at = max(needed)
    try:
        for i in sorted(request.attention):
            hooks.append(adapter.attention(layers[i]).register_forward_hook(attention_hook(i)))
        for i in sorted(request.ffn):
            hooks.append(adapter.ffn_down(layers[i]).register_forward_pre_hook(ffn_hook(i)))
        for i in range(n_layers):
            stop = i == stop_at
            if i in request.hidden or stop:
                hooks.append(
                    layers[i].register_forward_pre_hook(hidden_pre_hook(i, stop), with_kwargs=True)
                )
        if n_layers in request.hidden:
            backbone = adapter.backbone(handle.model)
            hooks.append(backbone.register_forward_hook(final_hook))
        with contextlib.suppress(_StopForward):
            plm.forward(batch.input_ids, batch.attention_mask)
    finally:
        for h in hooks:
            h.remove()


def capture_batch(
    plm: PromptedLM, batch: AnalysisBatch, request: CaptureRequest, *, model_name: str = "model"
) -> dict[tuple[CaptureKind, int], LayerCapture]:
    """Everything requested for one batch, kept in memory: for tests and small inputs."""
    out: dict[tuple[CaptureKind, int], LayerCapture] = {}

    def sink(capture: LayerCapture) -> None:
        out[(capture.kind, capture.layer)] = capture

    capture_layers(plm, batch, request, sink, model_name=model_name)
    return out


BatchSource = Iterable[AnalysisBatch] | Callable[[], Iterable[AnalysisBatch]]


def _iterate(batches: BatchSource, pass_index: int) -> Iterable[AnalysisBatch]:
    if callable(batches):
        return batches()
    if pass_index > 0 and isinstance(batches, Iterator):
        raise TypeError(
            "this analysis reads the data twice (it needs a data-set mean first); pass a list "
            "of batches or a callable returning a fresh iterator, not a one-shot iterator"
        )
    return batches


def run_reducers(
    models: Mapping[str, PromptedLM],
    batches: BatchSource,
    reducers: Sequence[Reducer],
) -> None:
    """Drive ``reducers`` over ``batches``: per batch each named model runs once (only if some
    active reducer wants something from it), with the union of the requested captures.

    ``batches`` is a list (or any re-iterable) of :class:`AnalysisBatch`, or a callable that
    returns a fresh iterable; a one-shot iterator works for single-pass reducers only."""
    if not reducers:
        return
    n_passes = max(r.n_passes for r in reducers)
    for p in range(n_passes):
        active = [r for r in reducers if r.n_passes > p]
        for r in active:
            r.start_pass(p)
        requests = {
            name: [(r, r.request(name, p)) for r in active] for name in models
        }  # per model: who wants what
        for batch in _iterate(batches, p):
            for r in active:
                r.begin_batch(batch)
            for name, plm in models.items():
                wanted = [(r, req) for r, req in requests[name] if req]
                if not wanted:
                    continue
                union = CaptureRequest()
                for _, req in wanted:
                    union = union | req

                def sink(capture: LayerCapture, wanted: list[Any] = wanted) -> None:
                    for reducer, req in wanted:
                        if req.wants(capture.kind, capture.layer):
                            reducer.update(capture)

                capture_layers(plm, batch, union, sink, model_name=name)
            for r in active:
                r.end_batch(batch)
        for r in active:
            r.end_pass(p)
