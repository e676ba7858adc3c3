"""ATTEMPT (Asai et al. 2022): a per-input mixture of frozen source prompts and a target prompt.

For an input x with non-pad context embeddings e_1..e_T (padding and, in training with the LM
objective, the target tokens excluded — the prompt must not see the answer):

    x̂ = max-pool_t e_t;  h = LayerNorm(W_up·SiLU(W_down·x̂)),  W_down: d → 100
    α = softmax_j(maxpool(P_j)·h / T) over the n sources and P_tgt,  T = d·e
    P(x) = P_tgt + Σ_j α_j·P_j  (j over the sources and P_tgt)

T = d·e rescales the reference's fixed 2087 (d = 768) to the model width (its learned
temperature is broken). Trainable: W_down, W_up, the LayerNorm and P_tgt; the sources and the
model are frozen. v1 prompts only (the method is defined on input-embedding prompts); with a
factorised prompt the mixture replaces the task segment and the language segment is kept.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from promptatlas.compose.common import (
    ComposeError,
    EncodedTask,
    MethodScore,
    Source,
    TaskData,
    check_frozen,
    composed_segment,
    optimise,
    prompt_like,
    score_result,
    stack_segments,
    warmup_for,
)
from promptatlas.defaults import defaults_for
from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from promptatlas.evaluation.metrics import score_predictions
from promptatlas.prompts.injection import PromptedForward, PromptedLM
from promptatlas.prompts.kv import output_cache
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "AttemptConfig",
    "AttemptLM",
    "AttemptMixer",
    "AttemptResult",
    "evaluate_attempt",
    "masked_max_pool",
    "train_attempt",
]


def masked_max_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over positions where ``mask`` is set: x (B, T, d), mask (B, T) → (B, d). A row with
    no position set gives zeros."""
    keep = mask.bool().unsqueeze(-1)
    filled = x.masked_fill(~keep, float("-inf")).amax(dim=1)
    return torch.where(keep.any(dim=1), filled, torch.zeros_like(filled))


