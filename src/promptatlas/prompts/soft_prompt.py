"""The soft prompt: named segments of trainable (or frozen) vectors, v1 or v2."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from promptatlas.models.adapters import ModelGeometry, context_window
from promptatlas.prompts.config import PromptConfig, PromptConfigError
from promptatlas.prompts.kv import token_key_values

__all__ = [
    "LARGE_PROMPT",
    "PromptSizeWarning",
    "SoftPrompt",
    "check_context",
    "expected_num_parameters",
]

# Soft prompts have 5-150 positions in the literature (Lester et al. 2021: ≤ 150; P-tuning v2:
# ≤ 128); far beyond that is almost always a typo in --length.
LARGE_PROMPT = 1000


class PromptSizeWarning(UserWarning):
    """A prompt far larger than soft prompts usually are."""


def check_context(
    length: int,
    handle: Any,
    *,
    budget: int | None = None,
    task: str | None = None,
    warn: bool = True,
    option: str = "--length",
) -> None:
    """Check, before any allocation or forward pass, that a ``length``-position prompt — plus
    ``budget`` tokens of input and target (the formatter's ``max_length``) — fits the context
    window of ``handle``'s model (``max_position_embeddings``, GPT-2's ``n_positions``; every
    family: learned position tables end there and rotary models were not trained beyond it).
    Raises :class:`PromptConfigError` naming the numbers and the fix (``option``: the setting
    that sets the prompt length); with ``warn`` a prompt of an absurd size (over
    :data:`LARGE_PROMPT` positions or half the window) gets a :class:`PromptSizeWarning`."""
    window = context_window(handle.model.config)
    name = getattr(handle, "name", "the model")
    if window is not None:
        if length >= window:
            raise PromptConfigError(
                f"a {length}-position prompt does not fit {name}'s context window of {window} "
                f"positions (it leaves no room for the input); use a shorter prompt ({option}; "
                "soft prompts usually have 5-150 positions)"
            )
        if budget is not None and length + budget > window:
            what = f"task {task}" if task else "the task"
            fixes = [f"a shorter prompt ({option} ≤ {window - budget})"] if window > budget else []
            if window - length >= 8:
                fixes.append(f"a smaller budget (format max_length ≤ {window - length})")
            raise PromptConfigError(
                f"a {length}-position prompt plus {what}'s budget of {budget} input/target "
                f"tokens ({length + budget}) exceeds {name}'s context window of {window} "
                f"positions; use {' or '.join(fixes) or 'a model with a longer context'}"
            )
    if warn and (length > LARGE_PROMPT or (window is not None and length > window // 2)):
        warnings.warn(
            f"a {length}-position prompt is far larger than soft prompts usually are (5-150 "
            f"positions): it costs memory and time in every step; check {option}",
            PromptSizeWarning,
            stacklevel=2,
        )


def expected_num_parameters(config: PromptConfig, geometry: ModelGeometry) -> int:
    """Closed-form parameter count: v1 = k·d; v2 = |layers|·k·d_kv (×2 for separate k/v).

    For mGPT (d=d_kv=2048, 24 layers, k=20, shared): v1 = 40,960 and v2 = 983,040 (thesis §5.1)."""
    k = config.length
    if config.method == "v1":
        return k * geometry.d_model
    n_layers = len(config.layer_indices(geometry.n_layers))
    per_layer = k * geometry.d_kv * (2 if config.kv == "separate" else 1)
    return n_layers * per_layer


class SoftPrompt(nn.Module):
    """A soft prompt for one model geometry.

    Segment tensors have the token axis at ``token_dim``:
      v1: (k, d_model); v2 shared: (L, k, d_kv); v2 separate: (L, 2, k, d_kv) with [:,0]=keys,
      [:,1]=values, for the L layers in ``layer_indices``.
    """

    def __init__(self, config: PromptConfig, geometry: ModelGeometry) -> None:
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.layer_indices = (
            config.layer_indices(geometry.n_layers) if config.method == "v2" else ()
        )
        self.segments = nn.ParameterDict()
        for seg in config.segments:
            shape = self.segment_shape(seg.length)
            self.segments[seg.name] = nn.Parameter(torch.zeros(shape), requires_grad=seg.trainable)

    # -- shapes --------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.config.method

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def token_dim(self) -> int:
        if self.config.method == "v1":
            return 0
        return 2 if self.config.kv == "separate" else 1

    def segment_shape(self, length: int) -> tuple[int, ...]:
        g = self.geometry
        if self.config.method == "v1":
            return (length, g.d_model)
        n = len(self.layer_indices)
        if self.config.kv == "separate":
            return (n, 2, length, g.d_kv)
        return (n, length, g.d_kv)

    # -- values --------------------------------------------------------------------------
    def tensor(self) -> torch.Tensor:
        """All segments concatenated along the token axis, in configuration order."""
        parts = [self.segments[s.name] for s in self.config.segments]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=self.token_dim)

    def key_values(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """v2: per selected layer (keys, values), each (k, d_kv)."""
        if self.config.method != "v2":
            raise PromptConfigError("key_values() is for v2 prompts")
        full = self.tensor()
        if self.config.kv == "separate":
            return [(full[i, 0], full[i, 1]) for i in range(full.shape[0])]
        return [(full[i], full[i]) for i in range(full.shape[0])]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.segments.values() if p.requires_grad or not trainable_only
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.segments.values() if p.requires_grad]

    def segment_names(self) -> list[str]:
        return [s.name for s in self.config.segments]

    def set_trainable(self, name: str, trainable: bool) -> None:
        self._segment(name).requires_grad_(trainable)

    def set_segment(self, name: str, value: torch.Tensor) -> None:
        """Overwrite a segment's values (e.g. transfer from a source prompt); shapes must match."""
        param = self._segment(name)
        if tuple(value.shape) != tuple(param.shape):
            raise PromptConfigError(
                f"segment {name!r} has shape {tuple(param.shape)}; got a tensor of shape "
                f"{tuple(value.shape)} (different model geometry, length or method?)"
            )
        with torch.no_grad():
            param.copy_(value.to(param.dtype))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """A snapshot: copies, never views of the live parameters (which training changes in
        place), so a kept best prompt or a checkpoint does not move on with later steps."""
        return {name: p.detach().cpu().clone().contiguous() for name, p in self.segments.items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.segments) - set(tensors)
        extra = set(tensors) - set(self.segments)
        if missing or extra:
            raise PromptConfigError(
                f"prompt tensors do not match the segments: missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        for name, value in tensors.items():
            self.set_segment(name, value)

    def _segment(self, name: str) -> nn.Parameter:
        if name not in self.segments:
            raise PromptConfigError(f"no segment {name!r}; segments: {self.segment_names()}")
        param: nn.Parameter = self.segments[name]
        return param

    # -- initialisation ---------------------------------------------------------------------
    def initialise(
        self,
        handle: Any,
        *,
        generator: torch.Generator,
        label_token_ids: Sequence[int] | None = None,
        segments: Sequence[str] | None = None,
    ) -> None:
        """Fill segments according to ``config.init``; deterministic given ``generator``."""
        names = list(segments) if segments is not None else self.segment_names()
        for seg in self.config.segments:
            if seg.name not in names:
                continue
            shape = self.segment_shape(seg.length)
            init = self.config.resolved_init
            if init == "uniform":
                r = self.config.init_range
                value = (torch.rand(shape, generator=generator) * 2 - 1) * r
            else:
                if init == "labels":
                    if not label_token_ids:
                        raise PromptConfigError(
                            "init='labels' needs the task's label words (classification tasks)"
                        )
                    ids = [label_token_ids[i % len(label_token_ids)] for i in range(seg.length)]
                else:
                    ids = _sample_vocab_ids(handle, seg.length, generator)
                value = _token_states(self, handle, ids)
            self.set_segment(seg.name, value)


def _sample_vocab_ids(handle: Any, n: int, generator: torch.Generator) -> list[int]:
    """Random ids among the first 5,000 non-special tokens (Lester et al. sample frequent ones)."""
    special = set(handle.tokenizer.all_special_ids)
    pool = [
        i for i in range(min(handle.geometry.vocab_size, 5000 + len(special))) if i not in special
    ]
    picks = torch.randint(0, len(pool), (n,), generator=generator)
    return [pool[int(i)] for i in picks]


@torch.no_grad()
def _token_states(prompt: SoftPrompt, handle: Any, ids: Sequence[int]) -> torch.Tensor:
    """v1: the (scaled) input embeddings of ``ids``; v2: the keys/values the model itself
    produces for that token sequence in each chosen layer (shared k=v takes the values)."""
    ids_t = torch.tensor([list(ids)], device=handle.device)
    if prompt.config.method == "v1":
        emb = handle.adapter.input_embeddings(handle.model)(ids_t)[0]
        return emb.float().cpu()
    kvs = token_key_values(handle, ids_t)
    chosen = [kvs[i] for i in prompt.layer_indices]
    if prompt.config.kv == "separate":
        return torch.stack([torch.stack([k, v]) for k, v in chosen]).float().cpu()
    return torch.stack([v for _, v in chosen]).float().cpu()
