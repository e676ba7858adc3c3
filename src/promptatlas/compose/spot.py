"""Plain prompt tuning and SPoT (Vu et al. 2022) as initialisations of the target task segment.

* **PT**: the task segment starts from the prompt method's usual init.
* **SPoT-s**: it starts from Σ_s w_s·P_s with w_s ∝ max(cos_tok(P_t, P_s), 0) over all sources,
  the target task's own source prompt P_t included (AMP appendix A.3); cos_tok is the mean over
  all position pairs (a, b) of cos(p_a, q_b) (a v2 position: all its layers' values).
* **SPoT-m**: it starts from one source (default: the NLI prompt of the target's language).

Then the segment is trained as in prompt tuning (:func:`promptatlas.training.train_prompt`),
the language segment frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from promptatlas.compose.common import (
    ComposeError,
    MethodScore,
    Source,
    TaskData,
    composed_segment,
    prompt_like,
    score_prompt,
    stack_segments,
    to_tokens,
)
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.training import TrainConfig, TrainResult, train_prompt

__all__ = [
    "PromptTuningResult",
    "SpotConfig",
    "cos_tok",
    "run_prompt_tuning",
    "run_spot",
    "spot_m_source",
    "spot_s_init",
    "spot_s_weights",
]


def cos_tok(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over all position pairs of the cosine similarity: a (l_a, e), b (l_b, e)."""
    return float((F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T).mean())


def spot_s_weights(target: torch.Tensor, sources: Sequence[torch.Tensor]) -> torch.Tensor:
    """w_s ∝ max(cos_tok(target, s), 0), summing to 1 (target and sources as (l, e) position
    matrices). All non-positive similarities give uniform weights."""
    sims = torch.tensor([max(cos_tok(target, s), 0.0) for s in sources], dtype=torch.float64)
    if float(sims.sum()) <= 0:
        return torch.full((len(sources),), 1.0 / len(sources), dtype=torch.float64)
    return sims / sims.sum()


def spot_s_init(
    target: SoftPrompt, sources: Sequence[Source], segment: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPoT-s: (initial segment value Σ w_s·P_s, weights w) for the target whose own source
    prompt is ``target`` (it should be among ``sources``: the paper includes the task itself)."""
    name, stacked = stack_segments(sources, segment)
    method, kv = target.method, target.config.kv
    query = to_tokens(target.segments[name].detach().float().cpu(), method, kv)
    weights = spot_s_weights(query, [to_tokens(s, method, kv) for s in stacked])
    value = torch.einsum("n,n...->...", weights.float(), stacked)
    return value, weights


def spot_m_source(sources: Sequence[Source], task: str, lang: str, source: str | None) -> Source:
    """The source SPoT-m starts from: ``source`` ("task-lang" or a task name in ``lang``), by
    default NLI in the target's language."""
    wanted = source or "nli"
    if "-" not in wanted:
        wanted = f"{wanted}-{lang}"
    for s in sources:
        if s.key == wanted.lower():
            return s
    raise ComposeError(
        f"SPoT-m needs a source prompt {wanted!r}; sources: {[s.key for s in sources]}"
    )


@dataclass(frozen=True)
class SpotConfig:
    """SPoT settings. mode "s" (similarity-weighted average) or "m" (one source, ``source``:
    "task-lang" or a task name; default NLI in the target's language). ``train``: how the
    initialised segment is then trained (prompt tuning)."""

    mode: Literal["s", "m"] = "s"
    source: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    segment: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("s", "m"):
            raise ComposeError(f"SPoT mode must be 's' or 'm', got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train": self.train.to_dict()}


@dataclass
class PromptTuningResult:
    """A trained target prompt, its test score and how it started."""

    method: str
    prompt: SoftPrompt
    score: MethodScore
    train: TrainResult
    init: dict[str, Any] = field(default_factory=dict)


def _find_own(sources: Sequence[Source], key: str) -> Source | None:
    return next((s for s in sources if s.key == key), None)


def run_prompt_tuning(
    handle: Any,
    template: SoftPrompt,
    data: TaskData,
    train: TrainConfig,
    *,
    init: torch.Tensor | None = None,
    method: str = "pt",
    segment: str | None = None,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    progress: bool = False,
    init_info: dict[str, Any] | None = None,
) -> PromptTuningResult:
    """Train the composed segment of a prompt shaped like ``template`` (its other segments,
    e.g. the language segment, copied and frozen) on ``data``, starting from ``init`` or the
    template's init rule; score it on the test split."""
    labels = None
    if data.classification:
        ids = data.formatter.label_token_ids()
        labels = [t for lab in data.formatter.task.labels for t in ids[lab][:1]]
    prompt = prompt_like(
        template, handle, segment=segment, seed=train.seed, value=init, label_token_ids=labels
    )
    plm = PromptedLM(handle, prompt, autocast_dtype=autocast)
    result = train_prompt(
        plm, data.formatter, list(data.train), train, dev=list(data.dev) or None,
        eval_config=eval_config, progress=progress,
    )  # fmt: skip
    score = score_prompt(
        method, handle, prompt, data, seed=train.seed, eval_config=eval_config, autocast=autocast
    )
    return PromptTuningResult(method, prompt, score, result, dict(init_info or {}))


def run_spot(
    handle: Any,
    sources: Sequence[Source],
    data: TaskData,
    config: SpotConfig | None = None,
    *,
    template: SoftPrompt | None = None,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
    progress: bool = False,
) -> PromptTuningResult:
    """SPoT-s or SPoT-m for the task of ``data``. ``template`` (default: the target's own source
    prompt, else the first source of its language) gives the frozen segments."""
    cfg = config or SpotConfig()
    task = data.formatter.task
    own = _find_own(sources, data.key)
    same_lang = [s for s in sources if s.lang == task.lang]
    base = template or (own.prompt if own else (same_lang or list(sources))[0].prompt)
    name = composed_segment(base, cfg.segment)
    if cfg.mode == "s":
        if own is None:
            raise ComposeError(
                f"SPoT-s weighs sources by their similarity to {data.key}'s own source prompt; "
                f"none among {[s.key for s in sources]}"
            )
        value, weights = spot_s_init(own.prompt, sources, name)
        info: dict[str, Any] = {
            "weights": {s.key: float(w) for s, w in zip(sources, weights, strict=True)}
        }
    else:
        chosen = spot_m_source(sources, task.spec.name, task.lang, cfg.source)
        value = chosen.prompt.segments[name].detach().float().cpu()
        info = {"source": chosen.key}
    return run_prompt_tuning(
        handle, base, data, cfg.train, init=value, method=f"spot-{cfg.mode}", segment=name,
        eval_config=eval_config, autocast=autocast, progress=progress, init_info=info,
    )  # fmt: skip
