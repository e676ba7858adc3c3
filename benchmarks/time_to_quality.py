"""Time to quality: training steps and seconds until a prompt reaches a dev accuracy target.

SA-en (SST-2), batch 8, the same training-example order and the same precision for every
system; dev accuracy on the first ``--dev`` dev examples, checked every ``--check-every``
steps with promptatlas's own rank classification; at most ``--cap`` steps.

Systems (``--systems``, comma-separated; default all):

* ``promptatlas-v1`` / ``promptatlas-v2``: the library's defaults exactly as a user gets them:
  ``PromptConfig(method=...)`` (default length and init) seeded as ``workflows.build_prompt``
  seeds it, ``TrainConfig(steps=cap, batch_size=8, eval_every=check_every, dev_limit=dev)`` with
  the learning rate and objective left at their defaults (``lr=None``, ``objective="auto"``:
  ``promptatlas.training.defaults``), trained by ``train_prompt(..., dev=..., on_eval=...)``.
* ``peft-random`` / ``peft-text``: PEFT ``PromptTuningConfig(task_type="CAUSAL_LM",
  num_virtual_tokens=20)`` with ``prompt_tuning_init=RANDOM``, or ``TEXT`` with a task
  description, wrapped by ``get_peft_model`` around the *same* model object, trained as PEFT's
  prompt-tuning guide shows: AdamW lr 3e-2, linear schedule without warm-up,
  ``loss = peft_model(input_ids=..., attention_mask=..., labels=labels).loss``. Its dev accuracy
  is measured by copying PEFT's prompt embedding into a promptatlas v1 prompt (PEFT prompt
  tuning = promptatlas v1), so every system is scored by the identical evaluator.

The training clock runs from the start of training (after the model load and the prompt's
initialisation, which are timed separately) to the step whose dev check first reaches the
target, minus the time spent in dev evaluations (reported on its own).

Run from the repository root, e.g.::

    .venv/bin/python benchmarks/time_to_quality.py        # Gemma-3-270M, all four systems
    .venv/bin/python benchmarks/time_to_quality.py --model tiny-gemma3 --cap 4 --check-every 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast, overload

import peft
import torch
import transformers
from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
from transformers import get_linear_schedule_with_warmup

from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import FormatConfig, TaskFormatter, collate
from promptatlas.models.precision import cpu_info, hardware_info, resolve_precision
from promptatlas.models.registry import ModelHandle, load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.prompts.config import Method
from promptatlas.runs.train import RunConfig, build_prompt
from promptatlas.tasks import Example, get_task, load_split
from promptatlas.training import TrainConfig, train_prompt
from promptatlas.training.trainer import _micro_batch

SYSTEMS = ("promptatlas-v1", "promptatlas-v2", "peft-random", "peft-text")
REFERENCE = "promptatlas-v1"
TASK, LANG = "sa", "en"
PEFT_TOKENS = 20
PEFT_LR = 3e-2
PEFT_TEXT = "Classify the sentiment of the review as positive or negative:"
# PEFT's loss and promptatlas's on the copied prompt are the same mean NLL of the target
# tokens; they must agree to rounding (bf16 autocast rounds more).
LOSS_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


class TargetReached(Exception):
    """Raised from ``on_eval`` to end a promptatlas run at the first check on target."""


@dataclass
class Check:
    step: int
    dev: float
    train_seconds: float  # training clock at this check (dev evaluations excluded)
    eval_seconds: float  # this evaluation alone


@dataclass
class SystemResult:
    system: str
    reached: bool = False
    steps: int | None = None  # steps at the first check on target (None: never reached)
    train_seconds: float | None = None  # training clock at that check
    steps_run: int = 0  # steps actually run (= steps when reached, else the cap)
    train_seconds_run: float = 0.0  # training clock over all steps run
    eval_seconds: float = 0.0  # all dev evaluations during training
    init_seconds: float = 0.0  # prompt initialisation (PEFT: get_peft_model), not counted
    initial_dev: float | None = None  # the untrained prompt (not counted, not a check)
    final_dev: float | None = None
    best_dev: float | None = None
    lr: float | None = None
    objective: str | None = None
    trainable_values: int = 0
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- timing helpers -------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedDev(Sequence[Example]):
    """The dev examples, remembering when an evaluation first reads them.

    ``train_prompt`` reads its dev set at the start of each dev evaluation; the time of that
    first read after a training step is the evaluation's start (the device is synchronised
    first, so queued training work is not billed to the evaluation)."""

    def __init__(self, examples: Sequence[Example], device: torch.device) -> None:
        self._examples = list(examples)
        self._device = device
        self.started: float | None = None

    def _mark(self) -> None:
        if self.started is None:
            _sync(self._device)
            self.started = time.perf_counter()

    def __len__(self) -> int:  # bool(dev) asks this every step: not a read
        return len(self._examples)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Example]: ...
    def __getitem__(self, index: int | slice) -> Example | Sequence[Example]:
        self._mark()
        return self._examples[index]

    def __iter__(self) -> Iterator[Example]:
        self._mark()
        return iter(self._examples)


# -- base model integrity -------------------------------------------------------------------


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{tensor.requires_grad}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class BaseState:
    attrs: dict[str, Any]
    digest: str
    training: bool
    modules: list[str]


def snapshot_base(model: torch.nn.Module) -> BaseState:
    return BaseState(
        attrs=dict(vars(model)),
        digest=weights_digest(model),
        training=model.training,
        modules=[n for n, _ in model.named_modules()],
    )


def restore_base(model: torch.nn.Module, before: BaseState) -> list[str]:
    """Undo what wrapping with PEFT did to the base model object's own attributes; raise if a
    weight, buffer, module or training flag changed. Returns the attributes it restored."""
    restored = []
    now = vars(model)
    for key in [k for k in now if k not in before.attrs]:
        del now[key]
        restored.append(f"-{key}")
    for key, value in before.attrs.items():
        if now.get(key, object()) is not value:
            now[key] = value
            restored.append(key)
    model.train(before.training)
    modules = [n for n, _ in model.named_modules()]
    if modules != before.modules:
        raise SystemExit("PEFT left modules in the base model; the next system would differ")
    if weights_digest(model) != before.digest:
        raise SystemExit("a base model parameter or buffer changed during a PEFT run")
    return restored


# -- systems --------------------------------------------------------------------------------


@dataclass
class Setup:
    handle: ModelHandle
    formatter: TaskFormatter
    train: list[Example]
    dev: list[Example]
    precision: str  # resolved: "fp32" or "bf16"
    autocast: torch.dtype | None
    args: argparse.Namespace
    eval_config: EvalConfig = field(default_factory=EvalConfig)

    def dev_accuracy(self, prompt: SoftPrompt) -> float:
        plm = PromptedLM(self.handle, prompt, autocast_dtype=self.autocast)
        return float(evaluate(plm, self.formatter, self.dev, self.eval_config).score)

    def run_config(self, method: str) -> RunConfig:
        a = self.args
        return RunConfig(
            task=TASK,
            lang=LANG,
            model=a.model,
            prompt=PromptConfig(method=cast(Method, method)),
            train=TrainConfig(
                steps=a.cap,
                batch_size=a.batch,
                eval_every=a.check_every,
                dev_limit=a.dev,
                seed=a.seed,
            ),
            format=FormatConfig(separator="\n"),
            dev_limit=a.dev,
            precision=a.precision,
        )


def _log(result: SystemResult, check: Check) -> None:
    print(
        f"  {result.system}: step {check.step:>4}  dev {check.dev:.3f}  "
        f"train {check.train_seconds:7.1f} s  eval {check.eval_seconds:5.1f} s",
        flush=True,
    )


def run_promptatlas(setup: Setup, method: str) -> SystemResult:
    a = setup.args
    result = SystemResult(f"promptatlas-{method}")
    cfg = setup.run_config(method)
    t0 = time.perf_counter()
    prompt = build_prompt(cfg, setup.handle, setup.formatter)
    _sync(setup.handle.device)
    result.init_seconds = time.perf_counter() - t0
    result.trainable_values = prompt.num_parameters(trainable_only=True)
    result.initial_dev = setup.dev_accuracy(prompt)
    plm = PromptedLM(setup.handle, prompt, autocast_dtype=setup.autocast)
    dev = TimedDev(setup.dev, setup.handle.device)

    def on_eval(step: int, score: float) -> None:
        ended = time.perf_counter()
        if dev.started is None:
            raise RuntimeError(
                "train_prompt evaluated without reading its dev set after the step, so the "
                "evaluation time cannot be separated from training time; update TimedDev"
            )
        spent = ended - dev.started
        train_clock = dev.started - started - result.eval_seconds
        result.eval_seconds += spent
        dev.started = None
        check = Check(step, score, train_clock, spent)
        result.checks.append(check)
        result.steps_run, result.train_seconds_run = step, train_clock
        _log(result, check)
        if score >= a.target:
            result.reached, result.steps, result.train_seconds = True, step, train_clock
            raise TargetReached

    _sync(setup.handle.device)
    started = time.perf_counter()
    try:
        out = train_prompt(
            plm,
            setup.formatter,
            setup.train,
            cfg.train,
            dev=dev,
            eval_config=setup.eval_config,
            progress=False,
            on_eval=on_eval,
        )
    except TargetReached:
        pass
    else:
        _sync(setup.handle.device)
        result.steps_run = out.steps
        result.train_seconds_run = time.perf_counter() - started - result.eval_seconds
        result.lr, result.objective = out.lr, out.objective
    if result.lr is None:  # stopped from on_eval: ask the same resolver train_prompt used
        from promptatlas.training import resolve_training

        result.lr, result.objective = resolve_training(cfg.train, method, setup.formatter)
    _finish(result)
    return result


def _finish(result: SystemResult) -> None:
    if result.checks:
        result.final_dev = result.checks[-1].dev
        result.best_dev = max(c.dev for c in result.checks)


def peft_config(kind: str, model_dir: str) -> PromptTuningConfig:
    if kind == "random":
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=PEFT_TOKENS,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=PEFT_TOKENS,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=PEFT_TEXT,
        tokenizer_name_or_path=model_dir,
    )


def model_directory(handle: ModelHandle) -> str:
    """The local directory the model (and its tokenizer) was loaded from."""
    source = handle.source or str(getattr(handle.model, "name_or_path", ""))
    if not source or not Path(source).is_dir():
        raise SystemExit(
            f"peft-text needs the model's local directory for its tokenizer; {handle.name!r} "
            f"was loaded from {source!r}"
        )
    return source


def copy_to_v1(setup: Setup, weight: torch.Tensor) -> SoftPrompt:
    """PEFT's learned prompt embedding as a promptatlas v1 prompt (same values, positions
    0..k-1 before the input, in the embedding space the model's input layer produces)."""
    prompt = SoftPrompt(PromptConfig(method="v1", length=PEFT_TOKENS), setup.handle.geometry)
    prompt.set_segment("task", weight.detach().float().cpu())
    return prompt.to(setup.handle.device)


