"""One seed of the comparison in AMP's Table 1 layout: PT, SPoT-s, SPoT-m, ATTEMPT and AMP on
the same target tasks, source prompts and data; and the AMP ablation settings.

Pure computation (no files): a study runs :func:`compare_methods` once per seed and language
and hands the scores to :func:`promptatlas.report.compose.comparison_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from promptatlas.compose.amp import AMPConfig, AMPResult, train_amp
from promptatlas.compose.attempt import AttemptConfig, AttemptResult, train_attempt
from promptatlas.compose.common import ComposeError, MethodScore, Source, TaskData
from promptatlas.compose.spot import PromptTuningResult, SpotConfig, run_prompt_tuning, run_spot
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.training import TrainConfig

__all__ = ["METHODS", "CompareConfig", "ComparisonRun", "amp_ablations", "compare_methods"]

METHODS: tuple[str, ...] = ("pt", "spot-s", "spot-m", "attempt", "amp")


def amp_ablations(base: AMPConfig | None = None, d: int | None = None) -> dict[str, AMPConfig]:
    """The AMP ablations of the spec from ``base``: DAM vs max-pooled q/k (Fig. 2), k ∈ {64,
    256, d} (Fig. 4; d = None means k = d), and the raw-P value (value = identity)."""
    cfg = base or AMPConfig()
    out = {
        "dam": cfg,
        "max-pool": dataclasses.replace(cfg, pooling="max"),
        "k64": dataclasses.replace(cfg, k=64),
        "k256": dataclasses.replace(cfg, k=256),
        "k=d": dataclasses.replace(cfg, k=d),
        "value-identity": dataclasses.replace(cfg, value="identity"),
    }
    return out


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison seed. ``pt`` trains PT and both SPoT variants (the same
    prompt-tuning budget); ``seed`` overrides every method's seed."""

    methods: tuple[str, ...] = METHODS
    pt: TrainConfig = field(default_factory=TrainConfig)
    spot_m_source: str | None = None
    attempt: AttemptConfig = field(default_factory=AttemptConfig)
    amp: AMPConfig = field(default_factory=AMPConfig)
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ComposeError(f"unknown method(s) {unknown}; methods: {list(METHODS)}")


@dataclass
class ComparisonRun:
    """Scores of every method on every target task (one seed), and the runs behind them."""

    scores: list[MethodScore]
    tuning: dict[tuple[str, str], PromptTuningResult] = field(default_factory=dict)
    attempt: dict[str, AttemptResult] = field(default_factory=dict)
    amp: AMPResult | None = None


def compare_methods(
    handle: Any,
    sources: Sequence[Source],
    data: Mapping[str, TaskData],
    config: CompareConfig | None = None,
    *,
    eval_config: EvalConfig | None = None,
    autocast: torch.dtype | None = None,
) -> ComparisonRun:
    """Run the chosen methods for every target task in ``data`` ("task-lang" keys, each with a
    source prompt among ``sources``), one seed."""
    cfg = config or CompareConfig()
    seed = cfg.seed
    own = {s.key: s for s in sources}
    missing = sorted(set(data) - set(own))
    if missing:
        raise ComposeError(f"target tasks {missing} have no source prompt")
    pt = dataclasses.replace(cfg.pt, seed=seed)
    run = ComparisonRun(scores=[])
    for key, task_data in data.items():
        template = own[key].prompt
        if "pt" in cfg.methods:
            res = run_prompt_tuning(
                handle, template, task_data, pt, eval_config=eval_config, autocast=autocast
            )
            run.tuning[("pt", key)] = res
            run.scores.append(res.score)
        for mode in ("s", "m"):
            if f"spot-{mode}" in cfg.methods:
                spot = SpotConfig(mode=mode, source=cfg.spot_m_source, train=pt)
                res = run_spot(
                    handle, sources, task_data, spot, template=template,
                    eval_config=eval_config, autocast=autocast,
                )  # fmt: skip
                run.tuning[(f"spot-{mode}", key)] = res
                run.scores.append(res.score)
        if "attempt" in cfg.methods:
            att = train_attempt(
                handle, sources, task_data, dataclasses.replace(cfg.attempt, seed=seed),
                template=template, eval_config=eval_config, autocast=autocast,
            )  # fmt: skip
            run.attempt[key] = att
            if att.score is not None:
                run.scores.append(att.score)
    if "amp" in cfg.methods:
        amp = train_amp(
            handle, sources, data, dataclasses.replace(cfg.amp, seed=seed),
            eval_config=eval_config, autocast=autocast,
        )  # fmt: skip
        run.amp = amp
        run.scores.extend(amp.scores[k] for k in data if k in amp.scores)
    return run
