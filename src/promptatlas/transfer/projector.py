"""Cross-model prompt projector (Su et al. 2022): map a prompt of model A onto model B.

A two-layer MLP (Linear → tanh → Linear) is applied to every prompt position on its own. The
input at position t is everything the source prompt holds for t: v1 the d_A embedding; v2
shared the concatenation over the prompt's layers of its d_kv_A vectors (L_A·d_kv_A); v2
separate the keys and values of all those layers (2·L_A·d_kv_A). The output is the same for
the target geometry, reshaped into the :class:`~promptatlas.prompts.SoftPrompt` layout. So any
prompt length and segment layout works, and the models may differ in width, depth, number of
key/value heads and tokenizer.

The projector is trained on one task through the frozen target model with the ordinary task
loss: :class:`ProjectedPrompt` is a ``SoftPrompt`` whose values are the projection of a frozen
source prompt, so :class:`~promptatlas.prompts.PromptedLM` and
:func:`~promptatlas.training.train_prompt` train the projector's weights unchanged. Then
:func:`project_prompt` maps prompts of other tasks zero-shot (or as an initialisation).

A stored projector is a directory with ``projector.safetensors`` (the MLP weights) and
``projector.json`` (sizes, geometries, prompt configuration, models, a checksum of the tensors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import nn

from promptatlas.bank import versions
from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.formatting import TaskFormatter
from promptatlas.io import json_default, read_json_object, write_bytes_atomic, write_text_atomic
from promptatlas.models.adapters import ModelGeometry
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.config import PromptConfig, PromptConfigError, SegmentConfig
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example
from promptatlas.training import TrainConfig, TrainResult, train_prompt
from promptatlas.training.trainer import lr_factor

__all__ = [
    "PROJECTOR_FORMAT_VERSION",
    "PROJECTOR_METADATA_FILE",
    "PROJECTOR_TENSORS_FILE",
    "ProjectedPrompt",
    "ProjectorConfig",
    "ProjectorError",
    "ProjectorLoadError",
    "PromptKind",
    "PromptProjector",
    "fit_projector_distance",
    "from_positions",
    "load_projector",
    "position_size",
    "project_prompt",
    "prompt_kind",
    "save_projector",
    "target_prompt_config",
    "to_positions",
    "train_projector",
]

PROJECTOR_FORMAT_VERSION = 1
PROJECTOR_TENSORS_FILE = "projector.safetensors"
PROJECTOR_METADATA_FILE = "projector.json"

PromptKind = Literal["v1", "v2-shared", "v2-separate"]
_KINDS: tuple[str, ...] = ("v1", "v2-shared", "v2-separate")


class ProjectorError(ValueError):
    """An invalid projector configuration, or a prompt/geometry the projector does not fit."""


class ProjectorConfigError(ProjectorError, ConfigError):
    """An invalid projector configuration."""


class ProjectorLoadError(ProjectorError):
    """A stored projector cannot be loaded; the message names the file, the problem and the fix."""


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectorConfig(ConfigBase):
    """Projector hyperparameters.

    hidden: width of the MLP's hidden (tanh) layer.
    dropout: dropout on the hidden layer during training steps (0 = none). It is seeded, so
        training stays deterministic and resumable.
    """

    config_error: ClassVar[type[ConfigError]] = ProjectorConfigError

    hidden: int = 512
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ProjectorConfigError(f"hidden must be an integer ≥ 1, got {self.hidden!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ProjectorConfigError(
                f"dropout must be a probability in [0, 1), got {self.dropout!r}"
            )

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> Self:
        """Strict conversion (:class:`~promptatlas.configtools.ConfigBase`); unknown keys are
        listed together as projector options."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known if isinstance(data, Mapping) else set()
        if unknown:
            raise ProjectorConfigError(
                f"unknown projector option(s) {sorted(unknown)}; valid: {sorted(known)}"
            )
        return super().from_dict(data, path=path)


# -- prompt layout <-> per-position vectors -------------------------------------------------


def prompt_kind(config: PromptConfig) -> PromptKind:
    """ "v1", "v2-shared" or "v2-separate": what a projector input/output position holds."""
    if config.method == "v1":
        return "v1"
    return "v2-separate" if config.kv == "separate" else "v2-shared"


