"""Skill-neuron runs on a stored prompt: find, perturb, prune (spec §A, docs/skill-neurons.md).

Each run loads a prompt directory, its task and language from its metadata, the model it was
trained on and the data splits; calls :mod:`promptatlas.analysis.skill`; writes its results
with :mod:`promptatlas.report.skill`; and saves ``run.json`` beside them (the run's config,
library versions, CPU, resolved precision, timings, the prompt's own scores).

* :func:`find_neurons` — predictivity of every FFN neuron (thresholds on ``train``,
  accuracies on ``dev``), skill neurons per p, the best neuron's histogram by label;
* :func:`perturb_neurons_run` — the skill neurons of a ``find`` folder perturbed on ``test``
  against random (disjoint, several seeds) and least-predictive neurons, per p;
* :func:`prune_run` — FFNs sliced to the skill neurons in chosen layers (removed neurons'
  mean folded into a bias) against random pruning: kept parameters, score, forward time;
* :func:`overlap_run` — skill-neuron overlap and predictivity correlation between several
  ``find`` folders (tasks, languages).

The science defaults live here (the ``*_DEFAULTS`` configs); the CLI only passes overrides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from promptatlas.analysis.capture import context_batches
from promptatlas.analysis.skill import (
    MODES,
    POSITIONS,
    STATES,
    PerturbationCurve,
    Predictivity,
    SkillSimilarity,
    default_prune_layers,
    forward_time,
    keep_by_predictivity,
    neuron_activations,
    neuron_predictivity,
    perturbation_curve,
    prune_ffn,
    pruning_means,
    random_keep,
    select_skill_neurons,
    skill_similarity,
)
from promptatlas.analysis.skill.states import read_neurons
from promptatlas.bank import PromptMetadata, load_prompt, read_metadata
from promptatlas.bank.store import versions
from promptatlas.configtools import ConfigBase, Precision, from_dict
from promptatlas.evaluation.evaluate import EvalConfig, EvalResult, evaluate, paired_gain
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.io import write_bytes_atomic, write_json_atomic
from promptatlas.models import ModelHandle, load_model
from promptatlas.models.precision import hardware_info, resolve_precision
from promptatlas.prompts import PromptedLM, SoftPrompt
from promptatlas.prompts.injection import autocast_dtype
from promptatlas.report.skill import (
    perturbation_csv,
    perturbation_figure,
    pruning_csv,
    read_predictivity,
    similarity_csv,
    similarity_figure,
    write_skill_report,
)
from promptatlas.tasks import Example, get_task, load_split
from promptatlas.training import TrainConfig
from promptatlas.training.lora import (
    LORA_LR,
    LoRAConfig,
    apply_lora,
    has_lora,
    load_lora_state,
    lora_state,
    remove_lora,
    train_lora,
)

__all__ = [
    "FindConfig",
    "LoRARunConfig",
    "NeuronSource",
    "PerturbConfig",
    "PruneConfig",
    "find_neurons",
    "is_lora_folder",
    "load_skill",
    "load_source",
    "lora_run",
    "overlap_run",
    "parse_fractions",
    "parse_layers",
    "perturb_neurons_run",
    "prune_run",
]

Log = Callable[[str], Any]


def _quiet(_: str) -> None:
    return None


# -- configs (the defaults of each run) -----------------------------------------------------


@dataclass(frozen=True)
class FindConfig(ConfigBase):
    """Predictivity of every neuron. ``layers`` None = all; ``ps`` the skill-neuron fractions
    stored (``skill_<p>pct.json``); ``train_limit``/``dev_limit`` examples of each split."""

    state: str = "down_input"
    position: str = "decoding"
    k: int = 1
    layers: tuple[int, ...] | None = None
    train_limit: int | None = 512
    dev_limit: int | None = 256
    ps: tuple[float, ...] = (0.01, 0.02, 0.05)
    scope: Literal["layer", "global"] = "layer"
    batch_size: int = 16
    data_dir: str | None = None
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.state not in STATES:
            raise self.invalid("state", f"must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.position not in POSITIONS:
            raise self.invalid(
                "position", f"must be one of {', '.join(POSITIONS)}, got {self.position!r}"
            )
        _check_limits(self, ("train_limit", "dev_limit"))
        _check_ps(self, self.ps)


@dataclass(frozen=True)
class PerturbConfig(ConfigBase):
    """Perturbation of the top-p skill neurons on the test split (``mode`` zero, mean or
    gaussian with ``sigma``) against ``n_random`` random controls and the least predictive."""

    mode: str = "gaussian"
    sigma: float = 0.1
    ps: tuple[float, ...] = (0.01, 0.02, 0.05)
    n_random: int = 5
    random_seed: int = 0
    noise_seed: int = 0
    scope: Literal["layer", "global"] = "layer"
    test_limit: int | None = None
    data_dir: str | None = None
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise self.invalid("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.sigma < 0:
            raise self.invalid("sigma", f"must be ≥ 0, got {self.sigma}")
        if self.n_random < 0:
            raise self.invalid("n_random", f"must be ≥ 0, got {self.n_random}")
        _check_limits(self, ("test_limit",))
        _check_ps(self, self.ps)


@dataclass(frozen=True)
class PruneConfig(ConfigBase):
    """Pruning ``layers`` (None = ⌊L/4⌋..L−1) to ⌈keep·D⌉ neurons each (the skill neurons of
    ``p`` first, then the next most predictive), the removed neurons' ``mean_source`` mean
    folded into a bias; a random-pruning control with ``random_seed``; forward time as the
    median of ``repeats`` timed passes over ``time_examples`` test examples."""

    layers: tuple[int, ...] | None = None
    keep: float = 0.02
    p: float = 0.01
    mean_source: Literal["tokens", "decoding", "zero"] = "tokens"
    random_control: bool = True
    random_seed: int = 0
    repeats: int = 3
    time_examples: int = 64
    test_limit: int | None = None
    data_dir: str | None = None
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.keep <= 1:
            raise self.invalid("keep", f"must be in (0, 1], got {self.keep}")
        _check_ps(self, (self.p,))
        _check_limits(self, ("test_limit",))


def _check_limits(cfg: ConfigBase, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise cfg.invalid(name, f"must be ≥ 1 or None, got {value}")


def _check_ps(cfg: ConfigBase, ps: Sequence[float]) -> None:
    if not ps:
        raise cfg.invalid("ps", "give at least one fraction")
    for p in ps:
        if not 0 < p <= 1:
            raise cfg.invalid("ps", f"fractions must be in (0, 1], got {p}")


# -- parsing helpers shared with the CLI ---------------------------------------------------


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.01,0.02,0.05"`` or ``"1%,2%"`` → (0.01, 0.02, 0.05); each in (0, 1]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise ValueError(
                f"bad fraction {part!r} in {text!r}; give e.g. 0.01,0.02,0.05 or 1%,2%,5%"
            ) from None
        if not 0 < value <= 1:
            raise ValueError(f"fraction {part!r} is not in (0, 1]; e.g. 0.01 for the top 1%")
        out.append(value)
    if not out:
        raise ValueError(f"no fraction in {text!r}; give e.g. 0.01,0.02,0.05")
    return tuple(out)


def parse_layers(text: str, n_layers: int | None = None) -> tuple[int, ...]:
    """``"4-17"``, ``"0,1,5-7"`` → sorted layer indices (checked against ``n_layers``)."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad layers {text!r}; give e.g. 4-17 or 0,1,2,15-17") from None
    if not out:
        raise ValueError(f"no layer in {text!r}; give e.g. 4-17")
    if n_layers is not None:
        bad = sorted(i for i in out if not 0 <= i < n_layers)
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has layers 0..{n_layers - 1}")
    return tuple(sorted(out))


