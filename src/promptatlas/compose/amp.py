"""AMP: attention over multiple prompts (spec composition.md §C).

Frozen source prompts P ∈ R^{n×l×d} (their task segments) and an attention component
ψ = (W_Q, W_K ∈ R^{d×k}, W_V ∈ R^{d×d}, no biases). Q = P·W_Q, K = P·W_K, V = P·W_V.

DAM: S′_ij = (1/l²) Σ_a Σ_b q_i^a·k_j^b. By bilinearity this is mean_a(q_i^a)·mean_b(k_j^b),
which is how it is computed here (O(n·l·k)); the paper's blockwise form (the (n·l)×(n·l)
product Q·Kᵀ summed over l×l blocks by a convolution of stride l, then scaled by 1/l²) is
:func:`dam_scores_blockwise`, kept as the test oracle. There is no 1/√k unless ``scale``.
A = softmax over j (diagonal included); target prompt P′_i = Σ_j A_ij·V_j.

Only ψ trains, on all tasks mixed (examples-proportional, capped per task); the source prompts
and the model stay fixed. The target prompts come out as ordinary
:class:`~promptatlas.prompts.SoftPrompt` objects (stored like any prompt: no inference cost).
v2 prompts: one ψ per group (layer; keys and values of a layer are two groups with ``kv``
"separate"), so d is d_kv there.

Ablations: ``pooling="max"`` (max-pooled q and k, AMP Fig. 2), ``k`` (Fig. 4), ``value=
"identity"`` (the raw-P form of AMP §3.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from promptatlas.compose.common import (
    ComposeError,
    ComputedPrompt,
    EncodedTask,
    MethodScore,
    Source,
    TaskData,
    check_frozen,
    group_view,
    mixing_rates,
    optimise,
    score_prompt,
    stack_segments,
    ungroup,
    warmup_for,
)
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "AMPConfig",
    "AMPResult",
    "PromptAttention",
    "attention_weights",
    "dam_scores",
    "dam_scores_blockwise",
    "maxpool_scores",
    "train_amp",
]


# -- the maths ----------------------------------------------------------------------------------


def dam_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """DAM scores (…, n, l, k) × (…, m, l, k) → (…, n, m): mean(q_i)·mean(k_j), which equals
    (1/l²) Σ_a Σ_b q_i^a·k_j^b."""
    return q.mean(dim=-2) @ k.mean(dim=-2).transpose(-1, -2)


def dam_scores_blockwise(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The paper's DAM implementation (§3.2.2), for tests: S = Q·Kᵀ over all n·l positions,
    each l×l block summed by a convolution with an all-ones kernel and stride l, times 1/l².
    q: (n, l, k), k: (m, l, k) → (n, m). Memory O((n·l)²): never used for training."""
    n, length, _ = q.shape
    m = k.shape[0]
    full = q.reshape(n * length, -1) @ k.reshape(m * length, -1).T  # (n·l, m·l)
    kernel = torch.ones(1, 1, length, length, dtype=full.dtype, device=full.device)
    blocks = F.conv2d(full[None, None], kernel, stride=length)[0, 0]
    return blocks / length**2