def _token_dim(config: PromptConfig) -> int:
    # Mirrors SoftPrompt.token_dim, which needs an instance.
    if config.method == "v1":
        return 0
    return 2 if config.kv == "separate" else 1


def _position_shape(config: PromptConfig, geometry: ModelGeometry) -> tuple[int, ...]:
    """The shape of one prompt position in the SoftPrompt layout (the token axis removed)."""
    if config.method == "v1":
        return (geometry.d_model,)
    n_layers = len(config.layer_indices(geometry.n_layers))
    if config.kv == "separate":
        return (n_layers, 2, geometry.d_kv)
    return (n_layers, geometry.d_kv)


def position_size(config: PromptConfig, geometry: ModelGeometry) -> int:
    """Values per prompt position: v1 d_model; v2 |layers|·d_kv (×2 for separate keys/values)."""
    return math.prod(_position_shape(config, geometry))


def to_positions(tensor: torch.Tensor, config: PromptConfig) -> torch.Tensor:
    """A prompt tensor in the SoftPrompt layout → (k, values per position)."""
    dim = _token_dim(config)
    return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)


def from_positions(
    flat: torch.Tensor, config: PromptConfig, geometry: ModelGeometry
) -> torch.Tensor:
    """(k, values per position) → a prompt tensor in the SoftPrompt layout for ``geometry``."""
    shape = _position_shape(config, geometry)
    if flat.dim() != 2 or flat.shape[1] != math.prod(shape):
        raise ProjectorError(
            f"expected a (k, {math.prod(shape)}) tensor for a {prompt_kind(config)} prompt on "
            f"{_describe(geometry)}, got {tuple(flat.shape)}"
        )
    return flat.reshape(flat.shape[0], *shape).movedim(0, _token_dim(config))


def _describe(geometry: ModelGeometry) -> str:
    return (
        f"n_layers={geometry.n_layers}, d_model={geometry.d_model}, "
        f"d_kv={geometry.d_kv} ({geometry.n_kv_heads}×{geometry.head_dim})"
    )


def _live_config(prompt: SoftPrompt) -> PromptConfig:
    """The prompt's config with each segment's current trainable flag (set_trainable() may have
    changed it since construction); a ProjectedPrompt has no segment tensors of its own."""
    if isinstance(prompt, ProjectedPrompt):
        return prompt.config
    segments = tuple(
        SegmentConfig(s.name, s.length, bool(prompt.segments[s.name].requires_grad))
        for s in prompt.config.segments
    )
    return dataclasses.replace(prompt.config, segments=segments)


def target_prompt_config(
    config: PromptConfig, target_layers: Sequence[int] | None = None
) -> PromptConfig:
    """The target model's prompt config: the source's, with v2 ``layers`` remapped.

    A v2 source prompt on all layers maps to all target layers unless ``target_layers`` is
    given. Layer indices of a layer-subset source mean nothing on a model of another depth, so
    such a prompt needs explicit ``target_layers``.
    """
    if target_layers is None:
        if config.layers is not None:
            raise ProjectorError(
                f"the source prompt uses layers {list(config.layers)} only; layer indices do not "
                "carry over to another model, so give target_layers= (the target model's layers)"
            )
        return config
    if config.method != "v2":
        raise ProjectorError("target_layers applies to v2 prompts only")
    try:
        return dataclasses.replace(config, layers=tuple(int(i) for i in target_layers))
    except PromptConfigError as exc:
        raise ProjectorError(f"invalid target_layers {list(target_layers)}: {exc}") from exc


# -- the projector -------------------------------------------------------------------------


