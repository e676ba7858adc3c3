"""Perturbing neurons (Wang et al. 2022; spec §A3).

A forward pre-hook on each chosen layer's down-projection replaces the chosen coordinates of
its input a at every position: ``zero`` sets them to 0, ``mean`` to the training mean a_bsl,
``gaussian`` adds noise ε ~ N(0, σ²) (σ = 0.1 by default, the reference's). The reference
draws one ε per (example, neuron) and broadcasts it over positions (the default here, one
draw per row of each forward call); ``per_position`` draws one per position. Noise comes from
a seeded generator, so a run is reproducible.

The effect of perturbing the skill neurons is compared with the same per-layer number of
random neurons (disjoint from the skill set by default, several seeds, mean ± std) and with
the least predictive neurons, all evaluated with :func:`promptatlas.evaluation.evaluate` on the
same examples; drops carry paired bootstrap intervals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from promptatlas.analysis.skill.predictivity import (
    Predictivity,
    SkillNeurons,
    least_predictive,
    random_control,
    select_skill_neurons,
)
from promptatlas.analysis.skill.states import ffn_parts
from promptatlas.evaluation.confidence import (
    Estimate,
    SeedSummary,
    bootstrap_ci,
    paired_bootstrap,
    seed_summary,
)
from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.tasks import Example

__all__ = [
    "MODES",
    "CrossTaskPerturbation",
    "EvalSetup",
    "PerturbationCurve",
    "PerturbationResult",
    "cross_task_perturbation",
    "measure_perturbation",
    "perturb_neurons",
    "perturbation_curve",
]

Mode = Literal["zero", "mean", "gaussian"]
MODES: tuple[str, ...] = ("zero", "mean", "gaussian")
NeuronSet = SkillNeurons | Mapping[int, Sequence[int] | np.ndarray]


def _as_map(neurons: NeuronSet) -> dict[int, np.ndarray]:
    raw = neurons.neurons if isinstance(neurons, SkillNeurons) else neurons
    return {int(k): np.asarray(v, dtype=np.int64) for k, v in raw.items() if len(v)}


@contextlib.contextmanager
def perturb_neurons(
    handle: ModelHandle,
    neurons: NeuronSet,
    *,
    mode: Mode = "gaussian",
    sigma: float = 0.1,
    values: Mapping[int, np.ndarray | torch.Tensor] | None = None,
    per_position: bool = False,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> Iterator[None]:
    """While active, every forward pass of ``handle``'s model sees the chosen neurons
    perturbed (all positions). ``values`` (mode ``mean``): per layer a (D,) vector (e.g.
    :meth:`Predictivity.baseline`); ``layers`` restricts the perturbation to a layer range."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if sigma < 0:
        raise ValueError(f"sigma must be ≥ 0, got {sigma}")
    chosen = _as_map(neurons)
    if layers is not None:
        keep = set(layers)
        chosen = {k: v for k, v in chosen.items() if k in keep}
    if mode == "mean":
        if values is None:
            raise ValueError("mode 'mean' needs values (the training means per layer)")
        missing = [layer for layer in chosen if layer not in values]
        if missing:
            raise ValueError(f"no mean values for layers {missing}")
    n_layers = handle.geometry.n_layers
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist (valid 0..{n_layers - 1})")
    generator = torch.Generator().manual_seed(seed)
    hooks: list[Any] = []

    def make_hook(layer: int, idx_np: np.ndarray) -> Callable[..., Any]:
        idx_cpu = torch.as_tensor(idx_np, dtype=torch.long)
        fill = None
        if mode == "mean" and values is not None:
            fill = torch.as_tensor(np.asarray(values[layer]), dtype=torch.float32)[idx_cpu]

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            a = args[0]
            idx = idx_cpu.to(a.device)
            out = a.clone()
            if mode == "zero":
                out[..., idx] = 0
            elif mode == "mean":
                assert fill is not None
                out[..., idx] = fill.to(a.device, a.dtype)
            else:
                if per_position or a.dim() < 3:
                    shape = (*a.shape[:-1], len(idx_np))
                else:
                    shape = (a.shape[0], *([1] * (a.dim() - 2)), len(idx_np))
                noise = torch.randn(shape, generator=generator, dtype=torch.float32)
                out[..., idx] = (a[..., idx].float() + sigma * noise.to(a.device)).to(a.dtype)
            return (out, *args[1:])

        return hook

    try:
        for layer, idx in sorted(chosen.items()):
            ffn, layout = ffn_parts(handle, layer)
            down = getattr(ffn, layout.down)
            hooks.append(down.register_forward_pre_hook(make_hook(layer, idx)))
        yield
    finally:
        for h in hooks:
            h.remove()


# -- measuring ------------------------------------------------------------------------------