def run_peft(setup: Setup, kind: str) -> SystemResult:
    a = setup.args
    handle, device = setup.handle, setup.handle.device
    result = SystemResult(f"peft-{kind}", lr=PEFT_LR, objective="lm")
    before = snapshot_base(handle.model)
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)  # PEFT's RANDOM init draws from the global generator
    config = peft_config(kind, model_directory(handle) if kind == "text" else "")
    peft_model: Any = get_peft_model(handle.model, config)
    if peft_model.get_base_model() is not handle.model:
        raise SystemExit("PEFT did not wrap the shared model object")
    encoder = peft_model.prompt_encoder["default"]
    encoder.to(device)
    # Same mode as promptatlas (eval: no dropout). PEFT's guide calls model.train(); prompt
    # tuning adds no dropout and the frozen models used here have none active either.
    peft_model.eval()
    _sync(device)
    result.init_seconds = time.perf_counter() - t0
    params = [p for p in peft_model.parameters() if p.requires_grad]
    result.trainable_values = sum(p.numel() for p in params)
    weight = encoder.embedding.weight
    result.initial_dev = setup.dev_accuracy(copy_to_v1(setup, weight))
    autocast = torch.autocast(
        device.type, dtype=setup.autocast or torch.float32, enabled=setup.autocast is not None
    )

    pad = int(handle.tokenizer.pad_token_id)

    def loss_on(batch: Any) -> torch.Tensor:
        labels = batch.input_ids.masked_fill(~batch.target_mask, -100)
        with autocast:
            out = peft_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels
            )
        loss: torch.Tensor = out.loss
        return loss

    # The evaluator is promptatlas's: check once that it sees what PEFT trains (same loss).
    try:
        probe = collate([setup.formatter.encode(ex) for ex in setup.train[: a.batch]], pad).to(
            device
        )
        with torch.no_grad():
            theirs = float(loss_on(probe))
            ours = float(
                target_loss(
                    PromptedLM(handle, copy_to_v1(setup, weight), autocast_dtype=setup.autocast),
                    probe,
                )
            )
        diff = abs(theirs - ours)
        note = f"loss check on one batch: PEFT {theirs:.6f}, promptatlas v1 copy {ours:.6f}"
        print(f"  {result.system}: {note} (|diff| {diff:.1e})", flush=True)
        result.notes.append(note)
        if diff > LOSS_TOLERANCE[setup.precision]:
            warnings.warn(
                f"{result.system}: PEFT's loss and the copied prompt's differ by {diff:.2e}; "
                "the dev scores may not be PEFT's own",
                RuntimeWarning,
                stacklevel=1,
            )

        _sync(device)
        started = time.perf_counter()
        eval_total = 0.0
        encoded = [setup.formatter.encode(ex) for ex in setup.train]
        optimizer = torch.optim.AdamW(params, lr=PEFT_LR)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=0, num_training_steps=a.cap
        )
        for step in range(a.cap):
            idx = _micro_batch(len(encoded), a.batch, a.seed, step)
            batch = collate([encoded[i] for i in idx], pad).to(device)
            loss = loss_on(batch)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done = step + 1
            if done % a.check_every:  # checked when train_prompt checks (eval_every)
                continue
            _sync(device)
            eval_start = time.perf_counter()
            train_clock = eval_start - started - eval_total
            score = setup.dev_accuracy(copy_to_v1(setup, weight))
            spent = time.perf_counter() - eval_start
            eval_total += spent
            check = Check(done, score, train_clock, spent)
            result.checks.append(check)
            result.steps_run, result.train_seconds_run = done, train_clock
            result.eval_seconds = eval_total
            _log(result, check)
            if score >= a.target:
                result.reached, result.steps, result.train_seconds = True, done, train_clock
                break
    finally:
        restored = restore_base(handle.model, before)
        if restored:
            result.notes.append(f"restored base-model attributes after PEFT: {restored}")
    _finish(result)
    return result