class PromptProjector(nn.Module):
    """Linear(in → hidden) → tanh → Linear(hidden → out), applied per prompt position.

    ``kind`` records which prompts it maps ("v1", "v2-shared", "v2-separate"), so a prompt of
    another kind is refused even if its size happens to match. Weights are drawn from
    ``generator`` (PyTorch's default Linear distribution, U(±1/√fan_in)) for reproducibility.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: ProjectorConfig | None = None,
        *,
        kind: PromptKind = "v1",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ProjectorError(
                f"in_features and out_features must be ≥ 1, got {in_features}, {out_features}"
            )
        if kind not in _KINDS:
            raise ProjectorError(f"kind must be one of {list(_KINDS)}, got {kind!r}")
        self.config = config or ProjectorConfig()
        self.kind: PromptKind = kind
        self.in_features = in_features
        self.out_features = out_features
        self.fc1 = nn.Linear(in_features, self.config.hidden)
        self.fc2 = nn.Linear(self.config.hidden, out_features)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in (self.fc1, self.fc2):
            bound = 1.0 / math.sqrt(layer.in_features)
            for param in (layer.weight, layer.bias):
                value = torch.rand(param.shape, generator=generator) * 2 - 1
                param.copy_(value * bound)

    def forward(
        self,
        x: torch.Tensor,
        *,
        dropout: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(..., in_features) → (..., out_features).

        dropout: apply hidden-layer dropout (default: in training mode). ``generator`` (on the
        CPU) draws the mask, which makes dropout reproducible.
        """
        if x.shape[-1] != self.in_features:
            raise ProjectorError(
                f"the projector takes {self.in_features} values per prompt position, got "
                f"{x.shape[-1]}"
            )
        hidden = torch.tanh(self.fc1(x))
        p = self.config.dropout
        if p > 0 and (self.training if dropout is None else dropout):
            if generator is None:
                hidden = F.dropout(hidden, p, training=True)
            else:
                keep = torch.rand(hidden.shape, generator=generator) >= p
                hidden = hidden * keep.to(hidden.device, hidden.dtype) / (1 - p)
        out: torch.Tensor = self.fc2(hidden)
        return out

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dropout={self.config.dropout}"


# -- a prompt that is the projection of a frozen source prompt -----------------------------


class _ComputedSegments(nn.ParameterDict):
    """Stands in for SoftPrompt.segments: a projected prompt stores no segment tensors, and code
    that reads them (e.g. save_prompt) gets a clear error instead of a KeyError."""

    def __getitem__(self, key: str) -> Any:
        raise PromptConfigError(
            f"a ProjectedPrompt computes segment {key!r} from its source prompt and has no "
            "stored segments; call to_soft_prompt() first (e.g. before save_prompt)"
        )


def _device_of(module: nn.Module) -> torch.device:
    return next(itertools.chain(module.parameters(), module.buffers())).device