# -- loading ---------------------------------------------------------------------------------


@dataclass
class NeuronSource:
    """A stored task prompt ready for neuron runs: model, prompt, formatter, metadata. Or a
    LoRA-tuned model (a folder written by :func:`lora_run`): ``prompt`` and ``meta`` None, the
    model carrying the adapters, ``lora`` its record (``lora.json``)."""

    path: Path
    handle: ModelHandle
    prompt: SoftPrompt | None
    meta: PromptMetadata | None
    formatter: TaskFormatter
    autocast: torch.dtype | None
    precision: str
    lora: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        task = self.meta.task if self.meta is not None else (self.lora or {}).get("task")
        assert task is not None
        return str(task)

    @property
    def lang(self) -> str:
        lang = self.meta.lang if self.meta is not None else (self.lora or {}).get("lang")
        assert lang is not None
        return str(lang)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.lang}"

    @property
    def method(self) -> str:
        return "lora" if self.prompt is None else self.prompt.method

    def plm(self, handle: ModelHandle | None = None) -> PromptedLM:
        return PromptedLM(handle or self.handle, self.prompt, autocast_dtype=self.autocast)

    def split(self, split: str, limit: int | None, data_dir: str | None = None) -> list[Example]:
        examples = load_split(
            self.task,
            self.lang,
            split,  # type: ignore[arg-type]
            data_dir=data_dir,
            limit=limit,
        )
        if not examples:
            raise ValueError(f"the {split} split of {self.name} is empty")
        return examples

    @property
    def eval_config(self) -> EvalConfig:
        if self.meta is not None:
            return self.meta.run.eval
        # as a stored prompt's evaluation options are read (None = decided at evaluation)
        return EvalConfig(**(self.lora or {}).get("eval", {}))

    def info(self) -> dict[str, Any]:
        if self.meta is None:
            lora = self.lora or {}
            return {
                "path": str(self.path),
                "task": self.task,
                "lang": self.lang,
                "method": "lora",
                "seed": lora.get("train", {}).get("seed"),
                "model": lora.get("model"),
                "model_fingerprint": lora.get("model_fingerprint"),
                "stored_test": lora.get("test", {}),
            }
        test = self.meta.metrics.get("test", {}) if isinstance(self.meta.metrics, dict) else {}
        return {
            "path": str(self.path),
            "task": self.meta.task,
            "lang": self.meta.lang,
            "method": self.method,
            "seed": self.meta.seed,
            "model": self.meta.model,
            "model_fingerprint": self.meta.model_fingerprint,
            "stored_test": {k: test.get(k) for k in ("score", "n", "ci", "majority") if k in test},
        }