def maxpool_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The max-pooling ablation: each query and key matrix max-pooled over its positions to a
    vector, then dot products: (…, n, l, k) × (…, m, l, k) → (…, n, m)."""
    return q.amax(dim=-2) @ k.amax(dim=-2).transpose(-1, -2)


def attention_weights(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over sources j (the last axis); every row sums to 1."""
    return torch.softmax(scores, dim=-1)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AMPConfig:
    """AMP settings; defaults are the paper's (composition.md §C) where it gives one.

    k: query/key size (None = d, the paper's k = v = 768 on RoBERTa-base); ablation {64, 256, d}.
    pooling: "dam" (the paper) or "max" (the max-pooling ablation).
    value: "linear" (V = P·W_V, W_V initialised to I) or "identity" (mix the raw P).
    scale: divide scores by √k (not in the paper).
    steps / epochs: ψ training length (steps wins); the paper trains 10 epochs.
    cap: examples-proportional mixing cap per task (paper: 100k).
    warmup_steps: linear warm-up (paper: 500), at most a tenth of the run.
    objective: "auto" = the prompt method's default for classification, "lm" otherwise.
    """

    k: int | None = None
    pooling: Literal["dam", "max"] = "dam"
    value: Literal["linear", "identity"] = "linear"
    scale: bool = False
    steps: int | None = None
    epochs: float = 10.0
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    cap: int | None = 100_000
    objective: Literal["auto", "lm", "rank"] = "auto"
    segment: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise ComposeError(f"k must be ≥ 1 (or None for d), got {self.k}")
        if self.pooling not in ("dam", "max"):
            raise ComposeError(f"pooling must be 'dam' or 'max', got {self.pooling!r}")
        if self.value not in ("linear", "identity"):
            raise ComposeError(f"value must be 'linear' or 'identity', got {self.value!r}")
        if self.steps is not None and self.steps < 1:
            raise ComposeError(f"steps must be ≥ 1, got {self.steps}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ComposeError("epochs, batch_size and lr must be positive")
        if self.cap is not None and self.cap < 1:
            raise ComposeError(f"cap must be ≥ 1 (or None), got {self.cap}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the attention component ψ ------------------------------------------------------------------


class PromptAttention(nn.Module):
    """ψ over ``sources`` (n, G, l, e): per group g, W_Q, W_K (e×k) and W_V (e×e, = I at start;
    absent with value "identity"). The sources are a frozen buffer."""

    sources: torch.Tensor

    def __init__(
        self,
        sources: torch.Tensor,
        *,
        k: int | None = None,
        pooling: str = "dam",
        value: str = "linear",
        scale: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if sources.dim() != 4:
            raise ComposeError(f"sources must be (n, groups, l, e), got {tuple(sources.shape)}")
        n, groups, _, e = sources.shape
        self.k = k or e
        self.pooling = pooling
        self.value_mode = value
        self.scale = scale
        self.register_buffer("sources", sources.detach().float().clone())
        bound = 1.0 / math.sqrt(e)  # nn.Linear's default range, drawn from ``generator``
        self.w_q = nn.Parameter(
            (torch.rand(groups, e, self.k, generator=generator) * 2 - 1) * bound
        )
        self.w_k = nn.Parameter(
            (torch.rand(groups, e, self.k, generator=generator) * 2 - 1) * bound
        )
        self.w_v = nn.Parameter(torch.eye(e).repeat(groups, 1, 1)) if value == "linear" else None
        self.n_sources = n

    def scores(self) -> torch.Tensor:
        """(G, n, n) attention scores before the softmax."""
        p = self.sources.transpose(0, 1)  # (G, n, l, e)
        q = torch.einsum("gnle,gek->gnlk", p, self.w_q)
        key = torch.einsum("gnle,gek->gnlk", p, self.w_k)
        s = dam_scores(q, key) if self.pooling == "dam" else maxpool_scores(q, key)
        return s / math.sqrt(self.k) if self.scale else s

    def attention(self) -> torch.Tensor:
        """(G, n, n) attention: row i = how target prompt i weighs the sources."""
        return attention_weights(self.scores())

    def values(self) -> torch.Tensor:
        """(G, n, l, e): V = P·W_V (or P)."""
        p = self.sources.transpose(0, 1)
        if self.w_v is None:
            return p
        return torch.einsum("gnle,gef->gnlf", p, self.w_v)

    def forward(self) -> torch.Tensor:
        """All target prompts (n, G, l, e): P′_i = Σ_j A_ij·V_j, per group."""
        out = torch.einsum("gij,gjle->gile", self.attention(), self.values())
        return out.transpose(0, 1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def load_psi(self, other: PromptAttention) -> None:
        """Copy ψ (W_Q, W_K, W_V) from ``other``; shapes must match (same k, value mode and
        prompt layout), the number of sources may differ."""
        mine = dict(self.named_parameters())
        theirs = dict(other.named_parameters())
        if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ComposeError("the warm-start ψ has other shapes (k, value mode or layout)")
        for key, param in mine.items():
            param.copy_(theirs[key].detach().to(param.device))


class _Target(nn.Module):
    """Target prompt ``index`` of ψ, in the SoftPrompt segment layout."""

    def __init__(self, attention: PromptAttention, index: int, method: str, kv: str) -> None:
        super().__init__()
        self.attention = attention
        self.index = index
        self.method = method
        self.kv = kv

    def forward(self) -> torch.Tensor:
        return ungroup(self.attention()[self.index], self.method, self.kv)


# -- training -----------------------------------------------------------------------------------


@dataclass
class AMPResult:
    """Trained ψ, the composed target prompts (plain SoftPrompts, by source key), the attention
    matrix (mean over groups; rows = targets, columns = sources, in ``keys`` order), per-group
    attention, test scores of the targets that had data, and the training history."""

    keys: list[str]
    prompts: dict[str, SoftPrompt]
    attention: torch.Tensor  # (n, n)
    attention_groups: torch.Tensor  # (G, n, n)
    scores: dict[str, MethodScore]
    history: list[dict[str, float]]
    config: AMPConfig
    module: PromptAttention
    n_parameters: int
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


def build_attention(sources: Sequence[Source], config: AMPConfig) -> tuple[str, PromptAttention]:
    """ψ over the sources' composed segments (the segment name and the module)."""
    name, stacked = stack_segments(sources, config.segment)
    first = sources[0].prompt
    groups = group_view(stacked, first.method, first.config.kv)
    module = PromptAttention(
        groups,
        k=config.k,
        pooling=config.pooling,
        value=config.value,
        scale=config.scale,
        generator=torch.Generator().manual_seed(config.seed),
    )
    return name, module


def train_amp(
    handle: Any,
    sources: Sequence[Source],
    data: Mapping[str, TaskData],
    config: AMPConfig | None = None,
    *,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    score: bool = True,
    warm_start: PromptAttention | None = None,
) -> AMPResult:
    """Train ψ on every task in ``data`` (keys "task-lang", each the key of one source) mixed
    examples-proportionally, then score each composed target prompt on its test split.

    Sources without data still serve as keys/values (their target prompts are returned too).
    ``warm_start``: a trained ψ to continue from (its weights do not depend on the number of
    sources, so a task added later retrains ψ from there). Only ψ receives gradients: the
    sources are a buffer and the model is frozen (checked)."""
    cfg = config or AMPConfig()
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ComposeError(f"one source per task and language, got {keys}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ComposeError(f"task data {unknown} has no source prompt (sources: {keys})")
    if not data:
        raise ComposeError("AMP needs training data of at least one task")
    check_frozen(handle.model, "the model")
    name, module = build_attention(sources, cfg)
    if warm_start is not None:
        module.load_psi(warm_start)
    module = module.to(handle.device)
    first = sources[0].prompt
    targets = {
        s.key: ComputedPrompt(s.prompt, _Target(module, i, first.method, first.config.kv), name).to(
            handle.device
        )
        for i, s in enumerate(sources)
    }
    plms = {key: PromptedLM(handle, targets[key], autocast_dtype=autocast) for key in data}
    encoded = {
        key: EncodedTask(d, cfg.objective, first.method, eval_config) for key, d in data.items()
    }
    order = sorted(encoded)
    rates = mixing_rates({k: len(encoded[k]) for k in order}, cfg.cap)
    if cfg.steps is not None:
        total = cfg.steps
    else:
        examples = sum(min(len(encoded[k]), cfg.cap or len(encoded[k])) for k in order)
        total = max(1, math.ceil(examples * cfg.epochs / cfg.batch_size))
    gen = torch.Generator().manual_seed(cfg.seed)
    probs = torch.tensor([rates[k] for k in order])
    picks = torch.multinomial(probs, total, replacement=True, generator=gen).tolist()
    cursor = dict.fromkeys(order, 0)

    def loss_at(step: int) -> torch.Tensor:
        key = order[picks[step]]
        idx = encoded[key].batch_indices(cfg.batch_size, cfg.seed, cursor[key])
        cursor[key] += 1
        return encoded[key].loss(plms[key], idx)

    history = optimise(
        module.parameters(),
        loss_at,
        steps=total,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=warmup_for(cfg.warmup_steps, total),
        schedule=cfg.schedule,
        max_grad_norm=cfg.max_grad_norm,
    )
    for h, pick in zip(history, picks, strict=True):
        h["task"] = float(pick)  # index into sorted task keys (JSON-friendly)
    prompts = {key: targets[key].to_soft_prompt() for key in keys}
    with torch.no_grad():
        att = module.attention().detach().cpu()
    scores: dict[str, MethodScore] = {}
    if score:
        for key, d in data.items():
            if d.test or d.dev:
                scores[key] = score_prompt(
                    "amp", handle, prompts[key], d, seed=cfg.seed, eval_config=eval_config,
                    autocast=autocast,
                )  # fmt: skip
    return AMPResult(
        keys=keys,
        prompts=prompts,
        attention=att.mean(dim=0),
        attention_groups=att,
        scores=scores,
        history=history,
        config=cfg,
        module=module,
        n_parameters=module.num_parameters(),
        steps=total,
        extra={"mixing": rates, "task_order": order},
    )
