"""The composition step of a grid's analysis (``analysis.compose``): AMP over the grid's own
prompts of one language and one IPT recovery number (spec composition.md §C, §D).

* AMP: ψ trains on the chosen tasks mixed (CPU-sized settings, :data:`CPU_AMP`, with the
  block's overrides); each composed target prompt is scored on the grid's test examples and
  compared with the target's own prompt and with the untrained prompt (paired intervals on
  the same examples). Outputs: ``amp-<lang>/`` (a composition run folder: scores, attention
  heatmap, the composed prompts).
* IPT: an autoencoder fitted on the grid's own task prompts (every language; the target left
  out when ``unseen``), then intrinsic subspace tuning of the target (only z trains) —
  recovery = IST / own and gain recovery = (IST − untrained) / (own − untrained), with paired
  intervals. Outputs: ``ipt-d<d_I>/`` (the subspace, the tuned prompt).
* ``composition.json`` (every comparison) and ``composition.md`` (the tables).

The own prompts are the grid's first method and seed. A grid has few own prompts (the main
job: SA-en, NLI-en, SA-ko), so this shows the methods at work on the prompts the job trained;
``configs/compose.yaml`` is the comparison with seeds and baselines.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptatlas.bank import load_prompt, read_metadata, save_prompt
from promptatlas.compose import (
    AMPConfig,
    IPTConfig,
    ISTConfig,
    OwnComposition,
    Source,
    compare_to_own,
    fit_ipt,
    load_task_data,
    save_subspace,
    tune_intrinsic,
)
from promptatlas.configtools import ConfigBase, from_dict
from promptatlas.io import write_json_atomic, write_text_atomic
from promptatlas.models import ModelHandle
from promptatlas.models.precision import autocast_dtype, hardware_info, resolve_precision
from promptatlas.report.compose import own_composition_markdown
from promptatlas.runs.compose import CPU_AMP, CPU_IPT, CPU_IST, ComposeRunConfig, compose_run
from promptatlas.studies.experiment import ExperimentError

__all__ = [
    "GridCompositionSpec",
    "GridIPTSpec",
    "compose_own_prompts",
]


def _key(value: str) -> str:
    return str(value).strip().lower()


def _overrides(base: Any, values: Mapping[str, Any], path: str) -> Any:
    """``base`` (a settings dataclass) with ``values`` merged in, checked as a config."""
    return from_dict(type(base), {**dataclasses.asdict(base), **dict(values)}, path=path)


@dataclass(frozen=True)
class GridIPTSpec(ConfigBase):
    """``analysis.compose.ipt``: fit a ``dim``-dimensional subspace on the grid's own task
    prompts, then tune only z for ``target`` ("task-lang"; default the first own prompt).
    ``unseen``: leave the target out of the fit (then at least two other prompts are needed).
    ``fit`` / ``tune``: overrides of the CPU-sized settings :data:`CPU_IPT` /
    :data:`CPU_IST` (reconstruction-only fit, 300 steps; IST lr 0.1, 30 steps)."""

    target: str | None = None
    dim: int = 2
    unseen: bool = False
    fit: Mapping[str, Any] = field(default_factory=dict)
    tune: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1:
            raise ExperimentError(f"analysis.compose.ipt.dim: ≥ 1, got {self.dim}")
        if self.target is not None:
            object.__setattr__(self, "target", _key(self.target))
        self.fit_config()
        self.tune_config()

    def fit_config(self) -> IPTConfig:
        merged: IPTConfig = _overrides(CPU_IPT, self.fit, "analysis.compose.ipt.fit")
        return dataclasses.replace(merged, intrinsic_dim=self.dim)

    def tune_config(self) -> ISTConfig:
        tuned: ISTConfig = _overrides(CPU_IST, self.tune, "analysis.compose.ipt.tune")
        return tuned


@dataclass(frozen=True)
class GridCompositionSpec(ConfigBase):
    """``analysis.compose`` (see the module docstring).

    lang / tasks: AMP's language (default the grid's first) and tasks (default every own task
    prompt of that language; two or more). amp: overrides of :data:`CPU_AMP` (null: no AMP).
    ipt: :class:`GridIPTSpec` (null: no IPT). test_limit: test examples per target (default the
    grid's, so the paired intervals against the stored own scores use the same examples).
    seed: AMP's and IST's seed."""

    lang: str | None = None
    tasks: tuple[str, ...] | None = None
    amp: Mapping[str, Any] | None = field(default_factory=dict)
    ipt: GridIPTSpec | None = field(default_factory=GridIPTSpec)
    test_limit: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lang is not None:
            object.__setattr__(self, "lang", _key(self.lang))
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(_key(t) for t in self.tasks))
        if self.ipt is not None:
            object.__setattr__(
                self, "ipt", from_dict(GridIPTSpec, self.ipt, path="analysis.compose.ipt")
            )
        self.amp_config()
        if self.test_limit is not None and self.test_limit < 1:
            raise ExperimentError("analysis.compose.test_limit: ≥ 1, or null for the grid's")
        if self.amp is None and self.ipt is None:
            raise ExperimentError("analysis.compose: give amp, ipt or both")

    def amp_config(self) -> AMPConfig | None:
        if self.amp is None:
            return None
        merged: AMPConfig = _overrides(CPU_AMP, self.amp, "analysis.compose.amp")
        return dataclasses.replace(merged, seed=self.seed)

    def plan(
        self, own: Mapping[str, Any], langs: tuple[str, ...]
    ) -> tuple[str, tuple[str, ...], str | None]:
        """(AMP's language, AMP's tasks, IPT's target) for a grid whose own prompts are the
        keys of ``own`` ("task-lang"); fails naming the problem when they do not fit."""
        lang = self.lang or langs[0]
        have = tuple(k.rsplit("-", 1)[0] for k in own if k.rsplit("-", 1)[1] == lang)
        tasks = self.tasks or have
        if self.amp is not None:
            absent = [t for t in tasks if t not in have]
            if absent:
                raise ExperimentError(
                    f"analysis.compose.tasks: the grid trains no own {lang} prompt for "
                    f"{absent}; its {lang} prompts: {list(have)}"
                )
            if len(tasks) < 2:
                raise ExperimentError(
                    f"analysis.compose: AMP needs two or more own prompts of one language; the "
                    f"grid has {list(have)} in {lang!r} (choose another lang, or amp: null)"
                )
        target = None
        if self.ipt is not None:
            target = self.ipt.target or next(iter(own))
            if target not in own:
                raise ExperimentError(
                    f"analysis.compose.ipt.target: {target!r} is not an own prompt of the grid; "
                    f"choose one of {list(own)}"
                )
            fitted = [k for k in own if not (self.ipt.unseen and k == target)]
            if len(fitted) < 2:
                raise ExperimentError(
                    f"analysis.compose.ipt: the fit needs two or more own prompts, it would get "
                    f"{fitted}" + (" (unseen leaves the target out)" if self.ipt.unseen else "")
                )
        return lang, tuple(tasks), target


def compose_own_prompts(
    bank: str | Path,
    own: Mapping[str, str | Path],
    out: str | Path,
    spec: GridCompositionSpec,
    *,
    langs: tuple[str, ...],
    handle: ModelHandle,
    seed: int,
    method: str,
    data_dir: str | None = None,
    precision: str = "auto",
    dev_limit: int | None = 64,
    test_limit: int | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> OwnComposition:
    """Run the step (module docstring) on the own prompts ``own`` ("task-lang" → prompt
    directory, all in ``bank``, of prompt method ``method`` and seed ``seed``) into ``out``."""
    out = Path(out)
    lang, tasks, target = spec.plan(own, langs)
    limit = spec.test_limit or test_limit
    metas = {k: read_metadata(p) for k, p in own.items()}
    result = OwnComposition(model=handle.name)
    amp = spec.amp_config()
    if amp is not None:
        started = time.perf_counter()
        log(f"AMP over the own {lang} prompts {list(tasks)} ({amp.steps} steps, lr {amp.lr:g})")
        run = compose_run(
            ComposeRunConfig(
                method="amp", sources=str(bank), tasks=tasks, lang=lang, source_tasks=tasks,
                source_seed=seed, source_method=method, amp=amp, data_dir=data_dir,
                dev_limit=dev_limit, test_limit=limit, seed=spec.seed,
                precision=precision,  # type: ignore[arg-type]
            ),
            out / f"amp-{lang}", handle=handle, overwrite=True, log=log,
        )  # fmt: skip
        for score in run.scores:
            m = metas[score.key].metrics
            result.amp.append(compare_to_own(score, m.get("test"), m.get("untrained_test")))
        result.amp_lang = lang
        result.attention_keys = list(run.keys)
        if run.attention is not None:
            result.attention = run.attention.tolist()
        result.seconds["amp"] = time.perf_counter() - started
        for c in result.amp:
            log(f"  {c.key}: AMP {_pct(c.score)}, own {_pct(c.own)}, untrained {_pct(c.untrained)}")
    if spec.ipt is not None and target is not None:
        started = time.perf_counter()
        ipt = spec.ipt
        fit_cfg, tune_cfg = ipt.fit_config(), dataclasses.replace(ipt.tune_config(), seed=spec.seed)
        loaded = {k: load_prompt(p, handle) for k, p in own.items()}
        sources = []
        for k, stored in loaded.items():
            stored.prompt.requires_grad_(False)
            task, lang_k = k.rsplit("-", 1)
            sources.append(Source(stored.prompt, task, lang_k, stored.meta.seed))
        fitted = [s for s in sources if not (ipt.unseen and s.key == target)]
        autocast = autocast_dtype(precision, handle.device)

        def data(key: str, **limits: Any) -> Any:
            task, lang_k = key.rsplit("-", 1)
            return load_task_data(
                handle, task, lang_k, data_dir=data_dir, fmt=metas[key].run.format, **limits
            )

        fit_data = (
            {s.key: data(s.key, dev_limit=1, test_limit=1) for s in fitted}
            if fit_cfg.task_loss
            else {}
        )
        log(
            f"IPT: d_I {ipt.dim} fitted on {[s.key for s in fitted]} ({fit_cfg.steps} steps), "
            f"then z of {target} ({tune_cfg.steps} steps, lr {tune_cfg.lr:g})"
        )
        eval_cfg = metas[target].run.eval
        subspace = fit_ipt(
            handle, fitted, fit_data, fit_cfg, eval_config=eval_cfg, autocast=autocast
        )
        where = out / f"ipt-d{ipt.dim}"
        mse = subspace.reconstruction_error(fitted)
        keys = [s.key for s in fitted]
        save_subspace(
            subspace,
            where / "subspace",
            extra={"model": handle.name, "reconstruction_mse": mse, "fitted": keys},
        )
        target_data = data(target, dev_limit=dev_limit, test_limit=limit)
        run_ist = tune_intrinsic(
            handle, subspace, target_data, tune_cfg, template=loaded[target].prompt,
            eval_config=eval_cfg, autocast=autocast,
        )  # fmt: skip
        assert run_ist.score is not None
        m = metas[target].metrics
        result.ipt = compare_to_own(run_ist.score, m.get("test"), m.get("untrained_test"))
        result.ipt_dim = ipt.dim
        result.ipt_fitted = keys
        result.ipt_seen = not ipt.unseen
        result.ipt_reconstruction_mse = mse
        task, lang_t = target.rsplit("-", 1)
        save_prompt(
            where / f"{target}-ist",
            run_ist.prompt.cpu(),
            handle,
            task=task,
            lang=lang_t,
            seed=tune_cfg.seed,
            metrics={"test": run_ist.score.summary},
            config={
                "ipt": {"fit": fit_cfg.to_dict(), "tune": tune_cfg.to_dict()},
                "format": dataclasses.asdict(metas[target].run.format),
                "eval": dataclasses.asdict(eval_cfg),
                "precision": precision,
            },
            extra={"ipt": {"intrinsic_dim": ipt.dim, "z": run_ist.z.tolist(), "fitted": keys}},
            overwrite=True,
        )
        result.seconds["ipt"] = time.perf_counter() - started
        c = result.ipt
        log(
            f"  {target}: IST {_pct(c.score)}, own {_pct(c.own)}, untrained {_pct(c.untrained)}; "
            f"recovery {_share(c.recovery)}, gain recovery {_share(c.gain_recovery)}"
        )
    write_json_atomic(
        out / "composition.json",
        {
            **result.to_dict(),
            "spec": spec.to_dict(),
            "hardware": hardware_info(handle.device),
            "resolved_precision": resolve_precision(precision, handle.device),
        },
    )
    write_text_atomic(out / "composition.md", own_composition_markdown(result))
    return result


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"