class ProjectedPrompt(SoftPrompt):
    """A target-model soft prompt whose values are ``projector(source prompt)``.

    The source prompt is a frozen buffer; the only trainable parameters are the projector's,
    so ``train_prompt`` on a ``PromptedLM(target_handle, projected)`` trains the projector with
    the task loss through the frozen target model. The configuration (``config``) is the
    source's, with the target's ``layers``; segments keep their names, lengths and trainable
    flags (flags matter only for the plain prompt from :meth:`to_soft_prompt`).

    Dropout (``projector.config.dropout``) acts only in training mode while gradients are
    recorded, so evaluations inside training see the deterministic projection. Its masks come
    from (``seed``, number of dropout steps so far), and that counter is part of
    :meth:`state_tensors`, so a resumed run replays an uninterrupted one exactly.
    """

    source_positions: torch.Tensor  # (k, projector.in_features), frozen
    dropout_step: torch.Tensor  # scalar int64: dropout masks drawn so far

    def __init__(
        self,
        source: SoftPrompt,
        projector: PromptProjector,
        target_geometry: ModelGeometry,
        *,
        target_layers: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        source_config = _live_config(source)
        config = target_prompt_config(source_config, target_layers)
        kind = prompt_kind(source_config)
        if projector.kind != kind:
            raise ProjectorError(
                f"the projector maps {projector.kind} prompts; got a {kind} prompt"
            )
        n_in = position_size(source_config, source.geometry)
        if n_in != projector.in_features:
            raise ProjectorError(
                f"the projector takes {projector.in_features} values per prompt position, but "
                f"this {kind} prompt has {n_in} ({_describe(source.geometry)}"
                f"{_layer_note(source_config, source.geometry)}); it was trained for another "
                "source model or layer set"
            )
        try:
            super().__init__(config, target_geometry)
        except PromptConfigError as exc:
            raise ProjectorError(f"the target model cannot hold this prompt: {exc}") from exc
        n_out = position_size(config, target_geometry)
        if n_out != projector.out_features:
            raise ProjectorError(
                f"the projector produces {projector.out_features} values per prompt position, "
                f"but a {kind} prompt on the target ({_describe(target_geometry)}"
                f"{_layer_note(config, target_geometry)}) needs {n_out}; it was trained for "
                "another target model or layer set"
            )
        self.segments = _ComputedSegments()
        self.projector = projector
        self.seed = int(seed)
        self.source_geometry = source.geometry
        self.source_config = source_config
        positions = to_positions(source.tensor().detach(), source_config).float()
        # On the projector's device: a loaded (CPU) projector may map a prompt living elsewhere.
        self.register_buffer("source_positions", positions.to(_device_of(projector)).clone())
        self.register_buffer("dropout_step", torch.zeros((), dtype=torch.long))

    # -- values ------------------------------------------------------------------------------
    def tensor(self) -> torch.Tensor:
        """The projected prompt in the target layout (differentiable w.r.t. the projector)."""
        generator = None
        dropout = (
            self.projector.training
            and self.projector.config.dropout > 0
            and torch.is_grad_enabled()
        )
        if dropout:
            step = int(self.dropout_step)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            with torch.no_grad():
                self.dropout_step += 1
        flat = self.projector(self.source_positions, dropout=dropout, generator=generator)
        return from_positions(flat, self.config, self.geometry)

    def to_soft_prompt(self) -> SoftPrompt:
        """A plain, detached SoftPrompt for the target geometry with the source's segments."""
        with torch.no_grad():
            full = self.tensor()
        prompt = SoftPrompt(self.config, self.geometry)
        lengths = [s.length for s in self.config.segments]
        for seg, value in zip(
            self.config.segments, torch.split(full, lengths, dim=self.token_dim), strict=True
        ):
            prompt.set_segment(seg.name, value)
        return prompt.to(self.source_positions.device)

    # -- parameters and state ------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.projector.parameters() if p.requires_grad or not trainable_only
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.projector.parameters() if p.requires_grad]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """A snapshot (copies, on the CPU) of the projector weights, the dropout step and the
        frozen source; copies because the trainer keeps it as the best state while training
        goes on, and .cpu() of a CPU tensor would alias the live weights."""
        out = {
            f"projector.{name}": value.detach().cpu().clone()
            for name, value in self.projector.state_dict().items()
        }
        out["dropout_step"] = self.dropout_step.detach().cpu().clone()
        out["source"] = self.source_positions.detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        own = self.state_tensors()
        missing = set(own) - set(tensors)
        extra = set(tensors) - set(own)
        if missing or extra:
            raise PromptConfigError(
                f"projected-prompt tensors do not match: missing {sorted(missing)}, unexpected "
                f"{sorted(extra)} (saved from a plain prompt or another projector?)"
            )
        bad = [k for k, v in own.items() if tuple(v.shape) != tuple(tensors[k].shape)]
        if bad:
            raise PromptConfigError(
                f"projected-prompt tensors {sorted(bad)} have other shapes than this projector's "
                "(another hidden size or model pair?)"
            )
        if not torch.equal(own["source"], tensors["source"].to(own["source"].dtype)):
            raise PromptConfigError(
                "these projected-prompt tensors were trained from a different source prompt"
            )
        weights = {
            k.removeprefix("projector."): v
            for k, v in tensors.items()
            if k.startswith("projector.")
        }
        with torch.no_grad():
            self.projector.load_state_dict(weights, strict=True)
            self.dropout_step.copy_(tensors["dropout_step"])

    # -- SoftPrompt operations that have no meaning here --------------------------------------
    def set_segment(self, name: str, value: torch.Tensor) -> None:
        raise PromptConfigError(
            "a ProjectedPrompt's values come from its projector; edit to_soft_prompt() instead"
        )

    def set_trainable(self, name: str, trainable: bool) -> None:
        raise PromptConfigError(
            "a ProjectedPrompt trains its projector, not its segments; freeze segments on "
            "to_soft_prompt()"
        )

    def initialise(
        self,
        handle: Any,
        *,
        generator: torch.Generator,
        label_token_ids: Sequence[int] | None = None,
        segments: Sequence[str] | None = None,
    ) -> None:
        raise PromptConfigError(
            "a ProjectedPrompt is initialised by its projector (PromptProjector(generator=...))"
        )