def load_source(
    prompt_dir: str | Path,
    *,
    handle: ModelHandle | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> NeuronSource:
    """A stored task prompt of a classification task, its model (loaded unless given) and
    formatter; or a LoRA folder written by :func:`lora_run` (its model with the adapters in
    place, no prompt). Language prompts and generation tasks fail before the model loads."""
    path = Path(prompt_dir)
    if is_lora_folder(path):
        return _load_lora_source(path, handle=handle, device=device, precision=precision)
    if not (path / "prompt.json").exists():
        raise FileNotFoundError(
            f"{path} is not a prompt directory (no prompt.json); give a folder written by "
            "`promptatlas train`"
        )
    meta = read_metadata(path)
    if meta.task is None or meta.lang is None:
        raise ValueError(
            f"{path} records no task (a language prompt?); skill neurons need a task prompt"
        )
    variant = get_task(meta.task, meta.lang)
    if variant.spec.kind != "classification":
        raise ValueError(
            f"skill neurons need a classification task; {path} is a {variant.name} prompt "
            f"({variant.spec.kind})"
        )
    if handle is not None and has_lora(handle):
        raise ValueError(
            f"the model handle carries LoRA adapters; load {path} into a model without them "
            "(remove_lora)"
        )
    handle = handle or load_model(meta.model, device=device)
    stored = load_prompt(path, handle)
    formatter = TaskFormatter(handle.tokenizer, variant, meta.run.format)
    return NeuronSource(
        path,
        handle,
        stored.prompt.to(handle.device),
        meta,
        formatter,
        autocast_dtype(precision, handle.device),
        resolve_precision(precision, handle.device),
    )


def load_skill(folder: str | Path) -> Predictivity:
    """The predictivity stored by :func:`find_neurons` (a clear error for another folder)."""
    folder = Path(folder)
    if not (folder / "predictivity.json").exists() or not (folder / "predictivity.npz").exists():
        raise FileNotFoundError(
            f"{folder} holds no predictivity.json/.npz; give the --out folder of "
            "`promptatlas neurons find`"
        )
    return read_predictivity(folder)


def _check_same_model(pred: Predictivity, source: NeuronSource, skill_dir: Path) -> None:
    found = pred.meta.get("model_fingerprint")
    if found and found != source.handle.fingerprint:
        raise ValueError(
            f"the skill neurons in {skill_dir} were found on model {pred.meta.get('model')} "
            f"({found}), but {source.path} runs on {source.handle.name} "
            f"({source.handle.fingerprint}); find them again on this model"
        )
    if pred.d_ffn != source.handle.geometry.d_ffn:
        raise ValueError(
            f"the skill neurons in {skill_dir} have {pred.d_ffn} neurons per layer, the model "
            f"has {source.handle.geometry.d_ffn}"
        )


def _write_run(
    out: Path,
    kind: str,
    cfg: ConfigBase,
    source: NeuronSource,
    seconds: float,
    extra: dict[str, Any],
) -> Path:
    record = {
        "kind": kind,
        "config": cfg.to_dict(),
        "prompt": source.info(),
        "model": source.handle.name,
        "device": str(source.handle.device),
        "resolved_precision": source.precision,
        "hardware": hardware_info(source.handle.device),
        "versions": versions(),
        "seconds": round(seconds, 2),
        **extra,
    }
    return write_json_atomic(out / "run.json", record)


# -- find --------------------------------------------------------------------------------------


def find_neurons(
    prompt_dir: str | Path,
    out: str | Path,
    cfg: FindConfig | None = None,
    *,
    handle: ModelHandle | None = None,
    source: NeuronSource | None = None,
    log: Log = _quiet,
) -> Predictivity:
    """Predictivity of every FFN neuron of ``prompt_dir``'s model for its task, written to
    ``out`` (``predictivity.npz/.json``, ``by_layer.csv/.png``, ``skill_<p>pct.csv/.json``,
    ``best_neuron.png/.csv``, ``run.json``)."""
    cfg = cfg or FindConfig()
    out = Path(out)
    started = time.perf_counter()
    src = source or load_source(prompt_dir, handle=handle, precision=cfg.precision)
    layers = cfg.layers
    if layers is not None:
        parse_layers(",".join(map(str, layers)), src.handle.geometry.n_layers)
    train = src.split("train", cfg.train_limit, cfg.data_dir)
    dev = src.split("dev", cfg.dev_limit, cfg.data_dir)
    log(
        f"predictivity of {src.name} ({src.method}) on {src.handle.name}: "
        f"{len(train)} train, {len(dev)} dev, state {cfg.state}, position {cfg.position}"
    )
    pred = neuron_predictivity(
        src.handle,
        src.prompt,
        src.formatter,
        train,
        dev,
        layers=layers,
        state=cfg.state,
        position=cfg.position,
        k=cfg.k,
        batch_size=cfg.batch_size,
        autocast_dtype=src.autocast,
        name=src.name,
    )
    pred.meta["prompt_dir"] = str(src.path)
    layer, index, value = pred.best()
    j = pred.layers.index(layer)
    acts = neuron_activations(
        src.handle,
        src.prompt,
        src.formatter,
        dev,
        layer,
        index,
        state=cfg.state,
        position=cfg.position,
        batch_size=cfg.batch_size,
        threshold=float(pred.train_mean[0, -1, j, index]),
    )
    write_skill_report(pred, out, ps=cfg.ps, scope=cfg.scope, activations=acts)
    seconds = time.perf_counter() - started
    _write_run(out, "neurons-find", cfg, src, seconds, {"summary": pred.summary()})
    log(f"best neuron: layer {layer}, index {index}, predictivity {value:.3f}")
    return pred


# -- perturb ------------------------------------------------------------------------------------


def perturb_neurons_run(
    prompt_dir: str | Path,
    skill_dir: str | Path,
    out: str | Path,
    cfg: PerturbConfig | None = None,
    *,
    handle: ModelHandle | None = None,
    source: NeuronSource | None = None,
    log: Log = _quiet,
) -> PerturbationCurve:
    """Perturb the skill neurons of ``skill_dir`` (found with any prompt of the same model)
    inside the model prompted with ``prompt_dir``, evaluated on its task's test split; writes
    ``perturbation.csv/.png/.json`` and ``run.json``."""
    cfg = cfg or PerturbConfig()
    out = Path(out)
    skill_dir = Path(skill_dir)
    pred = load_skill(skill_dir)  # before the model loads
    started = time.perf_counter()
    src = source or load_source(prompt_dir, handle=handle, precision=cfg.precision)
    _check_same_model(pred, src, skill_dir)
    test = src.split("test", cfg.test_limit, cfg.data_dir)
    log(
        f"perturbing {pred.name} skill neurons ({cfg.mode}"
        + (f", σ={cfg.sigma:g}" if cfg.mode == "gaussian" else "")
        + f") in {src.name} on {len(test)} test examples, p = "
        + ", ".join(f"{p:g}" for p in cfg.ps)
        + f", {cfg.n_random} random seeds"
    )
    curve = perturbation_curve(
        src.plm(),
        src.formatter,
        test,
        pred,
        cfg.ps,
        scope=cfg.scope,
        config=src.eval_config,
        mode=cfg.mode,
        sigma=cfg.sigma,
        n_random=cfg.n_random,
        random_seed=cfg.random_seed,
        noise_seed=cfg.noise_seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    perturbation_csv(curve, out / "perturbation.csv")
    perturbation_figure(curve, out / "perturbation.png")
    write_json_atomic(
        out / "perturbation.json",
        {
            "skill": str(skill_dir),
            "skill_name": pred.name,
            "target": src.name,
            "n_test": len(test),
            "results": [r.to_dict() for r in curve.results],
        },
    )
    _write_run(
        out,
        "neurons-perturb",
        cfg,
        src,
        time.perf_counter() - started,
        {"skill_dir": str(skill_dir), "rows": curve.rows()},
    )
    for row in curve.rows():
        log(
            f"p={row['p']:g}: skill drop {100 * row['skill_drop']:.1f} "
            f"[{100 * row['skill_drop_low']:.1f}, {100 * row['skill_drop_high']:.1f}], "
            f"random {100 * row['random_drop_mean']:.1f} ± {100 * row['random_drop_std']:.1f}, "
            f"least {100 * row['least_drop']:.1f} (points)"
        )
    return curve


# -- LoRA: the fine-tuned counterpart of a prompt ------------------------------------------------

LORA_RECORD = "lora.json"
LORA_TENSORS = "lora.safetensors"


def is_lora_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`lora_run` (not a prompt directory)."""
    return (Path(path) / LORA_RECORD).exists()


@dataclass(frozen=True)
class LoRARunConfig(ConfigBase):
    """LoRA on the attention projections for the task of a prompt, with that prompt's model,
    input format and evaluation settings (the prompt itself is not used): ``train`` as for
    prompts (rank objective for classification; lr :data:`~promptatlas.training.lora.LORA_LR`
    unless given; the best of the dev checks kept), ``test_limit`` test examples scored for
    the untuned and the tuned model."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=100,
            batch_size=8,
            lr=LORA_LR,
            eval_every=25,
            dev_limit=None,
            warmup=0.0,
            schedule="constant",
        )
    )
    train_limit: int | None = None
    dev_limit: int | None = 64
    test_limit: int | None = 300
    data_dir: str | None = None
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "lora", from_dict(LoRAConfig, self.lora, path="lora"))
        object.__setattr__(self, "train", from_dict(TrainConfig, self.train, path="train"))
        _check_limits(self, ("train_limit", "dev_limit", "test_limit"))


