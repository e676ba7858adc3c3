"""Reading FFN neurons of any supported family (spec §0 of skill-neurons-and-indicators).

A *neuron* (l, i) is coordinate i of the input of layer l's FFN down-projection, written a:

* GPT-2: a = GELU(c_fc h) (Conv1D weights stored (in, out));
* Llama: a = SiLU(gate_proj h) ⊙ up_proj h;
* Gemma: a = gelu_tanh(gate_proj h) ⊙ up_proj h.

Changing a_i changes the FFN output by exactly Δa_i · W_down[:, i] in every family, so
selection, perturbation and pruning all act on this one quantity (``state="down_input"``).
For gated FFNs a_i > 0 is not "firing" (up_proj sets the sign), so the gate pre-activation g
is offered as the state too (``state="gate"``; GPT-2: the c_fc output before the GELU); g > 0
⇔ act(g) > 0, so on GPT-2 both states binarise identically.

Where a state is read (``position``): a prefix prompt cannot see the input in a causal LM, so
the default is the decoding token (the last context position); ``input_mean`` / ``input_max``
reduce over the ordinary input tokens (no special tokens, no padding); ``last_k`` reads each of
the last k context positions separately (the predictivity then takes the best of them, as the
reference takes the best prompt position). Label or teacher-forced positions are never read:
rows are contexts only, and every readout stays at or before the decoding token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from promptatlas.analysis.capture import (
    INPUT,
    PAD,
    AnalysisBatch,
    CaptureRequest,
    LayerCapture,
    PromptLayout,
    capture_layers,
)
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM

__all__ = [
    "POSITIONS",
    "STATES",
    "FFNLayout",
    "NeuronRead",
    "Position",
    "StateKind",
    "ffn_layout",
    "ffn_parts",
    "n_readouts",
    "read_neurons",
    "readout",
    "token_sums",
]

StateKind = Literal["down_input", "gate"]
Position = Literal["decoding", "input_mean", "input_max", "last_k"]
STATES: tuple[str, ...] = ("down_input", "gate")
POSITIONS: tuple[str, ...] = ("decoding", "input_mean", "input_max", "last_k")


@dataclass(frozen=True)
class FFNLayout:
    """Module names inside one FFN. ``gate`` is None for an ungated FFN (GPT-2), whose ``up``
    module (c_fc) then feeds the activation function directly."""

    up: str
    down: str
    gate: str | None = None
    conv1d: bool = False  # GPT-2 Conv1D: weight stored (in, out)

    @property
    def gated(self) -> bool:
        return self.gate is not None


def ffn_layout(handle: ModelHandle, layer: int = 0) -> FFNLayout:
    """The FFN layout of ``handle``'s model, found through its adapter."""
    adapter = handle.adapter
    ffn = adapter.ffn(adapter.layers(handle.model)[layer])
    down = adapter.ffn_down_name
    if hasattr(ffn, "gate_proj") and hasattr(ffn, "up_proj"):
        return FFNLayout(up="up_proj", down=down, gate="gate_proj")
    if hasattr(ffn, "c_fc"):
        return FFNLayout(up="c_fc", down=down, conv1d=True)
    raise NotImplementedError(
        f"no known FFN layout in {type(ffn).__name__} (expected gate_proj/up_proj or c_fc); "
        "skill-neuron analyses need separate gate/up projections"
    )


def ffn_parts(handle: ModelHandle, layer: int) -> tuple[nn.Module, FFNLayout]:
    """Layer ``layer``'s FFN module and its layout."""
    adapter = handle.adapter
    return adapter.ffn(adapter.layers(handle.model)[layer]), ffn_layout(handle, layer)