@dataclass
class PerturbationResult:
    """Scores with the chosen neurons perturbed, against the unperturbed model.

    ``*_drop``: unperturbed − perturbed on the same examples, with paired 95% intervals.
    ``random``: one estimate per random seed; ``random_summary`` their mean ± std."""

    p: float
    mode: str
    sigma: float
    counts: dict[int, int]
    baseline: Estimate
    skill: Estimate
    skill_drop: Estimate
    random: list[Estimate] = field(default_factory=list)
    random_drop: list[Estimate] = field(default_factory=list)
    random_seeds: list[int] = field(default_factory=list)
    least: Estimate | None = None
    least_drop: Estimate | None = None
    name: str = ""

    @property
    def random_summary(self) -> SeedSummary | None:
        return seed_summary([e.value for e in self.random]) if self.random else None

    @property
    def random_drop_summary(self) -> SeedSummary | None:
        return seed_summary([e.value for e in self.random_drop]) if self.random_drop else None

    def to_dict(self) -> dict[str, Any]:
        rs, rd = self.random_summary, self.random_drop_summary
        return {
            "name": self.name,
            "p": self.p,
            "mode": self.mode,
            "sigma": self.sigma,
            "counts": {str(k): v for k, v in self.counts.items()},
            "baseline": self.baseline.to_dict(),
            "skill": self.skill.to_dict(),
            "skill_drop": self.skill_drop.to_dict(),
            "random": [e.to_dict() for e in self.random],
            "random_drop": [e.to_dict() for e in self.random_drop],
            "random_seeds": self.random_seeds,
            "random_mean": None if rs is None else rs.mean,
            "random_std": None if rs is None else rs.std,
            "random_drop_mean": None if rd is None else rd.mean,
            "random_drop_std": None if rd is None else rd.std,
            "least": None if self.least is None else self.least.to_dict(),
            "least_drop": None if self.least_drop is None else self.least_drop.to_dict(),
        }


def _score(result: EvalResult, seed: int) -> Estimate:
    if result.examples is None:
        return Estimate(result.score, result.score, result.score, result.n)
    return bootstrap_ci(result.examples, seed=seed)


def _drop(base: EvalResult, other: EvalResult, seed: int) -> Estimate:
    if base.examples is None or other.examples is None:
        d = base.score - other.score
        return Estimate(d, d, d, base.n)
    return paired_bootstrap(base.examples, other.examples, seed=seed)


def measure_perturbation(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    skill: SkillNeurons,
    *,
    mode: Mode = "gaussian",
    sigma: float = 0.1,
    values: Mapping[int, np.ndarray | torch.Tensor] | None = None,
    per_position: bool = False,
    predictivity: Predictivity | None = None,
    n_random: int = 5,
    random_seed: int = 0,
    disjoint: bool = True,
    noise_seed: int = 0,
    layers: Sequence[int] | None = None,
    config: EvalConfig | None = None,
    baseline: EvalResult | None = None,
) -> PerturbationResult:
    """Evaluate ``plm`` on ``examples`` unperturbed, with ``skill`` perturbed, with
    ``n_random`` random controls (seeds ``random_seed``, ``random_seed+1``, …) and, given the
    ``predictivity``, with the least predictive neurons. ``mode="mean"`` without ``values``
    takes :meth:`Predictivity.baseline`. Every perturbed run uses the same noise seed."""
    cfg = config or EvalConfig()
    if mode == "mean" and values is None:
        if predictivity is None:
            raise ValueError("mode 'mean' needs values or a predictivity")
        if predictivity.state != "down_input":
            raise ValueError(
                "mode 'mean' replaces down-projection inputs; this predictivity was read from "
                f"state {predictivity.state!r}: pass values (means of the down-projection input)"
            )
        values = predictivity.baseline()
    base = baseline if baseline is not None else evaluate(plm, formatter, examples, cfg)
    kw: dict[str, Any] = {
        "mode": mode,
        "sigma": sigma,
        "values": values,
        "per_position": per_position,
        "seed": noise_seed,
        "layers": layers,
    }

    def run(neurons: SkillNeurons) -> EvalResult:
        with perturb_neurons(plm.handle, neurons, **kw):
            return evaluate(plm, formatter, examples, cfg)

    perturbed = run(skill)
    result = PerturbationResult(
        p=skill.p,
        mode=mode,
        sigma=sigma if mode == "gaussian" else 0.0,
        counts=skill.counts(),
        baseline=_score(base, 0),
        skill=_score(perturbed, 0),
        skill_drop=_drop(base, perturbed, 0),
        name=skill.name,
    )
    for r in range(n_random):
        seed = random_seed + r
        control = run(random_control(skill, seed, disjoint=disjoint))
        result.random.append(_score(control, 0))
        result.random_drop.append(_drop(base, control, 0))
        result.random_seeds.append(seed)
    if predictivity is not None:
        least = run(least_predictive(predictivity, skill))
        result.least = _score(least, 0)
        result.least_drop = _drop(base, least, 0)
    return result