# -- report ---------------------------------------------------------------------------------


def ratio_text(
    value: float | None, bound: float, ref: float | None, ref_bound: float
) -> tuple[str, float | None, str]:
    """``value`` / ``ref`` as text, its number, and its kind ("=", ">", "<" or "?"): a system
    that never reached the target needs more than ``bound``; likewise for the reference."""
    if value is not None and ref is not None:
        r = value / ref if ref > 0 else math.inf
        return f"{r:.2f}x", r, "="
    if value is None and ref is not None:
        r = bound / ref if ref > 0 else math.inf
        return f"> {r:.2f}x", r, ">"
    if value is not None and ref is None:
        r = value / ref_bound if ref_bound > 0 else 0.0
        return f"< {r:.2f}x", r, "<"
    return "?", None, "?"


def table(results: list[SystemResult], cap: int) -> tuple[str, dict[str, dict[str, Any]]]:
    ref = next((r for r in results if r.system == REFERENCE), None)
    header = (
        f"{'system':<16} {'reached':>7} {'steps':>7} {'train s':>9} {'eval s':>8} "
        f"{'dev@0':>6} {'final':>6} {'best':>6}   {'time/v1':>9} {'steps/v1':>9}"
    )
    lines = [header, "-" * len(header)]
    ratios: dict[str, dict[str, Any]] = {}
    for r in results:
        steps = str(r.steps) if r.reached else f"> {cap}"
        if r.train_seconds is not None:
            secs = f"{r.train_seconds:.1f}"
        else:
            secs = f"> {r.train_seconds_run:.1f}"
        time_txt = steps_txt = "n/a"
        if ref is not None:
            time_txt, t_val, t_kind = ratio_text(
                r.train_seconds, r.train_seconds_run, ref.train_seconds, ref.train_seconds_run
            )
            steps_txt, s_val, s_kind = ratio_text(
                None if r.steps is None else float(r.steps),
                float(cap),
                None if ref.steps is None else float(ref.steps),
                float(cap),
            )
            ratios[r.system] = {
                "time": {"ratio": t_val, "kind": t_kind},
                "steps": {"ratio": s_val, "kind": s_kind},
            }

        def num(v: float | None) -> str:
            return "" if v is None else f"{v:.3f}"

        lines.append(
            f"{r.system:<16} {'yes' if r.reached else 'no':>7} {steps:>7} {secs:>9} "
            f"{r.eval_seconds:>8.1f} {num(r.initial_dev):>6} {num(r.final_dev):>6} "
            f"{num(r.best_dev):>6}   {time_txt:>9} {steps_txt:>9}"
        )
    return "\n".join(lines), ratios