def lora_run(
    prompt_dir: str | Path,
    out: str | Path,
    cfg: LoRARunConfig | None = None,
    *,
    handle: ModelHandle | None = None,
    progress: bool = True,
    keep: bool = False,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Tune LoRA adapters for the task of ``prompt_dir`` (its model, format and evaluation
    settings) and write ``out``: ``lora.safetensors`` (the adapters), ``lora.json`` (what the
    neuron runs read: model, task, format, the untuned and tuned test scores with intervals
    and the paired gain, the training history) and ``run.json``. ``out`` then works as the
    ``prompt_dir`` of :func:`find_neurons`, :func:`perturb_neurons_run` and :func:`prune_run`.
    The adapters are removed from the model afterwards unless ``keep``."""
    cfg = cfg or LoRARunConfig()
    out = Path(out)
    if is_lora_folder(prompt_dir):
        raise ValueError(f"{prompt_dir} is a LoRA folder; give the prompt whose task to tune")
    started = time.perf_counter()
    src = load_source(prompt_dir, handle=handle, precision=cfg.precision)
    try:
        return _lora_run(src, out, cfg, started, progress, log)
    finally:
        if not keep and has_lora(src.handle):
            remove_lora(src.handle)


def _lora_run(
    src: NeuronSource,
    out: Path,
    cfg: LoRARunConfig,
    started: float,
    progress: bool,
    log: Log,
) -> dict[str, Any]:
    train = src.split("train", cfg.train_limit, cfg.data_dir)
    dev = src.split("dev", cfg.dev_limit, cfg.data_dir)
    test = src.split("test", cfg.test_limit, cfg.data_dir)
    base = PromptedLM(src.handle, None, autocast_dtype=src.autocast)
    with torch.no_grad():
        untuned = evaluate(base, src.formatter, test, src.eval_config)
    log(
        f"LoRA (r={cfg.lora.r}, alpha={cfg.lora.alpha}) on the attention of {src.handle.name} "
        f"for {src.name}: {len(train)} train, untuned test {100 * untuned.score:.1f}"
    )
    result = train_lora(
        src.handle,
        src.formatter,
        train,
        cfg.train,
        cfg.lora,
        dev=dev,
        eval_config=src.eval_config,
        autocast_dtype=src.autocast,
        progress=progress,
    )
    with torch.no_grad():
        tuned = evaluate(base, src.formatter, test, src.eval_config)
    gain = paired_gain(tuned.examples, untuned.examples)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save as save_tensors

    write_bytes_atomic(out / LORA_TENSORS, save_tensors(lora_state(src.handle)))
    record = {
        "model": src.handle.name,
        "model_fingerprint": src.handle.fingerprint,
        "task": src.task,
        "lang": src.lang,
        "like_prompt": str(src.path),
        "format": src.formatter.fmt.to_dict(),
        "eval": src.eval_config.to_dict(),
        "lora": cfg.lora.to_dict(),
        "train": cfg.train.to_dict(),
        "lr": result.lr,
        "objective": result.objective,
        "targets": result.targets,
        "n_params": result.n_params,
        "best_dev": result.best_dev,
        "best_step": result.best_step,
        "history": result.history,
        "train_seconds": round(result.seconds, 2),
        "untuned": untuned.summary(),
        "test": {**tuned.summary(), "gain": gain},
    }
    write_json_atomic(out / LORA_RECORD, record)
    _write_run(
        out,
        "neurons-lora",
        cfg,
        src,
        time.perf_counter() - started,
        {"untuned": untuned.score, "tuned": tuned.score, "n_test": len(test)},
    )
    shown = ""
    if gain is not None:
        shown = (
            f" ({100 * gain['value']:+.1f} [{100 * gain['low']:+.1f}, {100 * gain['high']:+.1f}])"
        )
    log(f"tuned test {100 * tuned.score:.1f}{shown} in {result.seconds:.0f}s")
    return record


def _load_lora_source(
    path: Path,
    *,
    handle: ModelHandle | None,
    device: str | None,
    precision: str,
) -> NeuronSource:
    from promptatlas.io import read_json_object

    record = read_json_object(
        path / LORA_RECORD,
        ValueError,
        where=f"{path / LORA_RECORD}",
        fix="rerun `promptatlas neurons lora` into a new folder",
    )
    if not (path / LORA_TENSORS).exists():
        raise FileNotFoundError(
            f"{path} has {LORA_RECORD} but no {LORA_TENSORS}; rerun `promptatlas neurons lora`"
        )
    missing = [k for k in ("task", "lang", "model") if not isinstance(record.get(k), str)]
    if missing:
        raise ValueError(
            f"{path / LORA_RECORD} lacks {', '.join(missing)}; rerun `promptatlas neurons lora`"
        )
    variant = get_task(record["task"], record["lang"])
    handle = handle or load_model(record["model"], device=device)
    if record.get("model_fingerprint") not in (None, handle.fingerprint):
        raise ValueError(
            f"the LoRA adapters in {path} were tuned on {record['model']}, not on {handle.name}"
        )
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path / LORA_TENSORS))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ValueError(
            f"{path / LORA_TENSORS} cannot be read ({exc}); rerun `promptatlas neurons lora`"
        ) from exc
    apply_lora(handle, LoRAConfig.from_dict(record.get("lora", {})), trainable=False)
    try:
        load_lora_state(handle, tensors)
    except Exception:
        remove_lora(handle)
        raise
    formatter = TaskFormatter(
        handle.tokenizer, variant, FormatConfig.from_dict(record.get("format", {}))
    )
    return NeuronSource(
        path,
        handle,
        None,
        None,
        formatter,
        autocast_dtype(precision, handle.device),
        resolve_precision(precision, handle.device),
        lora=record,
    )


# -- prune ----------------------------------------------------------------------------------


@dataclass
class PruneRow:
    setting: str
    score: float
    ci: tuple[float, float] | None
    params: int
    ffn_params: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _timed_eval(
    plm: PromptedLM, src: NeuronSource, examples: Sequence[Example], repeats: int
) -> float:
    """Median time of the forward passes over ``examples``' contexts through every layer up
    to the last FFN's down-projection input (the LM head, which dominates Gemma's compute with
    its 262k vocabulary and is not pruned, is left out)."""
    batches = list(context_batches(src.formatter, examples, batch_size=16))
    last = [src.handle.geometry.n_layers - 1]

    @torch.no_grad()
    def run() -> None:
        for batch in batches:
            read_neurons(plm, batch, last, lambda _: None)

    return forward_time(run, repeats=repeats)


def _ci(result: EvalResult) -> tuple[float, float] | None:
    est = result.ci()
    return None if est is None else (est.low, est.high)


def prune_run(
    prompt_dir: str | Path,
    skill_dir: str | Path,
    out: str | Path,
    cfg: PruneConfig | None = None,
    *,
    handle: ModelHandle | None = None,
    source: NeuronSource | None = None,
    log: Log = _quiet,
) -> list[dict[str, Any]]:
    """The pruning table of one setting: unpruned, pruned to the skill neurons, and (with
    ``random_control``) pruned to random neurons: parameters, test score with its interval,
    the paired drop, and the forward-time ratio vs the unpruned model. Writes
    ``pruning.csv``, ``pruning.json`` and ``run.json``."""
    cfg = cfg or PruneConfig()
    out = Path(out)
    skill_dir = Path(skill_dir)
    pred = load_skill(skill_dir)
    if pred.state != "down_input" and cfg.mean_source != "zero":
        raise ValueError(
            f"the skill neurons in {skill_dir} were read from state {pred.state!r}; the bias "
            "fold needs down-projection means: use mean source 'zero' or find them with state "
            "down_input"
        )
    started = time.perf_counter()
    src = source or load_source(prompt_dir, handle=handle, precision=cfg.precision)
    _check_same_model(pred, src, skill_dir)
    n_layers = src.handle.geometry.n_layers
    layers = list(cfg.layers) if cfg.layers is not None else default_prune_layers(n_layers)
    parse_layers(",".join(map(str, layers)), n_layers)
    missing = [layer for layer in layers if layer not in pred.layers]
    if missing:
        raise ValueError(
            f"no predictivity for layers {missing} in {skill_dir} (it covers "
            f"{list(pred.layers)}); prune other layers or find neurons in these"
        )
    test = src.split("test", cfg.test_limit, cfg.data_dir)
    timing = test[: cfg.time_examples]
    skill = select_skill_neurons(pred, cfg.p).restrict(layers)
    means = pruning_means(pred, cfg.mean_source)
    settings: list[tuple[str, dict[int, Any]]] = [
        ("skill", keep_by_predictivity(pred, layers, cfg.keep, skill=skill))
    ]
    if cfg.random_control:
        settings.append(("random", random_keep(pred.d_ffn, layers, cfg.keep, seed=cfg.random_seed)))
    log(
        f"pruning layers {layers[0]}..{layers[-1]} of {src.handle.name} to "
        f"{100 * cfg.keep:g}% of their neurons; {len(test)} test examples"
    )
    base_plm = src.plm()
    base = evaluate(base_plm, src.formatter, test, src.eval_config)
    base_time = _timed_eval(base_plm, src, timing, cfg.repeats)
    total = sum(p.numel() for p in src.handle.model.parameters())
    rows: list[dict[str, Any]] = [
        {
            "setting": "unpruned",
            "layers": "",
            "keep": 1.0,
            "params": total,
            "kept_params_fraction": 1.0,
            "ffn_params_pruned_layers": "",
            "score": base.score,
            "ci": _ci(base),
            "drop": 0.0,
            "drop_ci": None,
            "forward_seconds": base_time,
            "time_ratio": 1.0,
        }
    ]
    for name, keep in settings:
        pruned = prune_ffn(src.handle, keep, means, mean_source=cfg.mean_source)
        plm = src.plm(pruned.handle)
        result = evaluate(plm, src.formatter, test, src.eval_config)
        seconds = _timed_eval(plm, src, timing, cfg.repeats)
        drop = paired_gain(base.examples, result.examples)  # unpruned − pruned
        rows.append(
            {
                "setting": name,
                "layers": f"{layers[0]}-{layers[-1]}",
                "keep": cfg.keep,
                "params": pruned.params_after,
                "kept_params_fraction": pruned.kept_fraction,
                "ffn_params_pruned_layers": f"{pruned.ffn_params_after}/{pruned.ffn_params_before}",
                "score": result.score,
                "ci": _ci(result),
                "drop": base.score - result.score,
                "drop_ci": None if drop is None else [drop["low"], drop["high"]],
                "forward_seconds": seconds,
                "time_ratio": seconds / base_time if base_time > 0 else float("nan"),
            }
        )
        del pruned, plm
    out.mkdir(parents=True, exist_ok=True)
    pruning_csv(rows, out / "pruning.csv")
    write_json_atomic(out / "pruning.json", {"skill": str(skill_dir), "rows": rows})
    _write_run(
        out,
        "neurons-prune",
        cfg,
        src,
        time.perf_counter() - started,
        {"skill_dir": str(skill_dir), "timed_examples": len(timing)},
    )
    for r in rows:
        log(
            f"{r['setting']:9s} params {r['params']:,} ({100 * r['kept_params_fraction']:.1f}%) "
            f"score {100 * r['score']:.1f} time ×{r['time_ratio']:.2f}"
        )
    return rows


# -- overlap ----------------------------------------------------------------------------------


def overlap_run(
    skill_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    p: float = 0.01,
    scope: Literal["layer", "global"] = "layer",
    log: Log = _quiet,
) -> SkillSimilarity:
    """Skill-neuron overlap (row ∩ column / row) and Spearman ρ of the predictivity vectors
    between ``find`` folders (e.g. SA-en and SA-ko): ``overlap.csv``, ``overlap.png``,
    ``overlap.json``. No model is loaded."""
    if len(skill_dirs) < 2:
        raise ValueError("give at least two skill folders to compare")
    preds: dict[str, Predictivity] = {}
    for d in skill_dirs:
        pred = load_skill(d)
        name = pred.name or Path(d).name
        if name in preds:
            name = f"{name} ({Path(d).name})"
        preds[name] = pred
    models = {pr.meta.get("model_fingerprint") for pr in preds.values()} - {None}
    if len(models) > 1:
        raise ValueError(
            f"the skill folders come from different models ({sorted(map(str, models))}); "
            "compare folders of one model"
        )
    sim = skill_similarity(preds, p=p, scope=scope)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    similarity_csv(sim, out / "overlap.csv")
    similarity_figure(sim, out / "overlap.png")
    # chance level of |S_a ∩ S_b| / |S_a| for random sets of the same size: p
    write_json_atomic(
        out / "overlap.json",
        {
            "names": sim.names,
            "p": p,
            "scope": scope,
            "overlap": sim.overlap.tolist(),
            "correlation": sim.correlation.tolist(),
            "chance_overlap": p,
            "folders": [str(d) for d in skill_dirs],
        },
    )
    for i, a in enumerate(sim.names):
        for j, b in enumerate(sim.names):
            if i < j:
                log(
                    f"{a} vs {b}: overlap {sim.overlap[i, j]:.3f} (chance {p:g}), "
                    f"predictivity ρ {sim.correlation[i, j]:.3f}"
                )
    return sim