@dataclass(frozen=True)
class AttemptConfig:
    """ATTEMPT settings (reference repo: l = 100, lr 0.3, batch 32, 20 epochs, warm-up 500).

    lr None = the v1 prompt default (0.3, the reference's). temperature None = d·e."""

    bottleneck: int = 100
    temperature: float | None = None
    steps: int | None = None
    epochs: float = 20.0
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    objective: Literal["auto", "lm", "rank"] = "auto"
    segment: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.bottleneck < 1 or self.batch_size < 1:
            raise ComposeError("bottleneck and batch_size must be ≥ 1")
        if self.temperature is not None and self.temperature <= 0:
            raise ComposeError(f"temperature must be > 0, got {self.temperature}")
        if self.steps is not None and self.steps < 1:
            raise ComposeError(f"steps must be ≥ 1, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AttemptMixer(nn.Module):
    """The per-input attention: frozen sources (n, l, d) buffer, trainable target (l, d)."""

    sources: torch.Tensor

    def __init__(
        self,
        sources: torch.Tensor,
        target: torch.Tensor,
        *,
        bottleneck: int = 100,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        d = sources.shape[-1]
        self.register_buffer("sources", sources.detach().float().clone())
        self.target = nn.Parameter(target.detach().float().clone())
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():
            for layer in (self.down, self.up):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
        self.temperature = float(temperature) if temperature else d * math.e

    def weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled inputs → (B, n + 1) attention over the sources and the target."""
        h = self.norm(self.up(torch.nn.functional.silu(self.down(pooled.float()))))
        keys = torch.cat([self.sources, self.target[None]]).amax(dim=1)  # (n + 1, d)
        return torch.softmax(h @ keys.T / self.temperature, dim=-1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) → per-input task prompts (B, l, d)."""
        alpha = self.weights(pooled)
        prompts = torch.cat([self.sources, self.target[None]])  # (n + 1, l, d)
        return self.target[None] + torch.einsum("bj,jld->bld", alpha, prompts)


class AttemptLM(PromptedLM):
    """A frozen model whose v1 prompt is computed per input row by an :class:`AttemptMixer`.

    ``template`` gives the prompt layout (its non-task segments, e.g. the language segment, are
    used as they are). The pooled input uses the rows' attention mask, or the mask set with
    :meth:`pooling` (training with the LM objective excludes the target tokens with it).
    Cached continuation steps (``past_key_values``) run as in PromptedLM."""

    def __init__(
        self,
        handle: Any,
        template: SoftPrompt,
        mixer: AttemptMixer,
        *,
        segment: str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if template.method != "v1":
            raise ComposeError("ATTEMPT mixes input-embedding (v1) prompts; got a v2 prompt")
        super().__init__(handle, template, autocast_dtype=autocast_dtype)
        self.mixer = mixer
        self.segment = composed_segment(template, segment)
        self._pool_mask: torch.Tensor | None = None

    @contextlib.contextmanager
    def pooling(self, mask: torch.Tensor) -> Iterator[None]:
        """Pool the input over ``mask`` (B, T) instead of the attention mask in this block."""
        self._pool_mask = mask
        try:
            yield
        finally:
            self._pool_mask = None

    def row_prompts(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, k, d) full prompts (all segments) for the rows of ``input_ids``."""
        assert self.prompt is not None
        embed = self.handle.adapter.input_embeddings(self.handle.model)
        with torch.no_grad():
            embeds = embed(input_ids).float()
        task = self.mixer(masked_max_pool(embeds, mask.to(embeds.device)))
        batch = input_ids.shape[0]
        parts = [
            task
            if s.name == self.segment
            else self.prompt.segments[s.name].float()[None].expand(batch, -1, -1)
            for s in self.prompt.config.segments
        ]
        return torch.cat(parts, dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        share_prompt: bool = False,
    ) -> PromptedForward:
        if past_key_values is not None:  # continuation: the prompt is already in the cache
            return super().forward(
                input_ids, attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, use_cache=use_cache,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )  # fmt: skip
        handle = self.handle
        pool = self._pool_mask if self._pool_mask is not None else attention_mask
        if pool.shape != input_ids.shape:
            raise ComposeError("the pooling mask must have the shape of the input ids")
        prompts = self.row_prompts(input_ids, pool).to(self.device, handle.dtype)
        k = prompts.shape[1]
        embed = handle.adapter.input_embeddings(handle.model)
        embeds = torch.cat([prompts, embed(input_ids)], dim=1)
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds,
            "attention_mask": self.mask_with_prompt(attention_mask),
            "use_cache": use_cache,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
        }
        if position_ids is not None:
            prompt_pos = torch.arange(k, device=self.device).expand(input_ids.shape[0], -1)
            kwargs["position_ids"] = torch.cat([prompt_pos, position_ids + k], dim=1)
        autocast = torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )
        with autocast:
            out = handle.adapter.backbone(handle.model)(**kwargs)
        return PromptedForward(
            hidden=out.last_hidden_state[:, k:].to(handle.dtype),
            past_key_values=output_cache(out) if use_cache else None,
            attentions=getattr(out, "attentions", None),
            hidden_states=getattr(out, "hidden_states", None),
        )

    def prompt_for(self, context_ids: Sequence[int]) -> SoftPrompt:
        """The fixed prompt ATTEMPT gives one context (token ids without padding)."""
        assert self.prompt is not None
        ids = torch.tensor([list(context_ids)], device=self.device)
        with torch.no_grad():
            full = self.row_prompts(ids, torch.ones_like(ids))[0].cpu()
        prompt = SoftPrompt(self.prompt.config, self.prompt.geometry)
        start = 0
        for s in self.prompt.config.segments:
            prompt.set_segment(s.name, full[start : start + s.length])
            start += s.length
        return prompt.to(self.device)


def evaluate_attempt(
    plm: AttemptLM,
    data: TaskData,
    examples: Sequence[Any],
    config: EvalConfig | None = None,
) -> EvalResult:
    """Exact evaluation: each example with the fixed prompt its own context gives (so neither
    padding nor a scored label word can reach the pooled input), then the task metric."""
    cfg = config or EvalConfig()
    fmt = data.formatter
    mode = cfg.mode
    if mode == "auto":
        mode = "rank" if data.classification else "generate"
    if mode == "rank":  # the context rank_classify scores (same truncation)
        ids = fmt.label_token_ids()
        longest = max(len(v) for v in ids.values()) + (1 if cfg.score_eos else 0)
        reserve = 1 if cfg.first_token else longest
    else:
        reserve = cfg.max_new_tokens
    preds: list[str] = []
    for ex in examples:
        prompt = plm.prompt_for(fmt.encode_context(ex, reserve=reserve))
        one = PromptedLM(plm.handle, prompt, autocast_dtype=plm.autocast_dtype)
        preds.append(evaluate(one, fmt, [ex], cfg).predictions[0])
    task = fmt.task
    if mode == "generate" and data.classification:
        words = {task.verbalizers[lab]: lab for lab in task.labels}
        texts = preds
        preds = [words.get(t.strip(), "<invalid>") for t in texts]
    metrics, scores = score_predictions(task, preds, examples)
    return EvalResult(metrics, preds, len(examples), mode, examples=scores)


@dataclass
class AttemptResult:
    """The trained mixer and target prompt, its test score and the history. ``weights``: the
    mean attention over the test inputs (sources in ``keys`` order, then the target)."""

    plm: AttemptLM
    score: MethodScore | None
    history: list[dict[str, float]]
    keys: list[str]
    weights: list[float] = field(default_factory=list)
    n_parameters: int = 0
    config: AttemptConfig = field(default_factory=AttemptConfig)


def train_attempt(
    handle: Any,
    sources: Sequence[Source],
    data: TaskData,
    config: AttemptConfig | None = None,
    *,
    template: SoftPrompt | None = None,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    score: bool = True,
) -> AttemptResult:
    """Train ATTEMPT for the task of ``data`` over ``sources`` (the target task's own source is
    left out of the mixture when present: ATTEMPT transfers from *other* tasks). ``template``
    (default: a source of the target's language) gives the frozen segments; P_tgt starts from
    the template's init rule."""
    cfg = config or AttemptConfig()
    check_frozen(handle.model, "the model")
    pool = [s for s in sources if s.key != data.key]
    if not pool:
        raise ComposeError("ATTEMPT needs at least one source prompt of another task")
    lang = data.formatter.task.lang
    same_lang = [s for s in sources if s.lang == lang]
    base = template or (same_lang or list(sources))[0].prompt
    name, stacked = stack_segments(pool, cfg.segment)
    if base.method != "v1":
        raise ComposeError("ATTEMPT mixes input-embedding (v1) prompts; got a v2 prompt")
    labels = None
    if data.classification:
        ids = data.formatter.label_token_ids()
        labels = [t for lab in data.formatter.task.labels for t in ids[lab][:1]]
    start = prompt_like(base, handle, segment=name, seed=cfg.seed, label_token_ids=labels)
    mixer = AttemptMixer(
        stacked,
        start.segments[name].detach().cpu(),
        bottleneck=cfg.bottleneck,
        temperature=cfg.temperature,
        generator=torch.Generator().manual_seed(cfg.seed),
    ).to(handle.device)
    frozen = prompt_like(base, handle, segment=name, value=start.segments[name])
    frozen.requires_grad_(False)
    plm = AttemptLM(handle, frozen, mixer, segment=name, autocast_dtype=autocast)
    encoded = EncodedTask(data, cfg.objective, "v1", eval_config)
    total = cfg.steps or max(1, math.ceil(len(encoded) * cfg.epochs / cfg.batch_size))
    lr = cfg.lr if cfg.lr is not None else defaults_for("v1").lr

    def loss_at(step: int) -> torch.Tensor:
        idx = encoded.batch_indices(cfg.batch_size, cfg.seed, step)
        if encoded.objective == "rank":  # contexts only: the attention mask is the context
            return encoded.loss(plm, idx)
        from promptatlas.formatting import collate

        batch = collate([encoded.items[i] for i in idx], encoded.pad)
        context = batch.attention_mask.bool() & ~batch.target_mask
        with plm.pooling(context.to(handle.device)):
            return encoded.loss(plm, idx)

    history = optimise(
        mixer.parameters(),
        loss_at,
        steps=total,
        lr=lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=warmup_for(cfg.warmup_steps, total),
        schedule=cfg.schedule,
        max_grad_norm=cfg.max_grad_norm,
    )
    result_score = None
    weights: list[float] = []
    examples = list(data.test) or list(data.dev)
    if score and examples:
        with torch.no_grad():
            res = evaluate_attempt(plm, data, examples, eval_config)
            result_score = score_result("attempt", data, res, cfg.seed)
            fmt = data.formatter
            ctx = [torch.tensor(fmt.encode_context(ex)) for ex in examples]
            embed = handle.adapter.input_embeddings(handle.model)
            pooled = torch.stack([embed(c.to(handle.device)).float().amax(0) for c in ctx])
            weights = mixer.weights(pooled).mean(0).cpu().tolist()
    return AttemptResult(
        plm=plm,
        score=result_score,
        history=history,
        keys=[s.key for s in pool],
        weights=weights,
        n_parameters=sum(p.numel() for p in mixer.parameters()),
        config=cfg,
    )