def verdict(results: list[SystemResult], target: float) -> list[str]:
    """The issue's targets: v1 reaches the target within 60 steps, in less than half of
    PEFT's wall-clock (each PEFT system)."""
    by = {r.system: r for r in results}
    v1 = by.get(REFERENCE)
    if v1 is None:
        return []
    out = [
        f"{REFERENCE} reaches {target} within 60 steps: "
        + ("yes" if v1.reached and (v1.steps or 0) <= 60 else "no")
    ]
    for name in ("peft-random", "peft-text"):
        p = by.get(name)
        if p is None or v1.train_seconds is None:
            continue
        peft_secs = p.train_seconds if p.train_seconds is not None else p.train_seconds_run
        bound = "" if p.reached else " (PEFT never reached it: its time is a lower bound)"
        ok = v1.train_seconds < 0.5 * peft_secs
        out.append(
            f"{REFERENCE} in less than half of {name}'s wall-clock: "
            f"{'yes' if ok else 'no'} ({v1.train_seconds:.1f} s vs {peft_secs:.1f} s){bound}"
        )
    return out


def environment(handle: ModelHandle, precision: str, requested: str) -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "hardware": hardware_info(handle.device),
        "device": str(handle.device),
        "precision": precision,
        "precision_requested": requested,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m", help="registry name, hub id or directory")
    ap.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {', '.join(SYSTEMS)} (default: all)",
    )
    ap.add_argument("--target", type=float, default=0.85, help="dev accuracy to reach")
    ap.add_argument("--dev", type=int, default=200, help="dev examples (the first N)")
    ap.add_argument("--check-every", type=int, default=10, help="steps between dev checks")
    ap.add_argument("--cap", type=int, default=300, help="most training steps per system")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42, help="data order and initialisation")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="backbone precision for every system (auto: bf16 where native, else fp32)",
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="results/time_to_quality.json", help="JSON results file")
    args = ap.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        ap.error(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    args.systems = systems
    if min(args.dev, args.check_every, args.cap, args.batch) < 1:
        ap.error("--dev, --check-every, --cap and --batch must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models and tokenizers are local
    # transformers' deprecation notices (past_key_values) would repeat at every evaluation
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    handle = load_model(args.model, device=args.device)
    precision = resolve_precision(args.precision, handle.device)
    autocast = torch.bfloat16 if precision == "bf16" else None
    env = environment(handle, precision, args.precision)
    cpu = env["cpu"]
    print(
        f"model {args.model} loaded in {time.perf_counter() - t_load:.1f} s on {handle.device}; "
        f"precision {precision} (asked {args.precision}); CPU {cpu['model']} "
        f"(capability {cpu['capability']}, flags {' '.join(cpu['flags']) or '-'}, "
        f"{cpu['threads']} threads)"
        + (f"; GPU {env['hardware']['gpu']}" if handle.device.type == "cuda" else "")
    )
    print(
        f"python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}"
    )
    formatter = TaskFormatter(handle.tokenizer, get_task(TASK, LANG), FormatConfig(separator="\n"))
    train = load_split(TASK, LANG, "train")
    dev = load_split(TASK, LANG, "dev", limit=args.dev)
    setup = Setup(handle, formatter, train, dev, precision, autocast, args)
    print(
        f"{TASK}-{LANG}: {len(train)} train, {len(dev)} dev examples; batch {args.batch}, "
        f"target {args.target}, check every {args.check_every} steps, cap {args.cap}"
    )
    results: list[SystemResult] = []
    for system in args.systems:
        print(f"== {system}", flush=True)
        kind, _, variant = system.partition("-")
        r = run_promptatlas(setup, variant) if kind == "promptatlas" else run_peft(setup, variant)
        print(
            f"  {system}: {'reached' if r.reached else 'did not reach'} {args.target} "
            f"(lr {r.lr}, objective {r.objective}, {r.trainable_values:,} trainable values, "
            f"init {r.init_seconds:.1f} s)",
            flush=True,
        )
        results.append(r)
    text, ratios = table(results, args.cap)
    print()
    print(
        f"Time to dev accuracy >= {args.target} ({args.model}, {TASK}-{LANG}, batch {args.batch}, "
        f"{len(dev)} dev examples every {args.check_every} steps, cap {args.cap}, {precision}); "
        "train s excludes dev evaluation (eval s); ratios vs promptatlas-v1"
    )
    print(text)
    checks = verdict(results, args.target)
    for line in checks:
        print(line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "time_to_quality",
        "settings": {
            "model": args.model,
            "task": TASK,
            "lang": LANG,
            "target": args.target,
            "dev": len(dev),
            "check_every": args.check_every,
            "cap": args.cap,
            "batch": args.batch,
            "seed": args.seed,
            "separator": "\\n",
            "peft": {"num_virtual_tokens": PEFT_TOKENS, "lr": PEFT_LR, "init_text": PEFT_TEXT},
        },
        "environment": env,
        "command": " ".join(sys.argv),
        "results": [asdict(r) for r in results],
        "ratios_vs_v1": ratios,
        "verdict": checks,
    }
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