def _layer_note(config: PromptConfig, geometry: ModelGeometry) -> str:
    if config.method == "v1":
        return ""
    n = len(config.layer_indices(geometry.n_layers))
    kv = " keys+values" if config.kv == "separate" else ""
    return f"; {n} prompt layers{kv}"


# -- training and applying -----------------------------------------------------------------


def train_projector(
    source: SoftPrompt,
    target_handle: ModelHandle,
    formatter: TaskFormatter,
    train_examples: Sequence[Example],
    train_config: TrainConfig,
    *,
    projector_config: ProjectorConfig | None = None,
    target_layers: Sequence[int] | None = None,
    dev: Sequence[Example] | None = None,
    eval_config: EvalConfig | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> tuple[PromptProjector, TrainResult]:
    """Train a projector that maps ``source`` (a prompt of model A) onto ``target_handle``.

    The projector is initialised from ``train_config.seed`` and trained with the task loss of
    ``train_examples`` through the frozen target model; ``formatter`` must use the target's
    tokenizer. Only the projector changes: the source prompt and the model stay as they are.
    Same seed ⇒ same projector bytes; an interrupted run resumes from ``checkpoint_dir``.
    With ``dev`` and ``train_config.eval_every`` the best dev checkpoint is kept.

    Returns the trained projector (eval mode, on the target's device) and the training result
    (``result.prompt`` is the :class:`ProjectedPrompt`).
    """
    cfg = projector_config or ProjectorConfig()
    source_config = _live_config(source)
    target_config = target_prompt_config(source_config, target_layers)
    try:
        n_out = position_size(target_config, target_handle.geometry)
    except PromptConfigError as exc:
        raise ProjectorError(f"{target_handle.name} cannot hold this prompt: {exc}") from exc
    projector = PromptProjector(
        position_size(source_config, source.geometry),
        n_out,
        cfg,
        kind=prompt_kind(source_config),
        generator=torch.Generator().manual_seed(train_config.seed),
    ).to(target_handle.device)
    prompt = ProjectedPrompt(
        source,
        projector,
        target_handle.geometry,
        target_layers=target_layers,
        seed=train_config.seed,
    ).to(target_handle.device)
    plm = PromptedLM(target_handle, prompt, autocast_dtype=autocast_dtype)
    projector.train()
    try:
        result = train_prompt(
            plm,
            formatter,
            train_examples,
            train_config,
            dev=dev,
            eval_config=eval_config,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
        )
    finally:
        projector.eval()
    return projector, result


def fit_projector_distance(
    pairs: Sequence[tuple[SoftPrompt, SoftPrompt]],
    *,
    projector_config: ProjectorConfig | None = None,
    steps: int = 500,
    lr: float = 1e-3,
    seed: int = 0,
    target_layers: Sequence[int] | None = None,
    warmup: float = 0.0,
    schedule: str = "constant",
    max_grad_norm: float | None = None,
    weight_decay: float = 0.0,
) -> tuple[PromptProjector, list[dict[str, float]]]:
    """Fit a projector by distance minimisation (Su et al. 2022, "Distance Minimizing"; SPEC
    B5): minimise MSE(Proj(P^A_t), P^B_t) over tasks t with a prompt on both models.

    ``pairs``: (source-model prompt, target-model prompt of the same task), of one kind and
    length; position i of one maps to position i of the other. No model runs: all positions of
    all pairs form one full batch, fitted for ``steps`` AdamW steps at ``lr`` with prompt
    training's ``warmup``/``schedule``, clipping and weight decay (weights drawn from ``seed``;
    same inputs ⇒ same projector bytes). Returns the projector (eval mode, on the CPU) and the
    loss per step (``history``: ``{"step", "loss", "lr"}``)."""
    if not pairs:
        raise ProjectorError(
            "distance minimisation needs at least one (source prompt, target prompt) pair of "
            "the same task"
        )
    if steps < 1 or not lr > 0:
        raise ProjectorError(f"steps must be ≥ 1 and lr > 0, got steps={steps}, lr={lr}")
    xs, ys = [], []
    kind = n_in = n_out = None
    for i, (source, target) in enumerate(pairs):
        src_cfg = _live_config(source)
        tgt_cfg = _live_config(target)
        want = target_prompt_config(src_cfg, target_layers)
        if prompt_kind(tgt_cfg) != prompt_kind(src_cfg):
            raise ProjectorError(
                f"pair {i}: a {prompt_kind(src_cfg)} source prompt cannot be fitted to a "
                f"{prompt_kind(tgt_cfg)} target prompt; pair prompts of the same method"
            )
        if tgt_cfg.length != src_cfg.length:
            raise ProjectorError(
                f"pair {i}: the source prompt has {src_cfg.length} positions and the "
                f"target prompt {tgt_cfg.length}; distance minimisation maps position to "
                "position, so pair prompts of the same length"
            )
        if tgt_cfg.layers != want.layers:
            raise ProjectorError(
                f"pair {i}: the target prompt uses layers {tgt_cfg.layers}, the projection "
                f"{want.layers}; give target_layers= as the target prompts were trained"
            )
        x = to_positions(source.tensor().detach().float().cpu(), src_cfg)
        y = to_positions(target.tensor().detach().float().cpu(), tgt_cfg)
        if kind is None:
            kind, n_in, n_out = prompt_kind(src_cfg), x.shape[1], y.shape[1]
        elif (prompt_kind(src_cfg), x.shape[1], y.shape[1]) != (kind, n_in, n_out):
            raise ProjectorError(
                f"pair {i} differs from pair 0 in kind or size; every pair needs the same "
                "source model, target model and prompt method"
            )
        xs.append(x)
        ys.append(y)
    assert kind is not None and n_in is not None and n_out is not None
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    generator = torch.Generator().manual_seed(seed)
    projector = PromptProjector(n_in, n_out, projector_config, kind=kind, generator=generator)
    optimiser = torch.optim.AdamW(projector.parameters(), lr=lr, weight_decay=weight_decay)
    rate = TrainConfig(steps=steps, lr=lr, warmup=warmup, schedule=schedule)  # type: ignore[arg-type]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor(rate, steps))
    history: list[dict[str, float]] = []
    projector.train()
    for step in range(1, steps + 1):
        optimiser.zero_grad(set_to_none=True)
        pred = projector(x_all, dropout=projector.config.dropout > 0, generator=generator)
        loss = F.mse_loss(pred, y_all)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(projector.parameters(), max_grad_norm)
        current = float(scheduler.get_last_lr()[0])
        optimiser.step()
        scheduler.step()
        history.append({"step": float(step), "loss": float(loss.detach()), "lr": current})
    projector.eval()
    return projector, history


def project_prompt(
    projector: PromptProjector,
    prompt: SoftPrompt,
    target_geometry: ModelGeometry,
    *,
    target_layers: Sequence[int] | None = None,
) -> SoftPrompt:
    """Map ``prompt`` (any task, same source model) to a plain SoftPrompt for the target.

    Refuses a prompt whose kind or per-position size differs from what the projector was
    trained on. The result keeps the prompt's segments and lives on the prompt's device.
    """
    was_training = projector.training
    projector.eval()
    try:
        projected = ProjectedPrompt(prompt, projector, target_geometry, target_layers=target_layers)
        with torch.no_grad():
            out = projected.to_soft_prompt()
    finally:
        projector.train(was_training)
    return out.to(_device_of(prompt))


# -- storage -------------------------------------------------------------------------------


def save_projector(
    directory: str | Path,
    projector: PromptProjector,
    *,
    source_model: str,
    target_model: str,
    source_geometry: ModelGeometry,
    target_geometry: ModelGeometry,
    prompt_config: PromptConfig,
    target_layers: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``projector`` as ``directory/projector.safetensors`` + ``projector.json``.

    ``prompt_config`` is the source prompts' configuration (kind and layers) and
    ``target_layers`` the target's v2 layers, as given to :func:`train_projector`; they must
    fit the projector's sizes. Each file is replaced atomically; the JSON, written last, holds
    a checksum of the tensors, so a reader never mistakes files from two saves for a pair.
    """
    kind = prompt_kind(prompt_config)
    if kind != projector.kind:
        raise ProjectorError(f"the projector maps {projector.kind} prompts, not {kind}")
    target_config = target_prompt_config(prompt_config, target_layers)
    for what, config, geometry, size in (
        ("source", prompt_config, source_geometry, projector.in_features),
        ("target", target_config, target_geometry, projector.out_features),
    ):
        try:
            expected = position_size(config, geometry)
        except PromptConfigError as exc:
            raise ProjectorError(f"the {what} geometry does not fit the prompt: {exc}") from exc
        if expected != size:
            raise ProjectorError(
                f"the {what} geometry ({_describe(geometry)}) has {expected} values per prompt "
                f"position but the projector has {size}; wrong {what} model or layers"
            )
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
    payload = save(tensors, metadata={"format": "pt"})
    meta = {
        "format_version": PROJECTOR_FORMAT_VERSION,
        "prompt_kind": kind,
        "in_features": projector.in_features,
        "out_features": projector.out_features,
        "projector": projector.config.to_dict(),
        "source_model": source_model,
        "target_model": target_model,
        "source_geometry": dataclasses.asdict(source_geometry),
        "target_geometry": dataclasses.asdict(target_geometry),
        "prompt_config": prompt_config.to_dict(),
        "target_layers": list(target_config.layers) if target_config.layers is not None else None,
        "tensors_sha256": hashlib.sha256(payload).hexdigest(),
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    # Serialise before touching the disk so a bad ``extra`` value fails with nothing written.
    text = json.dumps(meta, indent=2, ensure_ascii=False, default=json_default) + "\n"
    target = Path(directory).expanduser().absolute()
    target.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target / PROJECTOR_TENSORS_FILE, payload)
    write_text_atomic(target / PROJECTOR_METADATA_FILE, text)
    return target


_REQUIRED_META = (
    "format_version",
    "prompt_kind",
    "in_features",
    "out_features",
    "projector",
    "source_geometry",
    "target_geometry",
    "prompt_config",
    "tensors_sha256",
)


def load_projector(directory: str | Path) -> tuple[PromptProjector, dict[str, Any]]:
    """Load a projector saved by :func:`save_projector` (on the CPU, in eval mode).

    Returns the projector and the metadata dict of ``projector.json`` (models, geometries as
    dicts, the source ``prompt_config``, ``target_layers``, ``extra``...).
    """
    path = Path(directory).expanduser().absolute()
    if not path.is_dir():
        raise ProjectorLoadError(f"projector directory {path} does not exist; check the path")
    meta_path, tensors_path = path / PROJECTOR_METADATA_FILE, path / PROJECTOR_TENSORS_FILE
    for file in (meta_path, tensors_path):
        if not file.is_file():
            raise ProjectorLoadError(
                f"{file.name} is missing in {path}; this is not a complete projector directory "
                "(re-save or re-copy it)"
            )
    meta = read_json_object(
        meta_path,
        ProjectorLoadError,
        where=f"{meta_path.name} in {path}",
        fix="restore it or re-train",
    )
    if meta.get("format_version") != PROJECTOR_FORMAT_VERSION:
        raise ProjectorLoadError(
            f"{meta_path.name} in {path} has format_version {meta.get('format_version')!r}; "
            f"this promptatlas reads version {PROJECTOR_FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ProjectorLoadError(
            f"{meta_path.name} in {path} lacks the field(s) {missing}; the file is damaged, "
            "restore it or re-train"
        )
    payload = tensors_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != meta["tensors_sha256"]:
        raise ProjectorLoadError(
            f"{tensors_path.name} in {path} does not match {meta_path.name} (checksum differs): "
            "it is corrupt, truncated or from another save; re-copy the directory as a whole"
        )
    from safetensors.torch import load

    try:
        tensors = load(payload)
        projector = PromptProjector(
            int(meta["in_features"]),
            int(meta["out_features"]),
            ProjectorConfig.from_dict(meta["projector"]),
            kind=meta["prompt_kind"],
        )
        projector.load_state_dict(tensors, strict=True)
    except Exception as exc:  # SafetensorError, ProjectorError, RuntimeError (shape/key mismatch)
        raise ProjectorLoadError(
            f"the projector in {path} cannot be rebuilt ({exc}); the files are damaged, "
            "restore them or re-train"
        ) from exc
    projector.eval()
    return projector, meta