@dataclass
class PerturbationCurve:
    """The metric over the fraction p of perturbed neurons: skill vs random vs least."""

    results: list[PerturbationResult]
    scope: str = "layer"
    name: str = ""

    @property
    def ps(self) -> list[float]:
        return [r.p for r in self.results]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for r in self.results:
            rs, rd = r.random_summary, r.random_drop_summary
            out.append(
                {
                    "p": r.p,
                    "n_neurons": sum(r.counts.values()),
                    "baseline": r.baseline.value,
                    "skill": r.skill.value,
                    "skill_low": r.skill.low,
                    "skill_high": r.skill.high,
                    "skill_drop": r.skill_drop.value,
                    "skill_drop_low": r.skill_drop.low,
                    "skill_drop_high": r.skill_drop.high,
                    "random_mean": float("nan") if rs is None else rs.mean,
                    "random_std": float("nan") if rs is None else rs.std,
                    "random_drop_mean": float("nan") if rd is None else rd.mean,
                    "random_drop_std": float("nan") if rd is None else rd.std,
                    "least": float("nan") if r.least is None else r.least.value,
                    "least_drop": float("nan") if r.least_drop is None else r.least_drop.value,
                }
            )
        return out


def perturbation_curve(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    predictivity: Predictivity,
    ps: Sequence[float] = (0.01, 0.02, 0.05),
    *,
    scope: Literal["layer", "global"] = "layer",
    config: EvalConfig | None = None,
    **kwargs: Any,
) -> PerturbationCurve:
    """:func:`measure_perturbation` for the top-p skill neurons at each p (one unperturbed
    evaluation shared by all). ``kwargs`` go to :func:`measure_perturbation`."""
    cfg = config or EvalConfig()
    base = evaluate(plm, formatter, examples, cfg)
    results = []
    for p in ps:
        skill = select_skill_neurons(predictivity, p, scope=scope)
        results.append(
            measure_perturbation(
                plm,
                formatter,
                examples,
                skill,
                predictivity=predictivity,
                config=cfg,
                baseline=base,
                **kwargs,
            )
        )
    return PerturbationCurve(results, scope, predictivity.name)


@dataclass
class EvalSetup:
    """What evaluating one task needs: the prompted model, its formatter and examples."""

    plm: PromptedLM
    formatter: TaskFormatter
    examples: Sequence[Example]


@dataclass
class CrossTaskPerturbation:
    """Perturb the skill neurons of each source (rows), evaluate each target (columns).

    ``scores`` (S, T): the perturbed target scores; ``drops`` (S, T): unperturbed − perturbed;
    ``baselines`` (T,): the unperturbed target scores."""

    sources: list[str]
    targets: list[str]
    scores: np.ndarray
    drops: np.ndarray
    baselines: np.ndarray
    mode: str
    sigma: float
    p: float

    def relative(self) -> np.ndarray:
        """Perturbed / unperturbed score (1 = no effect)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            out: np.ndarray = self.scores / self.baselines[None, :]
        return out


def cross_task_perturbation(
    skills: Mapping[str, SkillNeurons],
    setups: Mapping[str, EvalSetup],
    *,
    mode: Mode = "gaussian",
    sigma: float = 0.1,
    values: Mapping[str, Mapping[int, np.ndarray | torch.Tensor]] | None = None,
    noise_seed: int = 0,
    config: EvalConfig | None = None,
) -> CrossTaskPerturbation:
    """The task × task matrix: perturb source A's skill neurons, evaluate target B.
    ``values`` (mode ``mean``): per source the per-layer means."""
    cfg = config or EvalConfig()
    sources, targets = list(skills), list(setups)
    base = np.zeros(len(targets))
    scores = np.zeros((len(sources), len(targets)))
    for j, t in enumerate(targets):
        s = setups[t]
        base[j] = evaluate(s.plm, s.formatter, s.examples, cfg).score
    for i, src in enumerate(sources):
        vals = None if values is None else values[src]
        for j, t in enumerate(targets):
            s = setups[t]
            with perturb_neurons(
                s.plm.handle, skills[src], mode=mode, sigma=sigma, values=vals, seed=noise_seed
            ):
                scores[i, j] = evaluate(s.plm, s.formatter, s.examples, cfg).score
    p = next(iter(skills.values())).p if skills else 0.0
    return CrossTaskPerturbation(
        sources, targets, scores, base[None, :] - scores, base, mode, sigma, p
    )