def n_readouts(position: str, k: int = 1) -> int:
    """How many readout positions per row a ``position`` option gives."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if position == "last_k":
        if k < 1:
            raise ValueError(f"last_k needs k ≥ 1, got {k}")
        return k
    return 1


def readout(x: torch.Tensor, batch: AnalysisBatch, position: str, k: int = 1) -> torch.Tensor:
    """States at the readout positions: input-aligned ``x`` (B, T, D) → (B, P, D).

    Rows without ordinary input tokens (``input_mean``/``input_max``) fall back to every
    non-padding context position; ``last_k`` positions before the first token repeat it."""
    n_readouts(position, k)
    rows = torch.arange(x.shape[0], device=x.device)
    decoding = batch.decoding.to(x.device)
    if position == "decoding":
        return x[rows, decoding][:, None]
    if position == "last_k":
        offsets = torch.arange(k - 1, -1, -1, device=x.device)
        pos = (decoding[:, None] - offsets[None]).clamp(min=0)  # (B, k), oldest first
        return x[rows[:, None], pos]
    kinds = batch.kinds.to(x.device)[:, : x.shape[1]]
    t = torch.arange(x.shape[1], device=x.device)
    context = (kinds != PAD) & (t[None] <= decoding[:, None])
    mask = context & (kinds == INPUT)
    mask = torch.where(mask.any(1, keepdim=True), mask, context)
    if position == "input_mean":
        m = mask.to(x.dtype)[..., None]
        return ((x * m).sum(1) / m.sum(1).clamp(min=1))[:, None]
    return x.masked_fill(~mask[..., None], float("-inf")).amax(1)[:, None]


def token_sums(capture: LayerCapture) -> tuple[torch.Tensor, int]:
    """Sum over every non-padding position the FFN processed (v1 prompt positions included,
    they pass through the FFN too) and the number of positions: ((D,) float64, count)."""
    full = capture.tensor  # (B, k + T, D) for v1, (B, T, D) otherwise
    mask = capture.batch.attention_mask.to(full.device).bool()
    q = capture.layout.query_offset
    if q:
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, q), mask], dim=1)
    m = mask[..., None].to(torch.float64)
    return (full.double() * m).sum((0, 1)), int(mask.sum())


@dataclass
class NeuronRead:
    """One layer's captured states for one batch (valid only inside the sink)."""

    layer: int
    capture: LayerCapture  # .tensor with prompt positions, .inputs() input-aligned

    def at(self, position: str, k: int = 1) -> torch.Tensor:
        return readout(self.capture.inputs(), self.capture.batch, position, k)


class _Stop(Exception):
    pass


def _state_module(handle: ModelHandle, layer: int, state: str) -> nn.Module:
    ffn, layout = ffn_parts(handle, layer)
    if state == "down_input":
        module: nn.Module = getattr(ffn, layout.down)
    else:
        module = getattr(ffn, layout.gate or layout.up)
    return module


@torch.no_grad()
def read_neurons(
    plm: PromptedLM,
    batch: AnalysisBatch,
    layers: Sequence[int],
    sink: Callable[[NeuronRead], None],
    *,
    state: str = "down_input",
    model_name: str = "model",
) -> None:
    """One forward pass of ``plm`` on ``batch``; ``sink`` gets each layer's states (float32,
    (B, k+T, D) with the v1 prompt positions) while the pass runs, layer by layer.

    ``down_input`` goes through the capture engine (:func:`capture_layers`); ``gate`` hooks
    the gate projection's output (GPT-2: c_fc's output, the GELU's input)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    chosen = sorted(set(layers))
    if not chosen:
        return
    if state == "down_input":
        capture_layers(
            plm,
            batch,
            CaptureRequest.of(ffn=chosen),
            lambda c: sink(NeuronRead(c.layer, c)),
            model_name=model_name,
        )
        return
    handle = plm.handle
    n_layers = handle.geometry.n_layers
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist (valid 0..{n_layers - 1})")
    batch = batch.to(plm.device)
    layout = PromptLayout.of(plm)
    hooks: list[Any] = []

    def gate_hook(index: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            cap = LayerCapture(model_name, "ffn", index, output.detach().float(), batch, layout)
            sink(NeuronRead(index, cap))
            if index == chosen[-1] and index + 1 < n_layers:
                raise _Stop

        return hook

    try:
        for i in chosen:
            module = _state_module(handle, i, state)
            hooks.append(module.register_forward_hook(gate_hook(i)))
        with contextlib.suppress(_Stop):
            plm.forward(batch.input_ids, batch.attention_mask)
    finally:
        for h in hooks:
            h.remove()


def iterate_batches(
    batches: Iterable[AnalysisBatch] | Callable[[], Iterable[AnalysisBatch]],
) -> Iterator[AnalysisBatch]:
    """A fresh iteration over a list of batches or a callable returning an iterable."""
    source = batches() if callable(batches) else batches
    yield from source
