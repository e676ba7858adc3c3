"""What every composition method shares: source prompts, task data, computed prompts, the
task loss on pre-encoded examples, one optimisation loop and scores with intervals.

Composition works on the *task segment* of a prompt (a factorised ``lang`` + ``task`` prompt,
:mod:`promptatlas.transfer.subprompts`): the language segment stays frozen and is carried over
unchanged. A prompt with a single segment is composed whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from promptatlas.defaults import defaults_for
from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from promptatlas.evaluation.predict import label_suffixes, rank_loss, target_loss
from promptatlas.evaluation.scoring import resolve_length_normalise
from promptatlas.formatting import EncodedExample, TaskFormatter, collate
from promptatlas.prompts.config import PromptConfigError, SegmentConfig
from promptatlas.prompts.injection import PromptedLM
from promptatlas.prompts.soft_prompt import SoftPrompt
from promptatlas.tasks import Example

__all__ = [
    "ComposeError",
    "ComputedPrompt",
    "EncodedTask",
    "MethodScore",
    "Objective",
    "Source",
    "TaskData",
    "composed_segment",
    "freeze_copy",
    "group_view",
    "load_task_data",
    "mixing_rates",
    "optimise",
    "prompt_like",
    "score_prompt",
    "snapshot",
    "sources_from_bank",
    "stack_segments",
    "to_tokens",
    "ungroup",
]

Objective = Literal["auto", "lm", "rank"]


class ComposeError(ValueError):
    """Source prompts, data or settings that a composition method cannot use."""


@dataclass(frozen=True)
class Source:
    """A frozen source prompt and what it was trained on."""

    prompt: SoftPrompt
    task: str
    lang: str
    seed: int | None = None

    @property
    def key(self) -> str:
        """``task-lang`` (the key of its task data)."""
        return f"{self.task}-{self.lang}"


@dataclass(frozen=True)
class TaskData:
    """One task in one language: its formatter and splits (test is what scores report)."""

    formatter: TaskFormatter
    train: Sequence[Example]
    dev: Sequence[Example] = ()
    test: Sequence[Example] = ()

    @property
    def key(self) -> str:
        return self.formatter.task.name  # "sa-en"

    @property
    def classification(self) -> bool:
        return self.formatter.task.spec.kind == "classification"


@dataclass(frozen=True)
class MethodScore:
    """A method's test score on one task (fraction in [0, 1]) with its 95% bootstrap
    interval, plus the evaluation summary (metrics, per-example data)."""

    method: str
    task: str
    lang: str
    seed: int
    score: float
    low: float | None
    high: float | None
    n: int
    summary: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return f"{self.task}-{self.lang}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "task": self.task,
            "lang": self.lang,
            "seed": self.seed,
            "score": self.score,
            "low": self.low,
            "high": self.high,
            "n": self.n,
        }


# -- segments ---------------------------------------------------------------------------------


def composed_segment(prompt: SoftPrompt, segment: str | None = None) -> str:
    """The segment a method composes: ``segment``, else "task" when the prompt has one, else its
    only segment."""
    names = prompt.segment_names()
    if segment is not None:
        if segment not in names:
            raise ComposeError(f"the prompt has no segment {segment!r}; segments: {names}")
        return segment
    if "task" in names:
        return "task"
    if len(names) == 1:
        return names[0]
    raise ComposeError(f"say which segment to compose (segment=...); segments: {names}")


def _segment_config(prompt: SoftPrompt, name: str) -> SegmentConfig:
    return next(s for s in prompt.config.segments if s.name == name)


def stack_segments(
    sources: Sequence[Source], segment: str | None = None
) -> tuple[str, torch.Tensor]:
    """The composed segment of every source stacked on a new first axis (n, *segment shape),
    float32 and detached; all sources must have the same method, kv mode, layers and length."""
    if not sources:
        raise ComposeError("no source prompts")
    first = sources[0].prompt
    name = composed_segment(first, segment)
    shape = tuple(first.segments[name].shape)
    for s in sources:
        p = s.prompt
        if (
            p.geometry != first.geometry
            or p.method != first.method
            or p.config.kv != first.config.kv
            or p.layer_indices != first.layer_indices
        ):
            raise ComposeError(
                f"source {s.key} is a different kind of prompt ({p.method}, kv {p.config.kv}, "
                f"layers {p.layer_indices}) than {sources[0].key}; compose prompts of one kind"
            )
        if name not in p.segment_names() or tuple(p.segments[name].shape) != shape:
            raise ComposeError(
                f"source {s.key}'s {name!r} segment does not have the shape {shape} of "
                f"{sources[0].key}'s (another prompt length?)"
            )
    stacked = torch.stack([s.prompt.segments[name].detach().float().cpu() for s in sources])
    return name, stacked


def group_view(segment: torch.Tensor, method: str, kv: str) -> torch.Tensor:
    """A segment tensor (…, *SoftPrompt segment layout) as (…, G, l, e) groups: v1 one group of
    (l, d_model); v2 shared one group per layer (l, d_kv); v2 separate keys and values of each
    layer as two groups. Leading axes (e.g. sources) are kept."""
    if method == "v1":
        return segment.unsqueeze(-3)
    if kv == "shared":
        return segment
    *lead, n_layers, two, length, e = segment.shape
    return segment.reshape(*lead, n_layers * two, length, e)


def ungroup(groups: torch.Tensor, method: str, kv: str) -> torch.Tensor:
    """Inverse of :func:`group_view` for one segment: (G, l, e) → the SoftPrompt layout."""
    if method == "v1":
        return groups.squeeze(0)
    if kv == "shared":
        return groups
    g, length, e = groups.shape
    return groups.reshape(g // 2, 2, length, e)


def to_tokens(segment: torch.Tensor, method: str, kv: str) -> torch.Tensor:
    """(l, values per position): everything a prompt holds for each position (v2: all layers)."""
    groups = group_view(segment, method, kv)  # (G, l, e)
    return groups.permute(1, 0, 2).reshape(groups.shape[1], -1)


def freeze_copy(prompt: SoftPrompt) -> SoftPrompt:
    """A detached copy of ``prompt`` with every segment frozen (on the prompt's device)."""
    copy = SoftPrompt(prompt.config, prompt.geometry)
    copy.load_state_tensors(prompt.state_tensors())
    for name in copy.segment_names():
        copy.set_trainable(name, False)
    device = next(iter(prompt.segments.values())).device
    return copy.to(device)


def prompt_like(
    template: SoftPrompt,
    handle: Any,
    *,
    segment: str | None = None,
    seed: int = 0,
    value: torch.Tensor | None = None,
    label_token_ids: Sequence[int] | None = None,
) -> SoftPrompt:
    """A new prompt with ``template``'s structure and frozen segments (e.g. its language
    segment) whose composed segment is trainable and set to ``value``, or freshly initialised
    by the template's init rule (seeded)."""
    name = composed_segment(template, segment)
    segments = tuple(
        SegmentConfig(s.name, s.length, trainable=s.name == name) for s in template.config.segments
    )
    import dataclasses

    config = dataclasses.replace(template.config, segments=segments)
    prompt = SoftPrompt(config, template.geometry)
    prompt.load_state_tensors(template.state_tensors())
    if value is not None:
        prompt.set_segment(name, value.detach().cpu())
    else:
        prompt.initialise(
            handle,
            generator=torch.Generator().manual_seed(seed),
            label_token_ids=label_token_ids,
            segments=[name],
        )
    return prompt.to(handle.device)


class ComputedPrompt(SoftPrompt):
    """A prompt whose composed segment is computed by ``producer()`` (a module returning the
    segment in the SoftPrompt layout, differentiable w.r.t. its parameters); the other segments
    are ``template``'s, frozen. :class:`~promptatlas.prompts.PromptedLM` runs it like any prompt,
    so a task loss trains the producer's parameters through the frozen model."""

    def __init__(self, template: SoftPrompt, producer: nn.Module, segment: str | None = None):
        super().__init__(template.config, template.geometry)
        self.composed = composed_segment(template, segment)
        self.load_state_tensors(template.state_tensors())
        for name in self.segment_names():
            self.set_trainable(name, False)
        self.producer = producer

    def tensor(self) -> torch.Tensor:
        value = self.producer()
        parts = [
            value.to(self.segments[s.name].device)
            if s.name == self.composed
            else self.segments[s.name]
            for s in self.config.segments
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=self.token_dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.producer.parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.producer.parameters() if p.requires_grad or not trainable_only
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Copies of the segments and of the producer's state ("producer." keys), so the
        trainer's best-state snapshots and checkpoints hold what actually trains."""
        out = super().state_tensors()
        out.update(
            {
                f"producer.{k}": v.detach().cpu().clone()
                for k, v in self.producer.state_dict().items()
            }
        )
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_tensors(
            {k: v for k, v in tensors.items() if not k.startswith("producer.")}
        )
        state = {k[len("producer.") :]: v for k, v in tensors.items() if k.startswith("producer.")}
        if state:
            with torch.no_grad():
                self.producer.load_state_dict(state, strict=True)

    def to_soft_prompt(self) -> SoftPrompt:
        """A plain, detached prompt holding the current values (storable in the bank); the
        composed segment is marked trainable (it is the part the method produced)."""
        with torch.no_grad():
            value = self.producer().detach().float().cpu()
        segments = tuple(
            SegmentConfig(s.name, s.length, trainable=s.name == self.composed)
            for s in self.config.segments
        )
        import dataclasses

        prompt = SoftPrompt(dataclasses.replace(self.config, segments=segments), self.geometry)
        for name in self.segment_names():
            prompt.set_segment(
                name, value if name == self.composed else self.segments[name].detach().cpu()
            )
        return prompt


# -- data and losses ----------------------------------------------------------------------------


def resolve_objective(objective: str, method: str, data: TaskData) -> str:
    """ "auto" → the method's default objective for classification tasks, "lm" otherwise."""
    if objective == "auto":
        return defaults_for(method).objective if data.classification else "lm"
    if objective == "rank" and not data.classification:
        raise ComposeError(f"objective 'rank' needs a classification task, not {data.key}")
    if objective not in ("lm", "rank"):
        raise ComposeError(f"objective must be 'auto', 'lm' or 'rank', got {objective!r}")
    return objective


class EncodedTask:
    """A task's training examples encoded once for ``objective`` ("lm": context + target;
    "rank": contexts and gold label indices), with seeded batches."""

    def __init__(
        self,
        data: TaskData,
        objective: str,
        method: str,
        eval_config: EvalConfig | None = None,
    ) -> None:
        if not data.train:
            raise ComposeError(f"no training examples for {data.key}")
        self.data = data
        self.objective = resolve_objective(objective, method, data)
        fmt = data.formatter
        self.pad = int(fmt.tokenizer.pad_token_id)
        if self.objective == "rank":
            self.suffixes = label_suffixes(fmt, bool(eval_config and eval_config.score_eos))
            reserve = max(len(s) for s in self.suffixes)
            self.items = []
            for ex in data.train:
                ctx = fmt.encode_context(ex, reserve=reserve)
                self.items.append(EncodedExample(tuple(ctx), len(ctx)))
            labels = list(fmt.task.labels)
            self.golds = torch.tensor([labels.index(str(ex.label)) for ex in data.train])
            self.normalise = resolve_length_normalise(eval_config, fmt)
        else:
            self.items = [fmt.encode(ex) for ex in data.train]

    def __len__(self) -> int:
        return len(self.items)

    def batch_indices(self, size: int, seed: int, index: int) -> list[int]:
        """Batch ``index`` of a stream of seeded per-epoch permutations."""
        per_epoch = max(1, math.ceil(len(self.items) / size))
        epoch, j = divmod(index, per_epoch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.items), generator=gen).tolist()
        return perm[j * size : (j + 1) * size]

    def loss(self, plm: PromptedLM, idx: Sequence[int]) -> torch.Tensor:
        """The task loss of examples ``idx`` under ``plm`` (differentiable w.r.t. its prompt)."""
        batch = collate([self.items[i] for i in idx], self.pad)
        if self.objective == "rank":
            return rank_loss(
                plm, batch, self.golds[list(idx)], self.suffixes, length_normalise=self.normalise
            )
        return target_loss(plm, batch)


def mixing_rates(sizes: Mapping[str, int], cap: int | None) -> dict[str, float]:
    """Examples-proportional mixing (Raffel et al. 2020): task t is drawn with probability
    min(n_t, cap) / Σ min(n, cap)."""
    capped = {k: min(n, cap) if cap else n for k, n in sizes.items()}
    total = sum(capped.values())
    if total <= 0:
        raise ComposeError("no training examples in any task")
    return {k: v / total for k, v in capped.items()}


# -- optimisation -------------------------------------------------------------------------------


def _factor(step: int, total: int, warm: int, schedule: str) -> float:
    if step < warm:
        return (step + 1) / (warm + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1 - progress)


def optimise(
    params: Iterable[nn.Parameter],
    loss_at: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    schedule: str = "linear",
    max_grad_norm: float | None = None,
    check: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """AdamW on ``params`` for ``steps`` steps of ``loss_at(step)``, linear warm-up then
    ``schedule`` decay; returns the per-step history (loss, lr). ``check`` runs after every
    step (e.g. an assertion that frozen parts stayed frozen)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ComposeError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = min(warmup_steps, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _factor(s, steps, warm, schedule)
    )
    history: list[dict[str, float]] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_at(step)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        history.append(
            {
                "step": step + 1,
                "loss": float(loss.detach()),
                "lr": float(scheduler.get_last_lr()[0]),
            }
        )
        if check is not None:
            check()
    return history


def warmup_for(warmup_steps: int, total: int) -> int:
    """Warm-up steps actually used: the configured number, at most a tenth of the run (a short
    run would otherwise never leave warm-up)."""
    return min(warmup_steps, total // 10)


# -- scores -------------------------------------------------------------------------------------


def score_result(method: str, data: TaskData, result: EvalResult, seed: int) -> MethodScore:
    est = result.ci(seed=seed)
    task = data.formatter.task
    return MethodScore(
        method=method,
        task=task.spec.name,
        lang=task.lang,
        seed=seed,
        score=result.score,
        low=None if est is None else est.low,
        high=None if est is None else est.high,
        n=result.n,
        summary=result.summary(),
    )


@torch.no_grad()
def score_prompt(
    method: str,
    handle: Any,
    prompt: SoftPrompt,
    data: TaskData,
    *,
    seed: int,
    eval_config: EvalConfig | None = None,
    split: str = "test",
    autocast: torch.dtype | None = None,
) -> MethodScore:
    """Evaluate ``prompt`` on ``data``'s ``split`` (test, else dev) with the task metric and
    its 95% bootstrap interval."""
    examples = list(data.test if split == "test" else data.dev) or list(data.dev)
    if not examples:
        raise ComposeError(f"no {split} examples to score {data.key}")
    plm = PromptedLM(handle, prompt.to(handle.device), autocast_dtype=autocast)
    result = evaluate(plm, data.formatter, examples, eval_config)
    return score_result(method, data, result, seed)


def snapshot(module: nn.Module | SoftPrompt) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer (to check later that nothing moved)."""
    out = {f"p.{k}": v.detach().cpu().clone() for k, v in module.named_parameters()}
    out.update({f"b.{k}": v.detach().cpu().clone() for k, v in module.named_buffers()})
    return out


def unchanged(before: Mapping[str, torch.Tensor], module: nn.Module) -> bool:
    after = snapshot(module)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def check_frozen(module: nn.Module, what: str) -> None:
    """Raise unless no parameter of ``module`` requires a gradient."""
    live = [n for n, p in module.named_parameters() if p.requires_grad]
    if live:
        raise ComposeError(f"{what} must be frozen, but {live[:3]} require gradients")


def ensure_frozen_prompt(prompt: SoftPrompt) -> None:
    if any(p.requires_grad for p in prompt.segments.values()):
        raise PromptConfigError("source prompts must be frozen")


# -- inputs from the bank and the task suite ------------------------------------------------------


def sources_from_bank(
    root: Any,
    handle: Any,
    *,
    tasks: Sequence[str] | None = None,
    langs: Sequence[str] | None = None,
    method: str | None = None,
    check_model: bool = True,
) -> list[Source]:
    """Every task prompt below ``root`` (a bank folder) that fits ``handle``, optionally only
    ``tasks`` / ``langs`` / ``method``, as frozen sources sorted by (task, lang, seed, path).
    Language prompts (no task) are skipped. Several seeds of one task-lang give several
    sources (IPT wants them; AMP wants one per task-lang: filter or pick before)."""
    from promptatlas.bank import list_prompts, load_prompt

    wanted_tasks = {t.lower() for t in tasks} if tasks else None
    wanted_langs = {lang.lower() for lang in langs} if langs else None
    found: list[tuple[tuple[str, str, int, str], Source]] = []
    for path, meta in list_prompts(root):
        if meta.task is None or meta.lang is None:
            continue
        if wanted_tasks is not None and meta.task.lower() not in wanted_tasks:
            continue
        if wanted_langs is not None and meta.lang.lower() not in wanted_langs:
            continue
        if method is not None and meta.prompt.get("method") != method:
            continue
        if meta.model_geometry != handle.geometry:
            continue
        stored = load_prompt(path, handle, check_model=check_model)
        prompt = stored.prompt
        prompt.requires_grad_(False)
        seed = meta.seed if meta.seed is not None else -1
        found.append(
            (
                (meta.task, meta.lang, seed, str(path)),
                Source(prompt, meta.task, meta.lang, meta.seed),
            )
        )
    return [s for _, s in sorted(found, key=lambda x: x[0])]


def load_task_data(
    handle: Any,
    task: str,
    lang: str,
    *,
    data_dir: Any = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    test_limit: int | None = None,
    fmt: Any = None,
) -> TaskData:
    """A task's train/dev/test splits (bundled sample, or ``data_dir``) with its formatter."""
    from promptatlas.tasks import get_task, load_split

    variant = get_task(task, lang)
    formatter = TaskFormatter(handle.tokenizer, variant, fmt)

    def split(name: str, limit: int | None) -> list[Example]:
        return load_split(task, lang, name, data_dir=data_dir, limit=limit)  # type: ignore[arg-type]

    return TaskData(
        formatter,
        split("train", train_limit),
        dev=split("dev", dev_limit),
        test=split("test", test_limit),
    )
